"""The CPU formulations of the zoo's operations (XLA:CPU, float32): depthwise convolutions as
shifted multiply-adds or our FFI kernels, 1x1 convolutions as matrix products with their own
backward pass, dense convolutions and max pooling on our FFI kernels where they apply, and
BatchNorm's sums in one pass. `mkln_jax.models.layers` picks them when `impl="cpu"` (the
default on CPU); on GPU and TPU nothing here runs. Each equals XLA's own formulation to float32
rounding, gradients included (tests/test_models.py, tests/test_native.py); why each exists and
what it gains: docs/performance.md.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from mkln_jax.backends.cpu import native as native_kernels


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow SAME padding (the extra pixel goes after): (before, after)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _explicit_pads(
    padding: str | Sequence[tuple[int, int]], shape: Sequence[int], kernel: int, stride: int
) -> tuple[tuple[int, int], tuple[int, int]]:
    if isinstance(padding, str):
        if padding == "SAME":
            return same_padding(shape[1], kernel, stride), same_padding(shape[2], kernel, stride)
        if padding == "VALID":
            return (0, 0), (0, 0)
        raise ValueError(f"unsupported padding {padding!r}")
    (a, b), (c, d) = padding
    return (int(a), int(b)), (int(c), int(d))


def _windows(
    xp: jax.Array, kernel: int, stride: int, out_h: int | None = None, out_w: int | None = None
):
    """(i, j, xp's strided window for kernel tap (i, j)), NHWC; by default every window that
    fits in xp (a VALID sliding window)."""
    n, c = xp.shape[0], xp.shape[-1]
    out_h = (xp.shape[1] - kernel) // stride + 1 if out_h is None else out_h
    out_w = (xp.shape[2] - kernel) // stride + 1 if out_w is None else out_w
    for i in range(kernel):
        for j in range(kernel):
            limit = (n, i + (out_h - 1) * stride + 1, j + (out_w - 1) * stride + 1, c)
            yield i, j, jax.lax.slice(xp, (0, i, j, 0), limit, (1, stride, stride, 1))


def _shifted_sum(xp: jax.Array, w: jax.Array, stride: int) -> jax.Array:
    """sum over taps of window(i, j) * w[i, j, 0]: a depthwise VALID convolution of xp."""
    out = None
    for i, j, window in _windows(xp, w.shape[0], stride):
        term = window * w[i, j, 0]
        out = term if out is None else out + term
    return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _depthwise(x: jax.Array, w: jax.Array, stride: int, pads, native: bool) -> jax.Array:
    if native:
        return native_kernels.depthwise_forward(x, w, stride, pads)
    return _shifted_sum(jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0))), w, stride)


def _depthwise_fwd(x, w, stride, pads, native):
    return _depthwise(x, w, stride, pads, native), (x, w)


def _depthwise_bwd(stride, pads, native, residuals, dy):
    x, w = residuals
    if native:
        return (
            native_kernels.depthwise_input_grad(dy, w, x.shape, stride, pads),
            native_kernels.depthwise_filter_grad(x, dy, w.shape, stride, pads),
        )
    kernel = w.shape[0]
    # dx: the transposed convolution, written as the same shifted sum over dy spread out by the
    # stride (zeros between rows and columns), padded so the output lines up with x, and the
    # kernel flipped. Autodiff of the forward instead adds k*k padded copies of dy * w[i, j],
    # which XLA:CPU fuses into one slow loop.
    config = [(0, 0, 0)]
    for axis, (before, after) in zip((1, 2), pads, strict=True):
        padded = x.shape[axis] + before + after
        unused = padded - ((dy.shape[axis] - 1) * stride + kernel)  # rows no window reached
        config.append((kernel - 1 - before, kernel - 1 + unused - after, stride - 1))
    config.append((0, 0, 0))
    dy_spread = jax.lax.pad(dy, jnp.zeros((), dy.dtype), config)
    dx = _shifted_sum(dy_spread, w[::-1, ::-1], 1)
    xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    taps = _windows(xp, kernel, stride, dy.shape[1], dy.shape[2])
    dw = jnp.stack([jnp.sum(window * dy, axis=(0, 1, 2)) for _, _, window in taps])
    return dx, dw.reshape(w.shape).astype(w.dtype)


_depthwise.defvjp(_depthwise_fwd, _depthwise_bwd)


def shifted_depthwise_conv(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers=None,
    feature_group_count: int = 1,
    precision=None,
    preferred_element_type=None,
    **unused_kwargs,
) -> jax.Array:
    """Depthwise convolution written as k*k shifted multiply-adds (NHWC, kernel HW1C).

    A drop-in for `jax.lax.conv_general_dilated` in `nnx.Conv` for the depthwise case only.
    XLA:CPU lowers depthwise convolutions (and especially their filter gradients) poorly; this
    formulation, with its own backward pass (`_depthwise_bwd`), is 3-13x faster there in
    training (bench/conv_bench.py) and the same function (tests/test_models.py).
    """
    # NHWC / HWIO are fixed by nnx.Conv; newer flax also passes sharding hints we do not need.
    del dimension_numbers, precision, preferred_element_type, unused_kwargs
    channels = lhs.shape[-1]
    kh, kw, one, out_channels = rhs.shape
    if one != 1 or feature_group_count != channels or out_channels != channels or kh != kw:
        raise ValueError("shifted_depthwise_conv handles square depthwise convolutions only")
    if any(d != 1 for d in (lhs_dilation or (1, 1))) or any(
        d != 1 for d in (rhs_dilation or (1, 1))
    ):
        raise ValueError("shifted_depthwise_conv does not support dilation")
    sh, sw = window_strides
    if sh != sw:
        raise ValueError("shifted_depthwise_conv needs equal strides")
    pads = _explicit_pads(padding, lhs.shape, kh, sh)
    # Our FFI kernels (backends/cpu/native) where they apply: float32 on XLA:CPU, padding < k.
    native = (
        max(pads[0][0], pads[1][0]) < kh
        and lhs.dtype == rhs.dtype
        and native_kernels.depthwise_available(lhs.dtype)
    )
    return _depthwise(lhs, rhs, int(sh), pads, native)


def pointwise_conv(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers=None,
    feature_group_count: int = 1,
    precision=None,
    preferred_element_type=None,
    **unused_kwargs,
) -> jax.Array:
    """A 1x1 convolution (NHWC, kernel 11IO, no padding) as one matrix product.

    A drop-in for `jax.lax.conv_general_dilated` in `nnx.Conv`. XLA:CPU computes a 1x1
    convolution's filter gradient as a convolution over the whole image with transposed
    operands (2.8x slower than this at 16 x 16 x 728 -> 728, bench/conv_bench.py); as a
    dot, every pass is a plain matrix product.
    """
    del rhs_dilation, dimension_numbers, unused_kwargs
    kh, kw, _, _ = rhs.shape
    if (kh, kw) != (1, 1) or feature_group_count != 1:
        raise ValueError("pointwise_conv handles 1x1 convolutions without groups only")
    if any(d != 1 for d in (lhs_dilation or (1, 1))):
        raise ValueError("pointwise_conv does not support input dilation")
    if _explicit_pads(padding, lhs.shape, 1, window_strides[0]) != ((0, 0), (0, 0)):
        raise ValueError("pointwise_conv does not support padding")
    sh, sw = window_strides
    if (sh, sw) != (1, 1):
        lhs = lhs[:, ::sh, ::sw, :]
    if precision is None and preferred_element_type is None:
        return _pointwise(lhs, rhs)
    return jax.lax.dot_general(
        lhs,
        rhs[0, 0],
        (((3,), (0,)), ((), ())),
        precision=precision,
        preferred_element_type=preferred_element_type,
    )


@jax.custom_vjp
def _pointwise(x: jax.Array, w: jax.Array) -> jax.Array:
    return jax.lax.dot_general(x, w[0, 0], (((3,), (0,)), ((), ())))


def _pointwise_fwd(x, w):
    return _pointwise(x, w), (x, w)


def _pointwise_bwd(residuals, dy):
    # The filter gradient as x^T dy, giving (in, out) directly. Autodiff's transpose rule forms
    # dy^T x, (out, in), and transposes it; XLA:CPU then runs that product on one thread with
    # Eigen for the narrow layers (16 x 96 from 131072 rows took 21.6 ms in EfficientNet-B0's
    # step) instead of on YNNPACK. Whole train steps: EfficientNet-B0 92.2 -> 121.6 images/s,
    # Xception 21.1 -> 27.3 (docs/performance_log.md).
    x, w = residuals
    dx = jax.lax.dot_general(dy, w[0, 0], (((3,), (1,)), ((), ())))
    if _native_pointwise_filter_grad(x, dy, w):
        # Our dense kernels read x as it lies (NHWC); XLA's dot first copies it transposed.
        return dx, native_kernels.dense_filter_grad(x, dy, w.shape, 1, ((0, 0), (0, 0)))
    dw = jax.lax.dot_general(x, dy, (((0, 1, 2), (0, 1, 2)), ((), ())))
    return dx, dw.reshape(w.shape).astype(w.dtype)


# From this many pixels (batch x height x width) up, a 1x1 filter gradient with >= 64 input
# channels runs on the dense kernels (output channels a multiple of their vector width). For
# such layers XLA transposes the whole input for its dot, and it schedules that copy in the
# forward pass, where it holds up the next layer (Xception's entry flow: 31 ms per step).
# Smaller or narrower layers stay on YNNPACK's dot, which is faster there (EfficientNet-B0 with
# every eligible 1x1 filter gradient on the kernels: 117.6 -> 112.6 images/s).
_PW_KERNEL_MIN_PIXELS = 16384


def _native_pointwise_filter_grad(x: jax.Array, dy: jax.Array, w: jax.Array) -> bool:
    if not native_kernels.dense_available(x.dtype) or not x.dtype == dy.dtype == w.dtype:
        return False
    lanes = native_kernels.dense_lanes()
    return (
        w.shape[3] % lanes == 0
        and w.shape[2] >= 64
        and x.shape[0] * x.shape[1] * x.shape[2] >= _PW_KERNEL_MIN_PIXELS
    )


_pointwise.defvjp(_pointwise_fwd, _pointwise_bwd)


def _xla_conv(x: jax.Array, w: jax.Array, stride: int, pads) -> jax.Array:
    return jax.lax.conv_general_dilated(
        x, w, (stride, stride), pads, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def _merged_rows_input(x: jax.Array, pads):
    """For few input channels (a stem), x padded left and right, so the kernels can merge each
    kernel row's taps into one long reduction (dense.cc, MergeRows); else x as it is."""
    if x.shape[-1] < 16 and pads[1] != (0, 0):
        return jnp.pad(x, ((0, 0), (0, 0), pads[1], (0, 0))), (pads[0], (0, 0))
    return x, pads


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _dense(x: jax.Array, w: jax.Array, stride: int, pads) -> jax.Array:
    xm, pads_m = _merged_rows_input(x, pads)
    return native_kernels.dense_forward(xm, w, stride, pads_m)


def _dense_fwd(x, w, stride, pads):
    return _dense(x, w, stride, pads), (x, w)


def _dense_bwd(stride, pads, residuals, dy):
    x, w = residuals
    if x.shape[-1] % native_kernels.dense_lanes() == 0:
        dx = native_kernels.dense_input_grad(dy, w, x.shape, stride, pads)
    else:  # e.g. a 3-channel stem, whose input gradient is rarely wanted: XLA's (DCE'd if unused)
        dx = jax.vjp(lambda x: _xla_conv(x, w, stride, pads), x)[1](dy)[0]
    xm, pads_m = _merged_rows_input(x, pads)
    return dx, native_kernels.dense_filter_grad(xm, dy, w.shape, stride, pads_m)


_dense.defvjp(_dense_fwd, _dense_bwd)


# With 8-float vectors (AVX2) the kernels lose to XLA's Eigen convolutions on small maps (a
# 2-core Zen 3: 8x8x256 fwd + both gradients 87.9 vs 65.6 ms, 4x4x512 111.0 vs 72.2). The
# ResNet-18 train step (batch 32, 128 px) with the kernels on every layer / on maps of >= 256 /
# >= 1024 pixels: 22.8 / 25.7 / 25.6 images/s in one session, 36.2 / 38.1 / 39.7 and - / 38.4
# / 39.2 in two runs of a later one (docs/performance_log.md, "On the AVX2 machine"); so 16x16
# maps go to Eigen too. With 16-float vectors (AVX-512) the kernels win at every size.
MIN_PIXELS_WITH_8_LANES = 1024


def _dense_kernels_pay(pixels: int, lanes: int) -> bool:
    return lanes >= 16 or pixels >= MIN_PIXELS_WITH_8_LANES


def dense_conv(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers=None,
    feature_group_count: int = 1,
    precision=None,
    preferred_element_type=None,
    small_maps_on_kernels: bool = False,
    **unused_kwargs,
) -> jax.Array:
    """A dense (one-group) square convolution, NHWC / HWIO, on our FFI kernels where they apply
    (float32 on XLA:CPU, padding smaller than the kernel, output channels a multiple of the
    kernels' vector width: `backends/cpu/native/dense.cc`; with 8-float vectors only on maps of at
    least `MIN_PIXELS_WITH_8_LANES` pixels unless `small_maps_on_kernels`), else XLA's
    convolution.

    A drop-in for `jax.lax.conv_general_dilated` in `nnx.Conv`. The kernels run at about the
    rate of XLA's matrix products, skip the padding on small maps, and need no transposes for
    the filter gradient: ResNet-18's train step 84 -> 104 images/s on a 2-core CPU
    (docs/performance_log.md, section 3). They agree with XLA to float32 rounding
    (tests/test_native.py).
    """
    del dimension_numbers, unused_kwargs
    kh, kw, cin, cout = rhs.shape
    dilated = any(d != 1 for d in (*(lhs_dilation or (1, 1)), *(rhs_dilation or (1, 1))))
    sh, sw = window_strides
    pads = _explicit_pads(padding, lhs.shape, kh, sh) if kh == kw else None
    lanes = native_kernels.dense_lanes() if native_kernels.dense_available(lhs.dtype) else 0
    if (
        lanes
        and pads is not None
        and not dilated
        and sh == sw
        and feature_group_count == 1
        and cin == lhs.shape[-1]
        and cout % lanes == 0
        and (small_maps_on_kernels or _dense_kernels_pay(lhs.shape[1] * lhs.shape[2], lanes))
        and max(*pads[0], *pads[1]) < kh
        and lhs.dtype == rhs.dtype
        and precision is None
        and preferred_element_type is None
    ):
        return _dense(lhs, rhs, int(sh), pads)
    return jax.lax.conv_general_dilated(
        lhs,
        rhs,
        window_strides,
        padding,
        lhs_dilation,
        rhs_dilation,
        ("NHWC", "HWIO", "NHWC"),
        feature_group_count,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool(x: jax.Array, kernel: int, stride: int, pads) -> jax.Array:
    return _max_pool_fwd(x, kernel, stride, pads)[0]


def _max_pool_fwd(x, kernel, stride, pads):
    xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)), constant_values=-jnp.inf)
    y = None
    for _, _, window in _windows(xp, kernel, stride):
        y = window if y is None else jnp.maximum(y, window)
    return y, (x, y)


def _max_pool_bwd(kernel, stride, pads, residuals, dy):
    x, y = residuals
    xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)), constant_values=-jnp.inf)
    n, out_h, out_w, c = y.shape
    # Which tap of each window holds its maximum, the first in window order on ties (as XLA's
    # and PyTorch's max pooling choose): that input alone receives the output's gradient.
    first = None
    taps = list(_windows(xp, kernel, stride, out_h, out_w))
    for t in reversed(range(len(taps))):
        first = jnp.where(
            taps[t][2] == y, jnp.int32(t), kernel * kernel if first is None else first
        )
    # Padded input row p = stride * q + r receives from tap i = r + stride * d the gradient of
    # output row q - d. Gathered that way, one phase (r_h, r_w) of the input at a time, every
    # sum is at output resolution; the phases are interleaved at the end. (Autodiff of the
    # shifted maxima, or XLA's select-and-scatter, scatter instead, which is 2x slower.)
    rows, cols = -(-xp.shape[1] // stride), -(-xp.shape[2] // stride)
    zero = jnp.zeros((), dy.dtype)
    phase_rows = []
    for rh in range(stride):
        phase_row = []
        for rw in range(stride):
            total = jnp.zeros((n, rows, cols, c), dy.dtype)
            for i in range(rh, kernel, stride):
                for j in range(rw, kernel, stride):
                    di, dj = (i - rh) // stride, (j - rw) // stride
                    part = jnp.where(first == i * kernel + j, dy, zero)
                    config = [(0, 0, 0), (di, rows - out_h - di, 0), (dj, cols - out_w - dj, 0)]
                    total = total + jax.lax.pad(part, zero, [*config, (0, 0, 0)])
            phase_row.append(total)
        phase_rows.append(jnp.stack(phase_row, 3))  # n, rows, cols, r_w, c
    dxp = jnp.stack(phase_rows, 2).reshape(n, rows * stride, cols * stride, c)
    (top, _), (left, _) = pads
    return (dxp[:, top : top + x.shape[1], left : left + x.shape[2]],)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _native_max_pool(x: jax.Array, kernel: int, stride: int, pads) -> jax.Array:
    return native_kernels.max_pool_forward(x, kernel, stride, pads)[0]


def _native_max_pool_fwd(x, kernel, stride, pads):
    y, taps = native_kernels.max_pool_forward(x, kernel, stride, pads)
    return y, (taps, x.shape)


def _native_max_pool_bwd(kernel, stride, pads, residuals, dy):
    taps, x_shape = residuals
    return (native_kernels.max_pool_input_grad(dy, taps, x_shape, kernel, stride, pads),)


_native_max_pool.defvjp(_native_max_pool_fwd, _native_max_pool_bwd)


def max_pool(x: jax.Array, kernel: int, stride: int, padding: int) -> jax.Array:
    """Max pooling, NHWC, -inf padding: the FFI kernels (native/pool.cc: the winning tap of each
    window kept as a byte, a gathering backward pass) where they apply, else shifted maxima with
    a backward pass that gathers instead of scattering. Same values as XLA's; same gradients
    (ties to the first tap in window order), except that the kernels give a window's gradient
    to its NaN, as PyTorch does."""
    pads = ((padding, padding), (padding, padding))
    if native_kernels.max_pool_available(x.dtype) and padding < kernel:
        return _native_max_pool(x, kernel, stride, pads)
    return _max_pool(x, kernel, stride, pads)


def batch_norm_stats(x: jax.Array) -> tuple[jax.Array, jax.Array] | None:
    """(mean, fast variance) over every axis but the last in one pass of our kernel
    (native/batchnorm.cc), or None where it does not apply (not XLA:CPU float32)."""
    if native_kernels.batch_norm_available(x.dtype):
        return native_kernels.batch_norm_stats(x)
    return None


def batch_norm_grad_sums(
    x: jax.Array, dy: jax.Array, mean: jax.Array
) -> tuple[jax.Array, jax.Array] | None:
    """(sum dy, sum dy * (x - mean)) per channel in one pass of our kernel, or None."""
    if native_kernels.batch_norm_available(x.dtype) and dy.dtype == x.dtype:
        return native_kernels.batch_norm_grad_stats(x, dy, mean)
    return None
