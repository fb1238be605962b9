"""Single convolution and pooling layers, forward + backward, in the forms the zoo uses on CPU.

For layer shapes of EfficientNet-B0, Xception and ResNet-18 at 128 px (batch 32) it times
jit(grad(sum(sin(layer(x, w))))) with respect to input and kernel, and prints the median ms of
each formulation and its speed-up over XLA's own convolution, all measured in this run,
interleaved:

- depthwise: XLA's grouped convolution, the shifted multiply-adds differentiated by autodiff
  (the zoo's formulation before its own backward pass), `cpu_ops.shifted_depthwise_conv` with
  its jnp backward pass (`native.portable()`) and with our FFI kernels (`backends/cpu/native`,
  what the zoo runs on CPU in float32);
- 1x1: XLA's convolution and `cpu_ops.pointwise_conv` (a dot with its own backward pass);
- dense (ResNet-18's 3x3 layers and 7x7 stem): XLA's convolution compiled as jaxlib does by
  default (YNNPACK), with Eigen's kernels (`xla_options.compiler_options("eigen")`, what the
  trainer uses for ResNets where XLA runs them) and `cpu_ops.dense_conv` on our FFI kernels
  (`backends/cpu/native/dense.cc`, what the zoo runs on CPU in float32);
- max pooling 3x3 (Xception's and ResNet's layers): XLA's reduce-window, differentiated by
  autodiff, against `layers.max_pool(impl="cpu")` in its jnp formulation and on our FFI kernels
  (backends/cpu/native/pool.cc); loss sum(y * w), so the loss itself costs little;
- BatchNorm in train mode (Xception's and EfficientNet-B0's layers): `layers.batch_norm_train`
  with its statistics and backward sums in XLA's reductions (`native.portable()`) against our
  FFI kernels (backends/cpu/native/batchnorm.cc, one pass each); loss sum(y * x * w) (with
  sum(y * w) the input gradient is zero up to rounding; sum(y * y * w) cancels so badly in
  float32 that both sides are ~1% off float64).

    python bench/conv_bench.py [--repeats 8]
        [--sections depthwise,pointwise,dense,pooling,batchnorm]
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from mkln_jax.backends.cpu import hostmem, native, xla_options
from mkln_jax.backends.cpu import ops as cpu_ops
from mkln_jax.models import layers

hostmem.tune()  # as `mkln` does, before the first JAX computation

DIMS = ("NHWC", "HWIO", "NHWC")
# (spatial size, channels, kernel, stride)
DEPTHWISE = [
    (64, 96, 3, 2),
    (32, 144, 5, 2),
    (32, 144, 3, 1),
    (16, 240, 5, 1),
    (8, 672, 5, 1),
    (16, 728, 3, 1),
    (8, 728, 3, 1),
]
# (spatial size, input channels, output channels, stride)
POINTWISE = [(64, 32, 96, 1), (16, 728, 728, 1), (32, 128, 256, 2), (4, 320, 1280, 1)]
# (spatial size, input channels, output channels, kernel, stride)
DENSE = [
    (128, 3, 64, 7, 2),
    (32, 64, 64, 3, 1),
    (16, 128, 128, 3, 1),
    (8, 256, 256, 3, 1),
    (4, 512, 512, 3, 1),
    (16, 128, 256, 3, 2),
]
# (spatial size, channels, stride), 3x3 windows, padding 1
POOLING = [(64, 64, 2), (61, 128, 2), (31, 256, 2), (16, 728, 2)]
# (spatial size, channels)
BATCHNORM = [(64, 96), (61, 128), (31, 256), (16, 728), (8, 728)]


def _grad_fn(conv):
    loss = lambda x, w: jnp.sum(jnp.sin(conv(x, w)))
    return jax.jit(jax.grad(loss, argnums=(0, 1)))


def _autodiff_shifted(x, w, stride, pads):
    return cpu_ops._shifted_sum(jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0))), w, stride)


def _depthwise_fns(x, w, stride: int, pads, channels: int) -> dict:
    strides = (stride, stride)
    ours = lambda x, w: cpu_ops.shifted_depthwise_conv(
        x, w, strides, pads, feature_group_count=channels
    )
    with native.portable():  # traced now, so without the FFI kernels
        jnp_own = _grad_fn(ours).lower(x, w).compile()
    fns = {
        "xla": _grad_fn(
            lambda x, w: jax.lax.conv_general_dilated(
                x, w, strides, pads, dimension_numbers=DIMS, feature_group_count=channels
            )
        ),
        "autodiff": _grad_fn(lambda x, w: _autodiff_shifted(x, w, stride, pads)),
        "jnp": jnp_own,
    }
    if native.depthwise_available(x.dtype):
        fns["native"] = _grad_fn(ours).lower(x, w).compile()
    return fns


def _pointwise_fns(stride: int) -> dict:
    strides = (stride, stride)
    return {
        "xla": _grad_fn(
            lambda x, w: jax.lax.conv_general_dilated(
                x, w, strides, "VALID", dimension_numbers=DIMS
            )
        ),
        "ours": _grad_fn(lambda x, w: cpu_ops.pointwise_conv(x, w, strides, "VALID")),
    }


def _dense_fns(x, w, kernel: int, stride: int) -> dict:
    pad = ((kernel // 2, kernel // 2),) * 2
    grad = _grad_fn(
        lambda x, w: jax.lax.conv_general_dilated(x, w, (stride,) * 2, pad, dimension_numbers=DIMS)
    )
    lowered = grad.lower(x, w)
    fns = {"xla": lowered.compile()}
    if eigen := xla_options.compiler_options("eigen"):
        fns["eigen"] = lowered.compile(compiler_options=eigen)
    if native.dense_available(x.dtype) and w.shape[-1] % native.dense_lanes() == 0:
        fns["ffi"] = _grad_fn(lambda x, w: cpu_ops.dense_conv(x, w, (stride,) * 2, pad))
    return fns


def _pool_fns(x, w, stride: int) -> dict:
    def grad(impl):  # w: per-channel weights of the loss, so both arguments get gradients
        loss = lambda x, w: jnp.sum(layers.max_pool(x, 3, stride, 1, impl) * w)
        return jax.jit(jax.grad(loss, argnums=(0, 1)))

    fns = {"xla": grad("xla")}
    with native.portable():  # the jnp formulation: shifted maxima, gathering backward pass
        fns["jnp"] = grad("cpu").lower(x, w).compile()
    if native.max_pool_available(x.dtype):
        fns["ffi"] = grad("cpu")
    return fns


def _batch_norm_fns(x, w) -> dict:
    def grad():  # w: per-channel weights of the loss; gradients for x and the scale
        def loss(x, scale):
            y = layers.batch_norm_train(x, scale, 0.5 * scale, 1e-5)[0]
            return jnp.sum(y * x * w)

        return jax.jit(jax.grad(loss, argnums=(0, 1)))

    with native.portable():  # XLA's reductions
        fns = {"xla": grad().lower(x, w).compile()}
    if native.batch_norm_available(x.dtype):
        fns["ffi"] = grad().lower(x, w).compile()
    return fns


def _compare(fns: dict, x, w, repeats: int) -> dict[str, float]:
    for fn in fns.values():  # compile, then XLA:CPU's slower first executions
        for _ in range(12):
            jax.block_until_ready(fn(x, w))
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(x, w))
            times[name].append(time.perf_counter() - start)
    reference = fns["xla"](x, w)
    for name, fn in fns.items():
        for got, want in zip(fn(x, w), reference, strict=True):
            scale = float(jnp.max(jnp.abs(want)))
            np.testing.assert_allclose(got / scale, want / scale, atol=1e-4, err_msg=name)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--sections", default="depthwise,pointwise,dense,pooling,batchnorm")
    args = parser.parse_args()
    sections = set(args.sections.split(","))
    rng = np.random.default_rng(0)
    print(
        f"{jax.devices()[0].device_kind}, jax {jax.__version__}, batch {args.batch}, float32, "
        f"forward + backward, median of {args.repeats} interleaved calls, ms\n"
    )
    if "depthwise" in sections:
        print(
            "| depthwise (size, channels, kernel, stride) | XLA | shifted, autodiff | shifted, "
            "own backward | FFI kernels | best vs XLA |"
        )
        print("|---|---|---|---|---|---|")
        for size, ch, k, stride in DEPTHWISE:
            x = jnp.asarray(rng.standard_normal((args.batch, size, size, ch), np.float32))
            w = jnp.asarray(rng.standard_normal((k, k, 1, ch), np.float32))
            pads = (cpu_ops.same_padding(size, k, stride),) * 2
            ms = _compare(_depthwise_fns(x, w, stride, pads, ch), x, w, args.repeats)
            kernels = ms.get("native", float("nan"))
            best = min(ms["jnp"], ms.get("native", ms["jnp"]))
            print(
                f"| {size}x{size}x{ch}, {k}, {stride} | {ms['xla']:.1f} | {ms['autodiff']:.1f} | "
                f"{ms['jnp']:.1f} | {kernels:.1f} | {ms['xla'] / best:.2f}x |",
                flush=True,
            )
    if "pointwise" in sections:
        print("\n| 1x1 (size, in -> out, stride) | XLA | dot | speed-up over XLA |")
        print("|---|---|---|---|")
        for size, cin, cout, stride in POINTWISE:
            x = jnp.asarray(rng.standard_normal((args.batch, size, size, cin), np.float32))
            w = jnp.asarray(rng.standard_normal((1, 1, cin, cout), np.float32) * 0.05)
            fns = _pointwise_fns(stride)
            ms = _compare(fns, x, w, args.repeats)
            print(
                f"| {size}x{size}x{cin} -> {cout}, {stride} | {ms['xla']:.1f} | {ms['ours']:.1f} | "
                f"{ms['xla'] / ms['ours']:.2f}x |",
                flush=True,
            )
    if "dense" in sections:
        print(
            "\n| dense (size, in -> out, kernel, stride) | YNNPACK (XLA default) | Eigen | "
            "FFI kernels | FFI vs best of XLA's |"
        )
        print("|---|---|---|---|---|")
        for size, cin, cout, k, stride in DENSE:
            x = jnp.asarray(rng.standard_normal((args.batch, size, size, cin), np.float32))
            w = jnp.asarray(rng.standard_normal((k, k, cin, cout), np.float32) * 0.05)
            ms = _compare(_dense_fns(x, w, k, stride), x, w, args.repeats)
            best = min(ms["xla"], ms.get("eigen", ms["xla"]))
            cells = [f"{ms[name]:.1f}" if name in ms else "-" for name in ("xla", "eigen", "ffi")]
            ratio = f"{best / ms['ffi']:.2f}x" if "ffi" in ms else "-"
            shape = f"{size}x{size}x{cin} -> {cout}, {k}x{k}, {stride}"
            print(f"| {shape} | {' | '.join(cells)} | {ratio} |", flush=True)
    if "pooling" in sections:
        print("\n| max pool 3x3 (size, channels, stride) | XLA | jnp formulation | FFI kernels |")
        print("|---|---|---|---|")
        for size, ch, stride in POOLING:
            x = jnp.asarray(rng.standard_normal((args.batch, size, size, ch), np.float32))
            w = jnp.asarray(rng.standard_normal((ch,), np.float32))
            ms = _compare(_pool_fns(x, w, stride), x, w, args.repeats)
            cells = [f"{ms[name]:.1f}" if name in ms else "-" for name in ("xla", "jnp", "ffi")]
            print(f"| {size}x{size}x{ch}, {stride} | {' | '.join(cells)} |", flush=True)
    if "batchnorm" in sections:
        print("\n| BatchNorm, train (size, channels) | XLA's reductions | FFI kernels | speed-up |")
        print("|---|---|---|---|")
        for size, ch in BATCHNORM:
            x = jnp.asarray(rng.standard_normal((args.batch, size, size, ch), np.float32))
            w = jnp.asarray(rng.standard_normal((ch,), np.float32))
            ms = _compare(_batch_norm_fns(x, w), x, w, args.repeats)
            ratio = f"{ms['xla'] / ms['ffi']:.2f}x" if "ffi" in ms else "-"
            ffi = f"{ms['ffi']:.1f}" if "ffi" in ms else "-"
            print(f"| {size}x{size}x{ch} | {ms['xla']:.1f} | {ffi} | {ratio} |", flush=True)


if __name__ == "__main__":
    main()
