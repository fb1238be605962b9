"""Train-step throughput and model FLOP utilisation, on whatever devices jax sees.

For each case (a model's plain train step: forward, backward, optimizer; and the full
distillation step: student + frozen teacher + DCT augmentation + KD loss) it compiles the step,
times it (median of --steps after warm-up) and reports images/s, the step's FLOPs (XLA's cost
analysis of the step compiled for the CPU, where convolutions are counted; a multiply-add
counts 2), achieved FLOP/s and the fraction of the device's peak.

Peak: on GPUs, the dense datasheet peak for the dtype (table below; H100 SXM: 989 TFLOP/s
bf16, 494 TF32, 67 float32 without tensor cores); on CPUs, measured here as the best of a few
large float32 matmuls (so "utilisation" is against what this CPU's BLAS reaches).

    python bench/step_bench.py                          # CPU defaults: batch 32, 128 px
    python bench/step_bench.py --gpu                    # one GPU: batch 128, 224 px, f32 + bf16

One command, well under 5 minutes on one GPU.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mkln_jax import models
from mkln_jax import step as step_lib
from mkln_jax.backends.cpu import hostmem, native, xla_options

hostmem.tune()  # as `mkln` does, before the first JAX computation

# Dense peaks in TFLOP/s from the vendors' datasheets: (float32 via TF32 tensor cores, bf16).
GPU_PEAKS = {
    "H100": (494.0, 989.0),
    "H200": (494.0, 989.0),
    "A100": (156.0, 312.0),
    "L4": (60.0, 121.0),
}


def cpu_peak() -> float:
    """Best float32 matmul FLOP/s of a few 2048^3 products (jax's own BLAS path)."""
    a = jnp.ones((2048, 2048), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = 0.0
    for _ in range(5):
        start = time.perf_counter()
        f(a).block_until_ready()
        best = max(best, 2 * 2048**3 / (time.perf_counter() - start))
    return best


def device_peak(dtype: str) -> tuple[float, str]:
    device = jax.devices()[0]
    if device.platform == "gpu":
        for name, (f32, bf16) in GPU_PEAKS.items():
            if name in device.device_kind:
                peak = bf16 if dtype == "bfloat16" else f32
                return peak * 1e12, f"{device.device_kind} datasheet ({dtype})"
        return float("nan"), f"{device.device_kind}: no datasheet peak known"
    return cpu_peak(), "measured 2048^3 float32 matmul on this CPU"


def case(student: str, teacher: str | None, batch: int, size: int, dtype: str):
    """(compiled step, args, flops)."""
    compiled, args, _ = _build(student, teacher, batch, size, dtype)
    return compiled, args, step_flops(student, teacher, batch, size)


def _flops(compiled) -> float:
    analysis = compiled.cost_analysis()
    if isinstance(analysis, list):
        analysis = analysis[0]
    return float((analysis or {}).get("flops", float("nan")))


def _build(
    student: str,
    teacher: str | None,
    batch: int,
    size: int,
    dtype: str,
    conv_impl: str = "auto",
    teacher_input: str = "clean",
):
    """(compiled step, its arguments, None) on the default device; teacher_input="view" is
    consistent teaching (the teacher sees the student's augmented view)."""
    tx = optax.sgd(0.01, momentum=0.9)
    model = models.build(student, 2, dtype=dtype, conv_impl=conv_impl)
    graphdef, _, _ = step_lib.split_model(model)
    spec = models.spec(student)
    fn_model = step_lib.ModelFn(graphdef, spec.mean, spec.std, models.DTYPES[dtype])
    teachers, frozen = (), None
    if teacher:
        t = models.build(teacher, 2, dtype=dtype, conv_impl=conv_impl)
        t_graph, t_params, t_stats = step_lib.split_model(t)
        t_spec = models.spec(teacher)
        teachers = (step_lib.ModelFn(t_graph, t_spec.mean, t_spec.std, models.DTYPES[dtype]),)
        frozen = (step_lib.Frozen(t_params, t_stats),)
    method = step_lib.Method(frequency_augment=bool(teacher), teacher_input=teacher_input)
    step = jax.jit(
        step_lib.make_train_step(fn_model, tx, teachers=teachers, method=method),
        donate_argnums=0,
    )
    state = step_lib.init_state(model, tx, 0)
    rng = np.random.default_rng(0)
    data = {
        "image": jnp.asarray(rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)),
        "label": jnp.asarray(np.tile(np.int32([0, 1]), batch // 2)),
    }
    hparams = {
        "temperature": np.float32(4.0),
        "alpha": np.float32(0.9),
        "freq_prob": np.float32(1.0),
        "jitter": np.float32(0.5),
        "band_drop_prob": np.float32(0.25),
    }
    # The convolution library the trainer would pick for this student (backends/cpu/xla_options.py).
    options = xla_options.for_model(student)
    compiled = step.lower(state, frozen, data, hparams).compile(compiler_options=options)
    return compiled, [state, frozen, data, hparams], None


def step_flops(student: str, teacher: str | None, batch: int, size: int) -> float:
    """The step's FLOPs (a multiply-add counts 2) from XLA's cost analysis of the same step
    compiled for the CPU: there every convolution is an HLO op that the analysis counts, while
    on GPUs they become cuDNN custom calls it does not. Model FLOPs do not depend on the
    device; float32 and the CPU formulations of the zoo (conv_impl="cpu": depthwise
    convolutions as shifted multiply-adds, 1x1 as dots) are used for the count, because XLA's
    cost analysis counts a depthwise convolution's filter gradient as if it were dense
    (EfficientNet-B0 came out at 7.5 GFLOP per 128 px image instead of 0.9)."""
    cpu = jax.devices("cpu")[0]
    if jax.devices()[0].platform != "cpu":
        with jax.default_device(cpu):
            return step_flops_here(student, teacher, batch, size)
    return step_flops_here(student, teacher, batch, size)


def step_flops_here(student, teacher, batch, size) -> float:
    # Traced without our FFI kernels (native.portable()): the analysis cannot see inside a
    # custom call, so the depthwise convolutions are counted in their jnp form.
    with native.portable():
        compiled, _, _ = _build(student, teacher, batch, size, "float32", conv_impl="cpu")
    return _flops(compiled)


def measure(compiled, args, steps: int, max_seconds: float = float("inf")) -> float:
    """Median seconds per step; after `max_seconds` (warm-up included) it stops early, with at
    least one timed step."""
    state = args[0]
    begin = time.perf_counter()
    for _ in range(15):  # warm-up: XLA:CPU's first ~10 executions of a step run slower
        state, _ = compiled(state, *args[1:])
        if time.perf_counter() - begin > max_seconds / 2:
            break
    jax.block_until_ready(state)
    times = []
    for _ in range(steps):
        if times and time.perf_counter() - begin > max_seconds:
            break
        start = time.perf_counter()
        state, metrics = compiled(state, *args[1:])
        jax.block_until_ready(metrics["loss"])
        times.append(time.perf_counter() - start)
    args[0] = state
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gpu", action="store_true", help="GPU sizes: batch 128, 224 px")
    parser.add_argument("--batch", type=int, default=0)
    parser.add_argument("--size", type=int, default=0)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--dtypes", default="")
    parser.add_argument("--models", default="resnet18,efficientnet_b0,xception")
    args = parser.parse_args()
    batch = args.batch or (128 if args.gpu else 32)
    size = args.size or (224 if args.gpu else 128)
    dtypes = (args.dtypes or ("float32,bfloat16" if args.gpu else "float32")).split(",")
    cases = [(m, None) for m in args.models.split(",") if m]
    cases.append(("efficientnet_b0", "resnet18"))  # the distillation step
    device = jax.devices()[0]
    print(
        f"{device.device_kind} ({device.platform}), jax {jax.__version__}, batch {batch}, "
        f"{size} px, median of {args.steps} steps"
    )
    print("\n| step | dtype | compile s | ms/step | images/s | GFLOP/step | TFLOP/s | of peak |")
    print("|---|---|---|---|---|---|---|---|")
    peaks = {}
    for dtype in dtypes:
        peaks[dtype] = device_peak(dtype)
        for student, teacher in cases:
            start = time.perf_counter()
            compiled, call_args, flops = case(student, teacher, batch, size, dtype)
            compile_s = time.perf_counter() - start
            seconds = measure(compiled, call_args, args.steps)
            achieved = flops / seconds
            name = f"distill: {student} + {teacher} teacher + DCT aug" if teacher else student
            print(
                f"| {name} | {dtype} | {compile_s:.1f} | {seconds * 1e3:.1f} | "
                f"{batch / seconds:.0f} | {flops / 1e9:.1f} | {achieved / 1e12:.2f} | "
                f"{achieved / peaks[dtype][0]:.1%} |",
                flush=True,
            )
    for dtype, (peak, how) in peaks.items():
        print(f"\npeak for {dtype}: {peak / 1e12:.2f} TFLOP/s ({how})")


if __name__ == "__main__":
    main()
