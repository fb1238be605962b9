"""Loader throughput against what the train step consumes, measured in the same run.

Reads the configured dataset's training split through the grain pipeline the trainer uses
(shuffle, host augmentations, batching, reader threads), with augmentations off and on (flip,
resize, JPEG, blur, colour, Self-Blended Images), and times the student's train step (teacher,
frequency augmentation and all) on batches of the same shape. Target (issue 4): loader >= 2x
the step.

    python bench/loader_bench.py [--config=configs/demo.py] [--batches=60]

Prepares the dataset first if needed (the demo's takes about a minute).
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np
from _common import load_config, student_step

from mkln_jax import config_lib
from mkln_jax.backends.cpu import hostmem
from mkln_jax.input_pipeline import loader, prepare, splits

hostmem.tune()  # as `mkln` does, before the first JAX computation


def loader_rate(config, augment: loader.HostAugment, batches: int) -> float:
    source = splits.open_split(config.data, config_lib.data_dir(config), "train")
    index = splits.split_index(config.data, config_lib.data_dir(config), "train")
    if augment.sbi:
        indices = np.flatnonzero(index.methods == "real")
    else:
        indices = splits.training_indices(index, config.data.train_methods, True)
    ds = loader.train_batches(
        source, indices, global_batch_size=config.student.batch_size, seed=0, augment=augment
    )
    it = loader.iterate_from(ds, 0, config.data.read_threads)
    next(it)  # start-up
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * config.student.batch_size / (time.perf_counter() - start)


def step_rate(config, steps: int) -> float:
    fn, state, frozen, data, hparams = student_step(config)
    batch = config.student.batch_size
    for _ in range(15):  # warm-up: XLA:CPU's first ~10 executions of a step run slower
        jax.block_until_ready(fn(state, frozen, data, hparams))
    start = time.perf_counter()
    for _ in range(steps):
        jax.block_until_ready(fn(state, frozen, data, hparams))
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="configs/demo.py")
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    config = load_config(args.config)
    for line in prepare.prepare(config)[:1]:
        print(line)
    plain = loader.HostAugment(hflip=True)
    heavy = loader.HostAugment(
        hflip=True, resize_prob=0.5, jpeg_prob=0.5, blur_prob=0.5, colour_prob=0.5, sbi=True
    )
    # The step first: the loaders' prefetch threads keep reading in the background afterwards.
    step = step_rate(config, args.steps)
    rates = {
        "loader, flip only": loader_rate(config, plain, args.batches),
        "loader, flip + resize + JPEG + blur + colour (p 0.5) + SBI": loader_rate(
            config, heavy, args.batches
        ),
    }
    print(
        f"\n{config.data.name} train split, batch {config.student.batch_size}, "
        f"{config.data.image_size}px, {config.data.read_threads} reader threads, "
        f"{jax.device_count()} {jax.devices()[0].platform} device(s)\n"
    )
    print("| what | images/s | loader / step |")
    print("|---|---|---|")
    for name, rate in rates.items():
        print(f"| {name} | {rate:.0f} | {rate / step:.2f}x |")
    print(
        f"| train step ({config.student.model} + {config.teacher.model} teacher + "
        f"frequency augmentation) | {step:.0f} | 1 |"
    )


if __name__ == "__main__":
    main()
