"""MobileNetV2 (Sandler et al., CVPR 2018) laid out like torchvision's `mobilenet_v2`."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from mkln_jax.models import layers

# (expand_ratio t, channels c, repeats n, stride s), the paper's Table 2.
SETTINGS = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
BN_EPSILON = 1e-5


class InvertedResidual(nnx.Module):
    def __init__(self, in_ch, out_ch, stride, expand_ratio, *, dtype, impl, rngs):
        mid = in_ch * expand_ratio
        self.expand = expand_ratio != 1
        if self.expand:
            self.expand_conv = layers.conv(in_ch, mid, 1, dtype=dtype, impl=impl, rngs=rngs)
            self.expand_bn = layers.batch_norm(mid, BN_EPSILON, dtype, rngs)
        self.depthwise_conv = layers.conv(
            mid, mid, 3, stride, groups=mid, dtype=dtype, impl=impl, rngs=rngs
        )
        self.depthwise_bn = layers.batch_norm(mid, BN_EPSILON, dtype, rngs)
        self.project_conv = layers.conv(mid, out_ch, 1, dtype=dtype, impl=impl, rngs=rngs)
        self.project_bn = layers.batch_norm(out_ch, BN_EPSILON, dtype, rngs)
        self.skip = stride == 1 and in_ch == out_ch

    def __call__(self, x, train: bool):
        ura = not train
        h = x
        if self.expand:
            h = jax.nn.relu6(self.expand_bn(self.expand_conv(h), use_running_average=ura))
        h = jax.nn.relu6(self.depthwise_bn(self.depthwise_conv(h), use_running_average=ura))
        h = self.project_bn(self.project_conv(h), use_running_average=ura)
        return h + x if self.skip else h


class MobileNetV2(nnx.Module):
    """images: float[B, H, W, C] (normalised) -> logits float32[B, K]."""

    feature_dim = 1280

    def __init__(
        self,
        num_classes: int = 1000,
        *,
        in_channels: int = 3,
        dtype: Any = jnp.float32,
        conv_impl: str = "auto",
        rngs: nnx.Rngs,
    ):
        impl = layers.resolve_conv_impl(conv_impl)
        self.stem_conv = layers.conv(in_channels, 32, 3, 2, dtype=dtype, impl=impl, rngs=rngs)
        self.stem_bn = layers.batch_norm(32, BN_EPSILON, dtype, rngs)
        blocks, in_ch = [], 32
        for t, c, n, s in SETTINGS:
            for i in range(n):
                blocks.append(
                    InvertedResidual(
                        in_ch, c, s if i == 0 else 1, t, dtype=dtype, impl=impl, rngs=rngs
                    )
                )
                in_ch = c
        self.blocks = nnx.List(blocks)
        self.head_conv = layers.conv(in_ch, 1280, 1, dtype=dtype, impl=impl, rngs=rngs)
        self.head_bn = layers.batch_norm(1280, BN_EPSILON, dtype, rngs)
        self.classifier = nnx.Linear(1280, num_classes, dtype=dtype, rngs=rngs)

    def features(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = jax.nn.relu6(self.stem_bn(self.stem_conv(x), use_running_average=not train))
        for block in self.blocks:
            x = block(x, train)
        x = jax.nn.relu6(self.head_bn(self.head_conv(x), use_running_average=not train))
        return jnp.mean(x, axis=(1, 2))

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        return self.head(self.features(x, train))

    def head(self, features: jax.Array) -> jax.Array:
        """Pooled features -> logits float32[B, K]."""
        return self.classifier(features).astype(jnp.float32)
