"""What is in a dataset download: one `Entry` per video (or per folder of frames), with its split,
label, method and a method-keyed video id. No decoding here; `preprocess` does that.

Layouts (see ../shared/facts.md for the counts):
- FaceForensics++: <root>/original_sequences/youtube/<c>/videos/000.mp4,
  <root>/manipulated_sequences/<Method>/<c>/videos/<target>_<source>.mp4, masks under
  <root>/manipulated_sequences/<Method>/masks/videos/; splits from the official train/val/test
  JSON pair lists. DeepFakeDetection (actors) has no official split: ours puts each actor in one
  split by a fixed hash of the actor id (about 70/15/15).
- Celeb-DF v1/v2: Celeb-real/, YouTube-real/, Celeb-synthesis/ (files directly there or under
  videos/), List_of_testing_videos.txt with 1 = real. The label comes from the folder; a test-list
  line that disagrees is an error. Train = the rest, with a validation part held out by identity.
- folder: <root>/real/... and <root>/fake/<method>/..., optionally under <root>/<split>/; videos,
  or images (a folder of images is one video; a loose image is a one-frame video).
- DeepfakeBench: its dataset JSON (dataset -> label -> split -> [compression ->] video ->
  {label, frames[, masks]}), frames already cropped, landmarks beside them as .npy.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re
import zlib
from collections.abc import Iterable, Sequence

from mkln_jax.input_pipeline import video

SPLITS = ("train", "val", "test")
VIDEO_SUFFIXES = video.VIDEO_SUFFIXES
IMAGE_SUFFIXES = video.IMAGE_SUFFIXES
FFPP_METHODS = ("Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures", "FaceShifter")
DFD = "DeepFakeDetection"
# DeepfakeBench's label names for FaceForensics++ methods, mapped to the official folder names.
DEEPFAKEBENCH_METHODS = {
    "FF-DF": "Deepfakes",
    "FF-F2F": "Face2Face",
    "FF-FS": "FaceSwap",
    "FF-NT": "NeuralTextures",
    "FF-FH": "FaceShifter",
    "DFD_fake": DFD,
}


class LayoutError(ValueError):
    """The download does not look like the layout we expect; the message says what to fix."""


@dataclasses.dataclass(frozen=True)
class Entry:
    dataset: str
    split: str
    label: int  # 0 real, 1 fake
    method: str  # "real" for reals, else the forgery method
    video_id: str  # "<method>/<name>", unique across methods
    path: str  # the video file (or the folder of frames)
    compression: str = ""
    frames: tuple[str, ...] = ()  # explicit frame images (folders, DeepfakeBench)
    landmarks: tuple[str, ...] = ()  # one .npy per frame, where they exist
    mask: str = ""  # FF++ mask video of a fake, where it exists
    identity: str = ""


def bucket(key: str, buckets: int = 100) -> int:
    """A stable hash of a string into [0, buckets) (crc32: the same on every machine)."""
    return zlib.crc32(key.encode()) % buckets


def _split_by_hash(key: str, val_percent: int = 15, test_percent: int = 15) -> str:
    b = bucket(key)
    return "test" if b < test_percent else "val" if b < test_percent + val_percent else "train"


def _videos(folder: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)


# ---------------------------------------------------------------------------- FaceForensics++


def ffpp_compression_dir(parent: pathlib.Path, compression: str) -> pathlib.Path:
    """<parent>/<compression>, accepting "raw" and "c0" for each other."""
    names = ("raw", "c0") if compression in ("raw", "c0") else (compression,)
    for name in names:
        if (parent / name).is_dir():
            return parent / name
    return parent / names[0]


def ffpp_splits(split_dir: pathlib.Path) -> dict[str, str]:
    """Video name -> split from the official pair lists: [a, b] puts reals a, b and fakes a_b,
    b_a in that split."""
    split_of: dict[str, str] = {}
    for split in SPLITS:
        path = split_dir / f"{split}.json"
        if not path.exists():
            raise LayoutError(
                f"{path} not found. Fix: put the official FaceForensics++ split files "
                "(train.json, val.json, test.json from github.com/ondyari/FaceForensics, "
                "dataset/splits) there, or pass their folder as data.splits_dir"
            )
        try:
            pairs = json.loads(path.read_text())
            for a, b in pairs:
                for name in (a, b, f"{a}_{b}", f"{b}_{a}"):
                    split_of[name] = split
        except (ValueError, TypeError) as err:
            raise LayoutError(f"{path}: not a JSON list of [a, b] pairs ({err})") from err
    return split_of


def ffpp(
    root: str | pathlib.Path,
    compression: str = "c23",
    methods: Sequence[str] = FFPP_METHODS,
    split_dir: str | pathlib.Path = "",
) -> list[Entry]:
    """Entries of an official FaceForensics++ download. `methods` may include
    "DeepFakeDetection", which brings the actors' reals with it."""
    root = pathlib.Path(root).expanduser()
    split_of = ffpp_splits(pathlib.Path(split_dir).expanduser() if split_dir else root)
    entries: list[Entry] = []
    youtube = ffpp_compression_dir(root / "original_sequences" / "youtube", compression) / "videos"
    if not youtube.is_dir():
        raise LayoutError(
            f"{youtube} not found: is {root} a FaceForensics++ root (with original_sequences/ "
            f"and manipulated_sequences/) downloaded at compression {compression}?"
        )
    comp = compression if compression != "c0" else "raw"
    for path in _videos(youtube):
        if path.stem in split_of:
            entries.append(
                Entry(
                    "ffpp",
                    split_of[path.stem],
                    0,
                    "real",
                    f"real/{path.stem}",
                    str(path),
                    comp,
                    identity=path.stem,
                )
            )
    for method in methods:
        if method not in (*FFPP_METHODS, DFD):
            raise LayoutError(
                f"unknown FaceForensics++ method {method!r}; known: {(*FFPP_METHODS, DFD)}"
            )
        folder = ffpp_compression_dir(root / "manipulated_sequences" / method, compression)
        folder = folder / "videos"
        if not folder.is_dir():
            raise LayoutError(f"{folder} not found: method {method} is missing from {root}")
        masks = root / "manipulated_sequences" / method / "masks" / "videos"
        if method == DFD:
            entries += _dfd(root, compression, comp, folder, masks)
            continue
        for path in _videos(folder):
            if path.stem not in split_of:
                continue
            mask = masks / path.name
            entries.append(
                Entry(
                    "ffpp",
                    split_of[path.stem],
                    1,
                    method,
                    f"{method}/{path.stem}",
                    str(path),
                    comp,
                    mask=str(mask) if mask.exists() else "",
                    identity=path.stem.split("_")[0],
                )
            )
    return entries


def _dfd(root, compression, comp, fake_folder, masks) -> list[Entry]:
    """DeepFakeDetection: reals <actor>__<scene>.mp4, fakes <a>_<b>__<scene>__<id>.mp4; split by
    the (target) actor id."""
    entries = []
    actors = ffpp_compression_dir(root / "original_sequences" / "actors", compression) / "videos"
    if not actors.is_dir():
        raise LayoutError(f"{actors} not found: DeepFakeDetection needs the actors' reals")
    for path in _videos(actors):
        actor = path.stem.split("__")[0]
        entries.append(
            Entry(
                "ffpp",
                _split_by_hash(f"dfd-{actor}"),
                0,
                "real",
                f"real/actors/{path.stem}",
                str(path),
                comp,
                identity=actor,
            )
        )
    for path in _videos(fake_folder):
        actor = path.stem.split("__")[0].split("_")[0]
        mask = masks / path.name
        entries.append(
            Entry(
                "ffpp",
                _split_by_hash(f"dfd-{actor}"),
                1,
                DFD,
                f"{DFD}/{path.stem}",
                str(path),
                comp,
                mask=str(mask) if mask.exists() else "",
                identity=actor,
            )
        )
    return entries


# ------------------------------------------------------------------------------------ Celeb-DF

CELEBDF_FOLDERS = {"Celeb-real": 0, "YouTube-real": 0, "Celeb-synthesis": 1}
CELEBDF_TEST_LIST = "List_of_testing_videos.txt"
CELEBDF_METHOD = "Celeb-synthesis"


def _celebdf_folder(root: pathlib.Path, name: str) -> pathlib.Path:
    folder = root / name
    return folder / "videos" if (folder / "videos").is_dir() else folder


def celebdf_identity(folder: str, stem: str) -> str:
    """The filmed person: id<k> for Celeb-real (id<k>_<n>) and Celeb-synthesis (id<target>_
    id<source>_<n>), the video itself for YouTube-real (no identities given)."""
    match = re.match(r"(id\d+)_", stem)
    return match.group(1) if match and folder != "YouTube-real" else f"yt-{stem}"


def celebdf(root: str | pathlib.Path, version: str = "v2", val_percent: int = 10) -> list[Entry]:
    root = pathlib.Path(root).expanduser()
    dataset = f"celebdf_{version}"
    test_list = root / CELEBDF_TEST_LIST
    if not test_list.exists():
        raise LayoutError(
            f"{test_list} not found: is {root} a Celeb-DF {version} root (Celeb-real/, "
            f"YouTube-real/, Celeb-synthesis/, {CELEBDF_TEST_LIST})?"
        )
    test: set[tuple[str, str]] = set()
    for number, line in enumerate(test_list.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            listed, rel = line.split()
            folder, name = rel.split("/")[0], rel.split("/")[-1]
        except ValueError as err:
            raise LayoutError(f"{test_list}:{number}: expected '<1|0> <folder>/<file>'") from err
        if folder not in CELEBDF_FOLDERS:
            raise LayoutError(f"{test_list}:{number}: unknown folder {folder!r}")
        # The list's convention: 1 = real, 0 = fake. Ours: 0 = real, 1 = fake.
        from_list = 0 if listed == "1" else 1 if listed == "0" else None
        if from_list != CELEBDF_FOLDERS[folder]:
            raise LayoutError(
                f"{test_list}:{number}: {rel!r} is listed as {listed!r} (1 = real, 0 = fake) "
                f"but lives in {folder}/, whose videos are "
                f"{'real' if CELEBDF_FOLDERS[folder] == 0 else 'fake'}. The folder decides; fix "
                "or replace the list (some copies flip its labels)."
            )
        test.add((folder, pathlib.Path(name).stem))
    entries = []
    for folder, label in CELEBDF_FOLDERS.items():
        directory = _celebdf_folder(root, folder)
        if not directory.is_dir():
            raise LayoutError(f"{root / folder} not found in the Celeb-DF {version} root {root}")
        method = "real" if label == 0 else CELEBDF_METHOD
        for path in _videos(directory):
            identity = celebdf_identity(folder, path.stem)
            if (folder, path.stem) in test:
                split = "test"
            else:
                split = "val" if bucket(f"celebdf-{identity}") < val_percent else "train"
            video_id = f"real/{folder}/{path.stem}" if label == 0 else f"{method}/{path.stem}"
            entries.append(
                Entry(dataset, split, label, method, video_id, str(path), identity=identity)
            )
    return entries


# ---------------------------------------------------------------------------------- a folder


def folder(root: str | pathlib.Path) -> list[Entry]:
    """A user's own tree: real/ and fake/<method>/ (optionally under train/, val/, test/)."""
    root = pathlib.Path(root).expanduser()
    split_roots = [(s, root / s) for s in SPLITS if (root / s).is_dir()]
    if not split_roots:
        split_roots = [("", root)]
    entries = []
    for split, base in split_roots:
        if not (base / "real").is_dir() and not (base / "fake").is_dir():
            raise LayoutError(f"{base} has neither real/ nor fake/<method>/ folders")
        groups = [("real", 0, base / "real")]
        fake = base / "fake"
        if fake.is_dir():
            groups += [(m.name, 1, m) for m in sorted(fake.iterdir()) if m.is_dir()]
        for method, label, directory in groups:
            if not directory.is_dir():
                continue
            for item in _folder_items(directory):
                name = item.relative_to(directory).with_suffix("").as_posix()
                video_id = f"{method}/{name}"
                frames = (
                    tuple(str(p) for p in _images(item))
                    if item.is_dir()
                    else (str(item),)
                    if item.suffix.lower() in IMAGE_SUFFIXES
                    else ()
                )
                entries.append(
                    Entry(
                        "folder",
                        split or _split_by_hash(video_id, 10, 10),
                        label,
                        method,
                        video_id,
                        str(item),
                        frames=frames,
                    )
                )
    return entries


def _images(directory: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _folder_items(
    directory: pathlib.Path, ignored: list[pathlib.Path] | None = None
) -> Iterable[pathlib.Path]:
    """Videos and loose images; a folder holding images (and no subfolders) is one video.
    Anything else (other extensions, FIFOs, sockets) goes to `ignored`."""
    for path in sorted(directory.iterdir()):
        if path.is_dir():
            if _images(path):
                yield path
                if ignored is not None:
                    ignored += [p for p in sorted(path.iterdir()) if p not in _images(path)]
            else:
                yield from _folder_items(path, ignored)
        elif path.is_file() and path.suffix.lower() in video.MEDIA_SUFFIXES:
            yield path
        elif ignored is not None and path.name not in _SIDE_FILES:
            ignored.append(path)


# Files a dataset folder commonly holds beside its media, never worth a warning.
_SIDE_FILES = {".DS_Store", "Thumbs.db", "desktop.ini"}


def folder_not_taken(root: str | pathlib.Path) -> list[pathlib.Path]:
    """Files under a `folder` dataset that `folder()` does not take (unknown extension, not a
    regular file), so `prepare` can name them."""
    root = pathlib.Path(root).expanduser()
    split_roots = [root / s for s in SPLITS if (root / s).is_dir()] or [root]
    ignored: list[pathlib.Path] = []
    for base in split_roots:
        for directory in [base / "real", *sorted((base / "fake").glob("*"))]:
            if directory.is_dir():
                for _ in _folder_items(directory, ignored):
                    pass
    return ignored


# ------------------------------------------------------------------------------- DeepfakeBench


def deepfakebench(json_path: str | pathlib.Path, root: str | pathlib.Path = "") -> list[Entry]:
    """Entries from one of DeepfakeBench's dataset JSON files; frame paths relative to `root`
    (or to the JSON's folder) when not absolute. Landmarks are looked up beside the frames
    (DeepfakeBench's `frames/` -> `landmarks/`, `.png` -> `.npy`)."""
    json_path = pathlib.Path(json_path).expanduser()
    base = pathlib.Path(root).expanduser() if root else json_path.parent
    try:
        data = json.loads(json_path.read_text())
    except (OSError, ValueError) as err:
        raise LayoutError(f"{json_path}: not a readable DeepfakeBench JSON ({err})") from err
    entries = []
    for dataset, labels in data.items():
        for label_name, splits in labels.items():
            label = 0 if "real" in label_name.lower() else 1
            method = "real" if label == 0 else DEEPFAKEBENCH_METHODS.get(label_name, label_name)
            for split, level in splits.items():
                split = {"validation": "val"}.get(split, split)
                if split not in SPLITS:
                    continue
                for compression, videos in _videos_by_compression(level):
                    for name, item in videos.items():
                        frames = tuple(str(_resolve(base, f)) for f in item.get("frames", ()))
                        landmarks = tuple(_landmark_path(f) for f in frames)
                        if not all(pathlib.Path(p).exists() for p in landmarks):
                            landmarks = ()
                        tag = label_name if label == 0 else method
                        entries.append(
                            Entry(
                                f"deepfakebench_{dataset}",
                                split,
                                label,
                                method,
                                f"{method}/{name}" if label else f"real/{tag}/{name}",
                                str(pathlib.Path(frames[0]).parent) if frames else name,
                                compression,
                                frames=frames,
                                landmarks=landmarks,
                            )
                        )
    if not entries:
        raise LayoutError(f"{json_path}: no videos with a train/val/test split found")
    return entries


def _videos_by_compression(level: dict) -> list[tuple[str, dict]]:
    """DeepfakeBench nests FF++ videos under a compression level and Celeb-DF's directly."""
    if level and all(isinstance(v, dict) and "frames" in v for v in level.values()):
        return [("", level)]
    return [(c, v) for c, v in level.items() if isinstance(v, dict)]


def _resolve(base: pathlib.Path, path: str) -> pathlib.Path:
    p = pathlib.Path(path)
    return p if p.is_absolute() else base / p


def _landmark_path(frame: str) -> str:
    p = pathlib.PurePosixPath(frame)
    parts = ["landmarks" if part == "frames" else part for part in p.parts]
    return str(pathlib.PurePosixPath(*parts).with_suffix(".npy"))


def summary(entries: Sequence[Entry]) -> dict[str, dict[str, int]]:
    """split -> method -> number of videos."""
    out: dict[str, dict[str, int]] = {}
    for e in entries:
        out.setdefault(e.split, {}).setdefault(e.method, 0)
        out[e.split][e.method] += 1
    return out
