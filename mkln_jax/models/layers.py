"""Layers shared by the backbones."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

# ImageNet statistics on a 0..1 scale; every backbone here was trained with them.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow SAME padding (the extra pixel goes after): (before, after)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


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
    formulation is ~3x faster there in training (see ../shared/facts.md) and equal to ~1e-7.
    """
    # NHWC / HWIO are fixed by nnx.Conv; newer flax also passes sharding hints we do not need.
    del dimension_numbers, precision, preferred_element_type, unused_kwargs
    channels = lhs.shape[-1]
    kh, kw, one, out_channels = rhs.shape
    if one != 1 or feature_group_count != channels or out_channels != channels:
        raise ValueError("shifted_depthwise_conv handles depthwise convolutions only")
    if any(d != 1 for d in (lhs_dilation or (1, 1))) or any(
        d != 1 for d in (rhs_dilation or (1, 1))
    ):
        raise ValueError("shifted_depthwise_conv does not support dilation")
    sh, sw = window_strides
    height, width = lhs.shape[1], lhs.shape[2]
    if isinstance(padding, str):
        if padding == "SAME":
            pads = (same_padding(height, kh, sh), same_padding(width, kw, sw))
        elif padding == "VALID":
            pads = ((0, 0), (0, 0))
        else:
            raise ValueError(f"unsupported padding {padding!r}")
    else:
        pads = tuple(tuple(p) for p in padding)
    x = jnp.pad(lhs, ((0, 0), pads[0], pads[1], (0, 0)))
    out_h = (x.shape[1] - kh) // sh + 1
    out_w = (x.shape[2] - kw) // sw + 1
    out = None
    for i in range(kh):
        for j in range(kw):
            window = jax.lax.slice(
                x,
                (0, i, j, 0),
                (x.shape[0], i + (out_h - 1) * sh + 1, j + (out_w - 1) * sw + 1, channels),
                (1, sh, sw, 1),
            )
            term = window * rhs[i, j, 0]
            out = term if out is None else out + term
    return out


def resolve_depthwise_impl(impl: str) -> str:
    """'auto' picks the shifted form on CPU and XLA's native depthwise conv elsewhere."""
    if impl == "auto":
        return "shifted" if jax.default_backend() == "cpu" else "xla"
    if impl not in ("shifted", "xla"):
        raise ValueError(f"depthwise_impl must be 'auto', 'shifted' or 'xla', got {impl!r}")
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
    depthwise: str = "xla",
    rngs: nnx.Rngs,
) -> nnx.Conv:
    """A 2-D convolution as PyTorch models define it.

    padding: "symmetric" (k // 2 on every side, PyTorch's usual choice), "same" (TensorFlow:
    the extra pixel goes after), "valid", or an int for explicit symmetric padding.
    Depthwise convolutions (groups == channels) use `depthwise` ("shifted" or "xla").
    """
    if padding == "symmetric":
        pad: Any = ((kernel // 2, kernel // 2),) * 2
    elif padding == "same":
        pad = "SAME"
    elif padding == "valid":
        pad = "VALID"
    else:
        pad = ((int(padding), int(padding)),) * 2
    is_depthwise = groups > 1 and groups == in_ch == out_ch
    conv_fn = (
        shifted_depthwise_conv
        if is_depthwise and depthwise == "shifted"
        else jax.lax.conv_general_dilated
    )
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


def batch_norm(features: int, epsilon: float, dtype: Any, rngs: nnx.Rngs) -> nnx.BatchNorm:
    """BatchNorm with PyTorch's default momentum (0.1 there = 0.9 here) and the given epsilon."""
    return nnx.BatchNorm(features, momentum=0.9, epsilon=epsilon, dtype=dtype, rngs=rngs)
