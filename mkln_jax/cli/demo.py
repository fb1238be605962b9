"""`mkln demo`: every stage in order on the built-in data."""

from __future__ import annotations

import time

from mkln_jax.cli import evaluate, export, predict, prepare, train

SUMMARY = "prepare -> train -> evaluate -> export -> predict on the built-in demo data"
USAGE = "mkln demo [--config=demo] [--workdir=runs/demo]"
EXAMPLE = "mkln demo --config=demo --workdir=runs/demo"
TAKES_CONFIG = True


def define_flags() -> list[str]:
    names = []
    for command in (train, evaluate, export, predict):
        names += [n for n in command.define_flags() if n not in names]
    return names


def main(config, args: list[str]) -> int:
    from mkln_jax import config_lib
    from mkln_jax.input_pipeline import splits
    from mkln_jax.input_pipeline.build import demo

    timings = []
    for name, command in (
        ("prepare", prepare),
        ("train (teacher, then student)", train),
        ("evaluate", evaluate),
        ("export", export),
    ):
        print(f"\n=== {name} ===", flush=True)
        t0 = time.time()
        command.main(config, [])
        timings.append((name, time.time() - t0))
    print("\n=== predict ===", flush=True)
    t0 = time.time()
    samples = demo.predict_samples(splits.demo_settings(config.data), config_lib.cache_dir(config))
    predict.main(None, [str(path) for path in samples])
    timings.append(("predict", time.time() - t0))
    print("\n=== wall times ===")
    for name, seconds in timings:
        print(f"{name:32s} {seconds:7.1f} s")
    print(f"{'total':32s} {sum(s for _, s in timings):7.1f} s")
    return 0
