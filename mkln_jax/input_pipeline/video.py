"""Read evenly spaced frames from videos, robustly: a bad file is reported, never fatal."""

from __future__ import annotations

import dataclasses
import pathlib

import av
import numpy as np


class VideoError(Exception):
    """A video that cannot be used; the message names the file and the reason."""


@dataclasses.dataclass
class Clip:
    path: str
    frames: list[np.ndarray]  # uint8[H, W, 3] RGB each
    indices: list[int]  # frame index in the video for each frame
    total_frames: int


def evenly_spaced(total: int, count: int) -> list[int]:
    """`count` indices spread evenly over [0, total), centred in their segments."""
    if total <= 0:
        return []
    count = min(count, total)
    return sorted({int((k + 0.5) * total / count) for k in range(count)})


def decode_all(path: str | pathlib.Path) -> list[np.ndarray]:
    """All frames of a video as RGB uint8; raises VideoError with the reason."""
    path = pathlib.Path(path)
    if not path.exists():
        raise VideoError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise VideoError(f"{path}: empty file (0 bytes)")
    frames = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoError(f"{path}: no video stream")
            for frame in container.decode(video=0):
                frames.append(frame.to_ndarray(format="rgb24"))
    except VideoError:
        raise
    except (av.error.FFmpegError, ValueError, OSError) as err:
        if not frames:
            raise VideoError(f"{path}: unreadable video ({type(err).__name__}: {err})") from err
        # A truncated file: keep the frames that decoded.
    if not frames:
        raise VideoError(f"{path}: no decodable frames")
    return frames


def read_frames(path: str | pathlib.Path, num_frames: int) -> Clip:
    """Decodes a video and keeps `num_frames` evenly spaced frames."""
    frames = decode_all(path)
    indices = evenly_spaced(len(frames), num_frames)
    return Clip(str(path), [frames[i] for i in indices], indices, len(frames))
