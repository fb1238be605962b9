"""Score an image or a video with an exported artifact: find faces, batch, verdict."""

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
    seconds: float

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
            f"{len(self.scores) / self.seconds:.1f} frames/s end to end)"
        )
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
        clip = video.read_frames(path, num_frames)
    except video.VideoError as err:
        raise PredictError(str(err)) from err
    return clip.frames, clip.indices


def predict(artifact: export.Artifact, path: str | pathlib.Path, num_frames: int) -> Prediction:
    start = time.perf_counter()
    path = pathlib.Path(path)
    frames, indices = _load_frames(path, num_frames)
    margin = float(artifact.metadata["face_crop"]["margin"])
    crops, kept, missing = [], [], []
    for frame, index in zip(frames, indices, strict=True):
        box = faces.detect_largest_face(frame)
        if box is None:
            missing.append(index)
            continue
        crops.append(faces.square_crop(frame, box, margin, artifact.input_size))
        kept.append(index)
    if not crops:
        raise PredictError(f"{path}: no face found in {len(frames)} sampled frame(s)")
    scores = artifact(np.stack(crops))
    seconds = time.perf_counter() - start
    return Prediction(
        str(path), kept, [float(s) for s in scores], missing, artifact.threshold, seconds
    )
