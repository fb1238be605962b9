"""ResNet-18/34/50 (He et al., CVPR 2016) laid out like torchvision's, so its weights (and
timm's `resnet*`, same names) load one to one."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from mkln_jax.models import layers

DEPTHS = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3), "resnet50": (3, 4, 6, 3)}
BN_EPSILON = 1e-5


class BasicBlock(nnx.Module):
    expansion = 1

    def __init__(self, in_ch: int, width: int, stride: int, *, dtype, impl, rngs):
        out_ch = width * self.expansion
        self.conv1 = layers.conv(in_ch, width, 3, stride, dtype=dtype, impl=impl, rngs=rngs)
        self.bn1 = layers.batch_norm(width, BN_EPSILON, dtype, rngs)
        self.conv2 = layers.conv(width, width, 3, dtype=dtype, impl=impl, rngs=rngs)
        self.bn2 = layers.batch_norm(out_ch, BN_EPSILON, dtype, rngs)
        self.downsample = _downsample(in_ch, out_ch, stride, dtype, impl, rngs)

    def __call__(self, x, train: bool):
        ura = not train
        h = jax.nn.relu(self.bn1(self.conv1(x), use_running_average=ura))
        h = self.bn2(self.conv2(h), use_running_average=ura)
        return jax.nn.relu(h + _shortcut(self.downsample, x, train))


class Bottleneck(nnx.Module):
    expansion = 4

    def __init__(self, in_ch: int, width: int, stride: int, *, dtype, impl, rngs):
        out_ch = width * self.expansion
        self.conv1 = layers.conv(in_ch, width, 1, dtype=dtype, impl=impl, rngs=rngs)
        self.bn1 = layers.batch_norm(width, BN_EPSILON, dtype, rngs)
        # stride on the 3x3 conv (torchvision's "ResNet v1.5")
        self.conv2 = layers.conv(width, width, 3, stride, dtype=dtype, impl=impl, rngs=rngs)
        self.bn2 = layers.batch_norm(width, BN_EPSILON, dtype, rngs)
        self.conv3 = layers.conv(width, out_ch, 1, dtype=dtype, impl=impl, rngs=rngs)
        self.bn3 = layers.batch_norm(out_ch, BN_EPSILON, dtype, rngs)
        self.downsample = _downsample(in_ch, out_ch, stride, dtype, impl, rngs)

    def __call__(self, x, train: bool):
        ura = not train
        h = jax.nn.relu(self.bn1(self.conv1(x), use_running_average=ura))
        h = jax.nn.relu(self.bn2(self.conv2(h), use_running_average=ura))
        h = self.bn3(self.conv3(h), use_running_average=ura)
        return jax.nn.relu(h + _shortcut(self.downsample, x, train))


def _downsample(in_ch, out_ch, stride, dtype, impl, rngs):
    if stride == 1 and in_ch == out_ch:
        return None
    return nnx.List(
        [
            layers.conv(in_ch, out_ch, 1, stride, dtype=dtype, impl=impl, rngs=rngs),
            layers.batch_norm(out_ch, BN_EPSILON, dtype, rngs),
        ]
    )


def _shortcut(downsample, x, train: bool):
    if downsample is None:
        return x
    conv, bn = downsample
    return bn(conv(x), use_running_average=not train)


class ResNet(nnx.Module):
    """images: float[B, H, W, C] (normalised) -> logits float32[B, K]."""

    def __init__(
        self,
        num_classes: int = 1000,
        *,
        variant: str = "resnet18",
        in_channels: int = 3,
        dtype: Any = jnp.float32,
        conv_impl: str = "auto",
        rngs: nnx.Rngs,
    ):
        impl = layers.resolve_conv_impl(conv_impl)
        block_cls = Bottleneck if variant == "resnet50" else BasicBlock
        self.variant = variant
        self.impl = impl
        self.conv1 = layers.conv(in_channels, 64, 7, 2, dtype=dtype, impl=impl, rngs=rngs)
        self.bn1 = layers.batch_norm(64, BN_EPSILON, dtype, rngs)
        in_ch = 64
        stages = []
        for i, depth in enumerate(DEPTHS[variant]):
            width = 64 * 2**i
            blocks = []
            for j in range(depth):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(block_cls(in_ch, width, stride, dtype=dtype, impl=impl, rngs=rngs))
                in_ch = width * block_cls.expansion
            stages.append(nnx.List(blocks))
        self.layers = nnx.List(stages)
        self.feature_dim = in_ch
        self.fc = nnx.Linear(in_ch, num_classes, dtype=dtype, rngs=rngs)

    def features(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = jax.nn.relu(self.bn1(self.conv1(x), use_running_average=not train))
        x = layers.max_pool(x, 3, 2, 1, self.impl)
        for stage in self.layers:
            for block in stage:
                x = block(x, train)
        return jnp.mean(x, axis=(1, 2))

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        return self.head(self.features(x, train))

    def head(self, features: jax.Array) -> jax.Array:
        """Pooled features -> logits float32[B, K]."""
        return self.fc(features).astype(jnp.float32)
