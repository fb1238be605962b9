"""A population of K students in one step against K separate steps (issue: sweeps as one
program).

For each case it compiles the config's student step once as a single student and once per
population size K, times the median step (after warm-up) and the compilation, and prints:

  - step ratio: the population step's time / K single steps (below 1: the population saves);
  - ideal ratio: what the step ratio would be if the shared part (teacher forward,
    augmentation) ran once and each member cost exactly a single student's own step (measured
    without teacher): a step ratio at the ideal means vmap adds nothing, our CPU kernels'
    sequential vmap included;
  - sweep ratio: a K-point sweep of `--run_steps` steps end to end, as one population
    (one compilation + run_steps population steps) against K separate runs (K compilations +
    K x run_steps single steps). Data loading is left out: the population reads, decodes and
    host-augments each batch once instead of K times, so the real saving is larger.

Cases: the demo config (EfficientNet-Lite0 teacher, small CNN student, 96 px) and the pair the
FF++ config is to use, an EfficientNet-B4 teacher with an EfficientNet-B0 student at 128 px;
`tiny` (small CNNs, 32 px) is the test suite's smoke run. Members differ in distillation
temperature; their views and teacher pass are shared.

    python bench/population_bench.py                      # both cases, K = 1, 2, 4, 8
    python bench/population_bench.py --cases=demo --sizes=1,4 --steps=5
    python bench/population_bench.py --cases=b4_b0 --size=256 --batch=128 --dtype=bfloat16  # GPU
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import statistics
import time

import jax
import numpy as np

from mkln_jax import config_lib, experiment, population, sharding
from mkln_jax import step as step_lib
from mkln_jax.backends.cpu import hostmem
from mkln_jax.configs import default

hostmem.tune()  # as `mkln` does, before the first JAX computation

TEMPERATURES = (1.0, 2.0, 4.0, 8.0, 12.0, 16.0, 24.0, 32.0)


def case_config(name: str, size: int = 0, batch: int = 0, dtype: str = ""):
    config = default.get_config()
    if name == "b4_b0":
        config.teacher.model = "efficientnet_b4"
        config.student.model = "efficientnet_b0"
        config.data.image_size = 128
    elif name == "tiny":  # small CNNs for teacher and student: the test suite's run
        config.teacher.model = config.student.model = "small_cnn"
        config.data.image_size = 32
    elif name != "demo":
        raise SystemExit(f"unknown case {name!r}: demo, b4_b0 or tiny")
    config.data.image_size = size or config.data.image_size
    config.student.batch_size = batch or config.student.batch_size
    config.train.compute_dtype = dtype or config.train.compute_dtype
    return config


def build(config, size: int, teacher: bool = True):
    """(jitted step, state, teacher variables, batch, hparams); size 0 = a single student;
    teacher=False: the student's own step (cross-entropy, no augmentation), to split the
    single step into the part a population shares and the part it repeats."""
    tx = experiment.make_optimizer(config, "student")
    model = experiment.build_model(config, "student", with_weights=False)
    graphdef, _, _ = step_lib.split_model(model)
    state = step_lib.init_state(model, tx, config.seed)
    t_graph, t_params, t_stats = step_lib.split_model(
        experiment.build_model(config, "teacher", with_weights=False)
    )
    teachers = (experiment.model_fn(config, "teacher", t_graph),)
    frozen = (step_lib.Frozen(t_params, t_stats),)
    student = experiment.model_fn(config, "student", graphdef)
    method = experiment.method(config, "student")
    hp = dataclasses.replace(
        experiment.hparams(config, "student"), teacher_weights=np.ones((1,), np.float32)
    )
    if not teacher:
        teachers, frozen, method = (), None, step_lib.Method()
        hp = dataclasses.replace(hp, teacher_weights=None)
    if size == 0:
        fn = step_lib.make_train_step(student, tx, teachers=teachers, method=method)
    else:
        fn = step_lib.make_population_step(student, tx, teachers=teachers, method=method)
        state = population.stack([state] * size)
        hp = population.stack_host(
            [dataclasses.replace(hp, temperature=np.float32(TEMPERATURES[k])) for k in range(size)]
        )
    rng = np.random.default_rng(0)
    side, batch_size = config.data.image_size, config.student.batch_size
    batch = sharding.host_to_global(
        {
            "image": rng.integers(0, 256, (batch_size, side, side, 3), dtype=np.uint8),
            "label": np.tile(np.int32([0, 1]), batch_size // 2),
        },
        experiment.make_mesh(config),
    )
    return jax.jit(fn, donate_argnums=0), state, frozen, batch, hp


def measure(config, size: int, steps: int, teacher: bool = True) -> tuple[float, float]:
    """(compile seconds, median step seconds); the memory it used is handed back after."""
    try:
        return _measure(config, size, steps, teacher)
    finally:
        jax.clear_caches()
        gc.collect()
        hostmem.release()


def _measure(config, size: int, steps: int, teacher: bool = True) -> tuple[float, float]:
    jitted, state, frozen, batch, hp = build(config, size, teacher)
    start = time.perf_counter()
    compiled = jitted.lower(state, frozen, batch, hp).compile(
        compiler_options=experiment.cpu_compiler_options(config, "student")
    )
    compile_s = time.perf_counter() - start
    experiment.check_step_memory(compiled, "population", size)  # one line, not an OOM kill
    for _ in range(3):  # warm-up
        state, metrics = compiled(state, frozen, batch, hp)
    jax.block_until_ready(state)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        state, metrics = compiled(state, frozen, batch, hp)
        jax.block_until_ready(metrics["loss"])
        times.append(time.perf_counter() - start)
    return compile_s, statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", default="demo,b4_b0")
    parser.add_argument("--sizes", default="1,2,4,8")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per measurement")
    parser.add_argument(
        "--run_steps", type=int, default=600, help="steps of the sweep in the sweep ratio"
    )
    parser.add_argument("--size", type=int, default=0, help="image side (default: the case's)")
    parser.add_argument("--batch", type=int, default=0, help="batch (default: the case's)")
    parser.add_argument("--dtype", default="", help="float32 or bfloat16 (default: float32)")
    args = parser.parse_args()
    sizes = [int(k) for k in args.sizes.split(",")]
    print(f"devices: {jax.devices()}; timed steps {args.steps}; sweep runs of {args.run_steps}")
    for name in args.cases.split(","):
        config = case_config(name, args.size, args.batch, args.dtype)
        print(
            f"\n## {name}: {config.teacher.model} -> {config.student.model}, "
            f"{config.data.image_size} px, batch {config.student.batch_size}"
        )
        single_compile, single_step = measure(config, 0, args.steps)
        _, own = measure(config, 0, args.steps, teacher=False)
        shared = max(single_step - own, 0.0)
        print(
            f"single student: step {single_step * 1e3:.1f} ms, compile {single_compile:.1f} s; "
            f"of the step, the student's own forward/backward/update {own * 1e3:.1f} ms, the "
            f"shared part (teacher forward, augmentation, KD) {shared * 1e3:.1f} ms"
        )
        print(
            "| K | step ms | K single steps ms | step ratio | ideal ratio | compile s | "
            "sweep ratio |"
        )
        print("|---|---|---|---|---|---|---|")
        for size in sizes:
            try:
                compile_s, step_s = measure(config, size, args.steps)
            except config_lib.ConfigError as err:
                print(f"| {size} | does not fit: {err} |||||", flush=True)
                continue
            separate = size * single_step
            sweep_one = compile_s + args.run_steps * step_s
            sweep_separate = size * (single_compile + args.run_steps * single_step)
            # Ideal: the shared part once, each member at a single student's own cost.
            ideal = (shared + size * (single_step - shared)) / separate
            print(
                f"| {size} | {step_s * 1e3:.1f} | {separate * 1e3:.1f} | "
                f"{step_s / separate:.2f} | {ideal:.2f} | {compile_s:.1f} | "
                f"{sweep_one / sweep_separate:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
