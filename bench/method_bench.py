"""What the method's parts cost inside the train step, each against the same step without it.

Compiles the demo's student step four ways and times them interleaved (median of --repeats):
    base        student forward/backward + optimizer (no augmentation, no teacher)
    +aug        + frequency-texture augmentation (every operation on, full-image spectrum)
    +aug8       + the same augmentation on 8x8 block spectra
    +teacher    + the frozen teacher's forward pass (no augmentation)
    +aug+teacher  both, the teacher on the clean image or on the student's view (the default)
    +mutual     the aug+teacher step with a second (frequency) peer trained alongside
Reports each part's share of its step time, and for the teacher its share of the step's FLOPs
(XLA's cost analysis), since a forward pass should cost about what its FLOPs do.

    python bench/method_bench.py [--config=configs/demo.py] [--repeats=15]

Targets (issue 5): augmentation <= 5% of the step; teacher time share <= its FLOP share + 10
points. Models, batch and image size are the config's.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np
from _common import load_config, student_step

from mkln_jax import experiment
from mkln_jax import step as step_lib
from mkln_jax.backends.cpu import hostmem

hostmem.tune()  # as `mkln` does, before the first JAX computation

ALL_OPS = {
    "freq_prob": 1.0,
    "jitter_prob": 1.0,
    "jitter": 0.5,
    "band_drop_prob": 0.25,
    "drop_strength": 1.0,
    "noise_prob": 0.5,
    "noise_std": 0.02,
    "mix_prob": 0.5,
    "mix_strength": 0.5,
}


def build(
    config, *, augment: bool, block: int, teacher: bool, mutual: bool, teacher_input: str = "view"
):
    """(compiled step, state, teacher vars, batch, hparams, flops) for one variant."""
    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.distill.teacher_input = teacher_input
        config.mutual.enabled = mutual
        config.student.frequency_augment = augment
        config.freq_aug.block = block
    compiled, state, frozen, batch, hparams = student_step(
        config, teacher=teacher, hparam_overrides=ALL_OPS
    )
    analysis = compiled.cost_analysis()
    if isinstance(analysis, list):
        analysis = analysis[0]
    flops = float((analysis or {}).get("flops", float("nan")))
    return compiled, state, frozen, batch, hparams, flops


def teacher_forward_flops(config) -> float:
    model = experiment.build_model(config, "teacher", with_weights=False)
    graphdef, params, stats = step_lib.split_model(model)
    fn = experiment.model_fn(config, "teacher", graphdef)
    size, batch_size = config.data.image_size, config.student.batch_size
    images = jax.ShapeDtypeStruct((batch_size, size, size, 3), np.float32)
    lowered = jax.jit(lambda p, s, x: fn.apply(p, s, x, False)[0]).lower(params, stats, images)
    analysis = lowered.compile().cost_analysis()
    if isinstance(analysis, list):
        analysis = analysis[0]
    return float(analysis["flops"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="configs/demo.py")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    config = load_config(args.config)
    variants = {
        "base": dict(augment=False, block=0, teacher=False, mutual=False),
        "+aug": dict(augment=True, block=0, teacher=False, mutual=False),
        "+aug8": dict(augment=True, block=8, teacher=False, mutual=False),
        "+teacher": dict(augment=False, block=0, teacher=True, mutual=False),
        "+aug+teacher (teacher on the clean image)": dict(
            augment=True, block=0, teacher=True, mutual=False, teacher_input="clean"
        ),
        "+aug+teacher (consistent: teacher on the view)": dict(
            augment=True, block=0, teacher=True, mutual=False
        ),
        "+aug+teacher+mutual": dict(augment=True, block=0, teacher=True, mutual=True),
    }
    built = {}
    for name, kwargs in variants.items():
        t0 = time.perf_counter()
        built[name] = build(config, **kwargs)
        print(f"compiled {name} in {time.perf_counter() - t0:.1f}s", flush=True)
    times = {name: [] for name in built}
    for compiled, state, frozen, batch, hp, _ in built.values():  # XLA:CPU's first ~10
        for _ in range(12):  # executions of a fresh step run slower: warm up past them
            jax.block_until_ready(compiled(state, frozen, batch, hp))
    for _ in range(args.repeats):
        for name, (compiled, state, frozen, batch, hp, _) in built.items():
            start = time.perf_counter()
            jax.block_until_ready(compiled(state, frozen, batch, hp))
            times[name].append(time.perf_counter() - start)
    median = {name: float(np.median(t)) for name, t in times.items()}
    batch_size = config.student.batch_size
    print(
        f"\ndevice: {jax.devices()[0].device_kind} x{jax.device_count()}, jax {jax.__version__}, "
        f"student {config.student.model}, teacher {config.teacher.model}, batch {batch_size}, "
        f"{config.data.image_size}px, float32, median of {args.repeats} interleaved steps\n"
    )
    print("| step | ms | images/s | GFLOP | time vs base |")
    print("|---|---|---|---|---|")
    for name in built:
        flops = built[name][-1]
        print(
            f"| {name} | {median[name] * 1e3:.1f} | {batch_size / median[name]:.0f} | "
            f"{flops / 1e9:.2f} | {median[name] / median['base']:.3f} |"
        )
    aug = (median["+aug"] - median["base"]) / median["+aug"]
    consistent = median["+aug+teacher (consistent: teacher on the view)"]
    clean = median["+aug+teacher (teacher on the clean image)"]
    aug_distill = (consistent - median["+teacher"]) / consistent
    aug_distill_clean = (clean - median["+teacher"]) / clean
    aug8 = (median["+aug8"] - median["base"]) / median["+aug8"]
    teacher_time = (median["+teacher"] - median["base"]) / median["+teacher"]
    teacher_flops = teacher_forward_flops(config) / built["+teacher"][-1]
    print(
        f"\naugmentation (full image): {aug:.1%} of the step (target <= 5%)"
        f"\naugmentation (8x8 blocks): {aug8:.1%} of the step"
        f"\naugmentation in the distillation step: {aug_distill:.1%} (teacher on the view), "
        f"{aug_distill_clean:.1%} (teacher on the clean image)"
        f"\nteacher forward: {teacher_time:.1%} of the step time, {teacher_flops:.1%} of its "
        f"FLOPs; excess {teacher_time - teacher_flops:+.1%} (target <= +10 points)"
    )


if __name__ == "__main__":
    main()
