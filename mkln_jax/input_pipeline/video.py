"""Read evenly spaced frames from videos, robustly: a bad file is reported, never fatal."""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np

# What `prepare` and `predict` both take: containers PyAV (FFmpeg) decodes, an animated GIF
# being a video; still images OpenCV reads.
VIDEO_SUFFIXES = (
    ".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".3gp", ".ts", ".mts",
    ".wmv", ".flv", ".gif",
)  # fmt: skip
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
MEDIA_SUFFIXES = (*VIDEO_SUFFIXES, *IMAGE_SUFFIXES)


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


def _existing(path: str | pathlib.Path) -> pathlib.Path:
    """The path, if it names a non-empty file; else VideoError with the reason."""
    path = pathlib.Path(path)
    if not path.exists():
        raise VideoError(f"{path}: file not found")
    if not path.is_file():  # a FIFO or device would block the decoder forever
        raise VideoError(f"{path}: not a regular file")
    if path.stat().st_size == 0:
        raise VideoError(f"{path}: empty file (0 bytes)")
    return path


def _av():
    """PyAV, imported by the first video read: training and evaluation read prepared records
    only, so a training host needs no FFmpeg."""
    import av

    return av


def decode_all(path: str | pathlib.Path) -> list[np.ndarray]:
    """All frames of a video as RGB uint8; raises VideoError with the reason."""
    av = _av()
    path = _existing(path)
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


def read_sampled(path: str | pathlib.Path, num_frames: int) -> Clip:
    """`num_frames` evenly spaced frames, converting to RGB only the frames kept (decoding is
    sequential; the colour conversion of the others is skipped). Falls back to decoding
    everything when the container does not state its frame count. A truncated file keeps the
    sampled frames that decoded. Raises VideoError with the reason when nothing is usable."""
    av = _av()
    path = _existing(path)
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoError(f"{path}: no video stream")
            total = container.streams.video[0].frames
    except VideoError:
        raise
    except (av.error.FFmpegError, ValueError, OSError) as err:
        raise VideoError(f"{path}: unreadable video ({type(err).__name__}: {err})") from err
    if total <= 0:
        return read_frames(path, num_frames)
    wanted = evenly_spaced(total, num_frames)
    keep = set(wanted)
    frames, indices = [], []
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for index, frame in enumerate(container.decode(stream)):
                if index in keep:
                    frames.append(frame.to_ndarray(format="rgb24"))
                    indices.append(index)
                if index >= wanted[-1]:
                    break
    except (av.error.FFmpegError, ValueError, OSError) as err:
        if not frames:
            raise VideoError(f"{path}: unreadable video ({type(err).__name__}: {err})") from err
    if not frames:
        raise VideoError(f"{path}: no decodable frames")
    return Clip(str(path), frames, indices, total)
