"""The zoo's operations: one small interface (`conv`, `max_pool`, `batch_norm`) that every
backbone calls. `impl="xla"` is plain Flax / lax; `impl="cpu"` (what "auto" picks on XLA:CPU)
hands depthwise, 1x1 and dense convolutions, max pooling and BatchNorm's sums to the CPU
formulations in `mkln_jax/backends/cpu/ops.py`. BatchNorm's train-mode backward pass here is
our own on every backend (it keeps x and per-channel vectors, where autodiff kept x - mean)."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from mkln_jax.backends.cpu import ops as cpu_ops

# ImageNet statistics on a 0..1 scale; every backbone here was trained with them.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def max_pool(x: jax.Array, kernel: int, stride: int, padding: int, impl: str = "xla") -> jax.Array:
    """Max pooling over square windows, NHWC, padding with -inf on every side; impl "cpu": the
    CPU formulation (backends/cpu/ops.py), the same values and gradients."""
    if impl == "cpu":
        return cpu_ops.max_pool(x, kernel, stride, padding)
    pads = ((padding, padding), (padding, padding))
    return nnx.max_pool(x, (kernel, kernel), strides=(stride, stride), padding=pads)


def resolve_conv_impl(impl: str) -> str:
    """'auto' picks the CPU formulations on CPU and XLA's own convolutions elsewhere."""
    if impl == "auto":
        return "cpu" if jax.default_backend() == "cpu" else "xla"
    if impl not in ("cpu", "xla"):
        raise ValueError(f"conv_impl must be 'auto', 'cpu' or 'xla', got {impl!r}")
    return impl


def conv(
    in_ch: int,
    out_ch: int,
    kernel: int,
    stride: int = 1,
    *,
    groups: int = 1,
    padding: str | int = "symmetric",
    bias: bool = False,
    dtype: Any = jnp.float32,
    impl: str = "xla",
    rngs: nnx.Rngs,
) -> nnx.Conv:
    """A 2-D convolution as PyTorch models define it.

    padding: "symmetric" (k // 2 on every side, PyTorch's usual choice), "same" (TensorFlow:
    the extra pixel goes after), "valid", or an int for explicit symmetric padding.
    impl "cpu" computes depthwise convolutions (groups == channels) as shifted multiply-adds
    and 1x1 convolutions as matrix products; "xla" leaves every convolution to XLA.
    """
    if padding == "symmetric":
        pad: Any = ((kernel // 2, kernel // 2),) * 2
    elif padding == "same":
        pad = "SAME"
    elif padding == "valid":
        pad = "VALID"
    else:
        pad = ((int(padding), int(padding)),) * 2
    conv_fn = jax.lax.conv_general_dilated
    if impl == "cpu":
        if groups > 1 and groups == in_ch == out_ch:
            conv_fn = cpu_ops.shifted_depthwise_conv
        elif kernel == 1 and groups == 1:
            conv_fn = cpu_ops.pointwise_conv
        elif groups == 1:
            conv_fn = cpu_ops.dense_conv
    elif impl != "xla":
        raise ValueError(f"impl must be 'cpu' or 'xla', got {impl!r}")
    return nnx.Conv(
        in_ch,
        out_ch,
        (kernel, kernel),
        strides=stride,
        padding=pad,
        feature_group_count=groups,
        use_bias=bias,
        dtype=dtype,
        conv_general_dilated=conv_fn,
        rngs=rngs,
    )


def _batch_stats(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    # flax's fast variance: E[x^2] - E[x]^2, clipped at 0; on XLA:CPU both sums in one pass of
    # our kernel, else in XLA's reductions.
    stats = cpu_ops.batch_norm_stats(x)
    if stats is not None:
        return stats
    axes = tuple(range(x.ndim - 1))
    mean = jnp.mean(x, axes)
    return mean, jnp.maximum(jnp.mean(x * x, axes) - mean * mean, 0.0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm_train(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float):
    """Train-mode BatchNorm over every axis but the last: (y, batch mean, batch variance), the
    same function as flax's BatchNorm (fast variance). Its backward pass keeps only x and
    per-channel vectors: XLA saved x - mean for autodiff's, a whole extra tensor per layer."""
    mean, var = _batch_stats(x)
    return (x - mean) * (jax.lax.rsqrt(var + epsilon) * scale) + bias, mean, var


def _batch_norm_train_fwd(x, scale, bias, epsilon):
    mean, var = _batch_stats(x)
    rstd = jax.lax.rsqrt(var + epsilon)
    y = (x - mean) * (rstd * scale) + bias
    return (y, mean, var), (x, mean, rstd, scale)


def _batch_norm_train_bwd(epsilon, residuals, cotangents):
    del epsilon
    x, mean, rstd, scale = residuals
    dy, dmean, dvar = cotangents
    axes = tuple(range(x.ndim - 1))
    n = x.size // x.shape[-1]
    centred = x - mean  # recomputed inside the fusions below, never stored
    sums = cpu_ops.batch_norm_grad_sums(x, dy, mean)
    if sums is not None:
        dbias, dy_centred = sums
    else:
        dbias = jnp.sum(dy, axes)
        dy_centred = jnp.sum(dy * centred, axes)
    dscale = dy_centred * rstd
    # dx = d/dx of y (through x, the mean and the variance) plus the statistics' own cotangents
    # (zero in training: they only feed the running averages): per channel, a * dy + b * (x -
    # mean) + c.
    a = scale * rstd
    b = 2.0 * dvar / n - a * rstd * rstd * dy_centred / n
    c = (dmean - a * dbias) / n
    return a * dy + b * centred + c, dscale, dbias


batch_norm_train.defvjp(_batch_norm_train_fwd, _batch_norm_train_bwd)


class BatchNorm(nnx.BatchNorm):
    """nnx.BatchNorm (same parameters, statistics and results) whose train-mode pass is
    `batch_norm_train`."""

    def __call__(self, x, use_running_average: bool | None = None, *, mask=None):
        ura = self.use_running_average if use_running_average is None else use_running_average
        plain = (
            ura
            or mask is not None
            or self.axis_name is not None
            or self.axis not in (-1, x.ndim - 1)
            or self.scale is None
            or self.bias is None
            or not x.dtype == self.scale.dtype == (self.dtype or x.dtype)
        )
        if plain:
            return super().__call__(x, use_running_average=use_running_average, mask=mask)
        y, mean, var = batch_norm_train(x, self.scale[...], self.bias[...], self.epsilon)
        stop = jax.lax.stop_gradient
        self.mean[...] = stop(self.momentum * self.mean[...] + (1 - self.momentum) * mean)
        self.var[...] = stop(self.momentum * self.var[...] + (1 - self.momentum) * var)
        return y


def batch_norm(features: int, epsilon: float, dtype: Any, rngs: nnx.Rngs) -> nnx.BatchNorm:
    """BatchNorm with PyTorch's default momentum (0.1 there = 0.9 here) and the given epsilon."""
    return BatchNorm(features, momentum=0.9, epsilon=epsilon, dtype=dtype, rngs=rngs)
