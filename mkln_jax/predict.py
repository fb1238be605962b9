"""Score images, videos or folders of them with an exported artifact: sample frames, find and
track the face, score all crops in one batch, give a verdict; optionally write per-frame scores
(CSV / JSON) and an annotated strip of frames (PNG)."""

from __future__ import annotations

import dataclasses
import pathlib
import time

import cv2
import numpy as np

from mkln_jax import export
from mkln_jax.input_pipeline import faces, video

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


class PredictError(Exception):
    """Nothing could be scored; the message is one line naming the file and the reason."""


@dataclasses.dataclass
class Prediction:
    path: str
    frame_indices: list[int]
    scores: list[float]  # P(fake) per frame with a face
    frames_without_face: list[int]
    threshold: float
    seconds: float  # end to end: decoding, detection, scoring
    model_seconds: float = 0.0  # the artifact's share
    frames: list[np.ndarray] = dataclasses.field(default_factory=list, repr=False)
    boxes: list[faces.Box | None] = dataclasses.field(default_factory=list, repr=False)

    @property
    def score(self) -> float:
        """Video score: the mean frame probability (DeepfakeBench's video-level rule)."""
        return float(np.mean(self.scores))

    @property
    def verdict(self) -> str:
        return "FAKE" if self.score >= self.threshold else "REAL"

    def lines(self) -> list[str]:
        out = [f"{self.path}"]
        pairs = zip(self.frame_indices, self.scores, strict=True)
        out += [f"  frame {i:5d}  P(fake) {s:.4f}" for i, s in pairs]
        if self.frames_without_face:
            out.append(f"  frames without a face (not scored): {self.frames_without_face}")
        out.append(
            f"  verdict: {self.verdict} (mean P(fake) {self.score:.4f} over "
            f"{len(self.scores)} frames, threshold {self.threshold:g}; "
            f"{len(self.scores) / self.seconds:.1f} frames/s end to end, model "
            f"{len(self.scores) / max(self.model_seconds, 1e-9):.0f} crops/s)"
        )
        return out

    def rows(self) -> list[dict]:
        """One row per sampled frame (for CSV / JSON)."""
        scored = dict(zip(self.frame_indices, self.scores, strict=True))
        indices = sorted([*self.frame_indices, *self.frames_without_face])
        return [
            {
                "path": self.path,
                "frame": i,
                "p_fake": scored.get(i),
                "face": i in scored,
                "video_p_fake": self.score,
                "verdict": self.verdict,
            }
            for i in indices
        ]

    def strip(self, height: int = 160) -> np.ndarray:
        """The sampled frames side by side (RGB), each with its face box and P(fake), and the
        verdict above: green for real, red for fake."""
        tiles = []
        scored = dict(zip(self.frame_indices, self.scores, strict=True))
        for frame, box, index in zip(
            self.frames,
            self.boxes,
            sorted([*self.frame_indices, *self.frames_without_face]),
            strict=True,
        ):
            scale = height / frame.shape[0]
            tile = cv2.resize(frame, (round(frame.shape[1] * scale), height))
            tile = np.ascontiguousarray(tile)
            if box is not None:
                p = scored[index]
                colour = (220, 40, 40) if p >= self.threshold else (40, 200, 40)
                x0, y0 = round(box.x * scale), round(box.y * scale)
                x1, y1 = round((box.x + box.w) * scale), round((box.y + box.h) * scale)
                cv2.rectangle(tile, (x0, y0), (x1, y1), colour, 2)
                cv2.putText(
                    tile,
                    f"{p:.2f}",
                    (x0, max(12, y0 - 4)),
                    cv2.FONT_HERSHEY_SIMPLEX,
                    0.45,
                    colour,
                    1,
                    cv2.LINE_AA,
                )
            else:
                cv2.putText(
                    tile,
                    "no face",
                    (4, 14),
                    cv2.FONT_HERSHEY_SIMPLEX,
                    0.45,
                    (200, 200, 200),
                    1,
                    cv2.LINE_AA,
                )
            tiles.append(tile)
        body = np.concatenate(tiles, axis=1)
        header = np.full((26, body.shape[1], 3), 255, np.uint8)
        colour = (200, 30, 30) if self.verdict == "FAKE" else (30, 150, 30)
        text = f"{pathlib.Path(self.path).name}: {self.verdict} (mean P(fake) {self.score:.3f})"
        cv2.putText(header, text, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.55, colour, 1, cv2.LINE_AA)
        return np.concatenate([header, body], axis=0)


def expand(paths: list[str]) -> list[pathlib.Path]:
    """Files as given; folders replaced by the videos and images under them (sorted)."""
    out = []
    for item in map(pathlib.Path, paths):
        if item.is_dir():
            out += sorted(
                p
                for p in item.rglob("*")
                if p.is_file() and p.suffix.lower() in (*IMAGE_SUFFIXES, *video.VIDEO_SUFFIXES)
            )
        else:
            out.append(item)
    return out


def _load_frames(path: pathlib.Path, num_frames: int) -> tuple[list[np.ndarray], list[int]]:
    if not path.exists():
        raise PredictError(f"{path}: file not found")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise PredictError(f"{path}: not a readable image")
        return [cv2.cvtColor(image, cv2.COLOR_BGR2RGB)], [0]
    try:
        clip = video.read_sampled(path, num_frames)
    except video.VideoError as err:
        raise PredictError(str(err)) from err
    return clip.frames, clip.indices


def predict(artifact: export.Artifact, path: str | pathlib.Path, num_frames: int) -> Prediction:
    """Scores one image or video: faces tracked across the sampled frames (as in
    preprocessing), square crops with the artifact's margin, one batched call."""
    start = time.perf_counter()
    path = pathlib.Path(path)
    frames, indices = _load_frames(path, num_frames)
    margin = float(artifact.metadata["face_crop"]["margin"])
    detector = faces.HaarDetector()
    tracked = faces.track([detector.detect(frame) for frame in frames])
    crops, kept, missing, boxes = [], [], [], []
    for frame, index, face in zip(frames, indices, tracked, strict=True):
        boxes.append(face.box if face else None)
        if face is None:
            missing.append(index)
            continue
        crops.append(faces.square_crop(frame, face.box, margin, artifact.input_size))
        kept.append(index)
    if not crops:
        raise PredictError(f"{path}: no face found in {len(frames)} sampled frame(s)")
    model_start = time.perf_counter()
    scores = artifact(np.stack(crops))
    model_seconds = time.perf_counter() - model_start
    seconds = time.perf_counter() - start
    return Prediction(
        str(path),
        kept,
        [float(s) for s in scores],
        missing,
        artifact.threshold,
        seconds,
        model_seconds,
        frames,
        boxes,
    )


def write_rows(predictions: list[Prediction], path: str | pathlib.Path) -> pathlib.Path:
    """Per-frame scores of every prediction as CSV (.csv) or JSON (anything else)."""
    import csv
    import json

    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [row for p in predictions for row in p.rows()]
    if path.suffix.lower() == ".csv":
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(
                f, fieldnames=["path", "frame", "p_fake", "face", "video_p_fake", "verdict"]
            )
            writer.writeheader()
            writer.writerows(rows)
    else:
        videos = [
            {
                "path": p.path,
                "p_fake": p.score,
                "verdict": p.verdict,
                "threshold": p.threshold,
                "rule": "mean of per-frame P(fake)",
                "frames": p.rows(),
            }
            for p in predictions
        ]
        path.write_text(json.dumps(videos, indent=2))
    return path
