"""Xception (Chollet, CVPR 2017) as FaceForensics++ and DeepfakeBench use it: Cadene's
`pretrainedmodels` layout (also timm's `legacy_xception`), so their state dicts load by name.

Entry convolutions are unpadded; each block is a sequence of [ReLU] -> separable conv -> BN
steps with a 1x1 strided skip where the shape changes, and a 3x3 / 2 max-pool when strided.
`rep_layout` records the PyTorch Sequential index of every separable conv and BN, which is
where their weights sit in the state dict (`block1.rep.0.conv1.weight`, ...).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from mkln_jax.models import layers

BN_EPSILON = 1e-5
# (in, out, reps, stride, start_with_relu, grow_first) for block1..block12
BLOCKS = (
    (64, 128, 2, 2, False, True),
    (128, 256, 2, 2, True, True),
    (256, 728, 2, 2, True, True),
    *((728, 728, 3, 1, True, True),) * 8,
    (728, 1024, 2, 2, True, False),
)


class SeparableConv(nnx.Module):
    def __init__(self, in_ch, out_ch, *, dtype, impl, rngs):
        self.conv1 = layers.conv(
            in_ch, in_ch, 3, 1, groups=in_ch, padding=1, dtype=dtype, impl=impl, rngs=rngs
        )
        self.pointwise = layers.conv(in_ch, out_ch, 1, dtype=dtype, impl=impl, rngs=rngs)

    def __call__(self, x):
        return self.pointwise(self.conv1(x))


class Block(nnx.Module):
    def __init__(
        self, in_ch, out_ch, reps, stride, start_with_relu, grow_first, *, dtype, impl, rngs
    ):
        channels = []  # (in, out) of each separable conv, in order
        filters = in_ch
        if grow_first:
            channels.append((in_ch, out_ch))
            filters = out_ch
        channels += [(filters, filters)] * (reps - 1)
        if not grow_first:
            channels.append((in_ch, out_ch))
        self.sepconvs = nnx.List(
            [SeparableConv(a, b, dtype=dtype, impl=impl, rngs=rngs) for a, b in channels]
        )
        self.bns = nnx.List([layers.batch_norm(b, BN_EPSILON, dtype, rngs) for _, b in channels])
        # PyTorch's Sequential: [ReLU, Sep, BN] per step, the first ReLU dropped when the block
        # does not start with one; so Sep k sits at 3k + 1 - offset and its BN right after.
        offset = 0 if start_with_relu else 1
        self.rep_layout = tuple(
            (3 * k + 1 - offset, 3 * k + 2 - offset) for k in range(len(channels))
        )
        self.start_with_relu = start_with_relu
        self.stride = stride
        self.impl = impl
        if out_ch != in_ch or stride != 1:
            self.skip = layers.conv(in_ch, out_ch, 1, stride, dtype=dtype, impl=impl, rngs=rngs)
            self.skipbn = layers.batch_norm(out_ch, BN_EPSILON, dtype, rngs)
        else:
            self.skip = None

    def __call__(self, x, train: bool):
        h = x
        for k, (sep, bn) in enumerate(zip(self.sepconvs, self.bns, strict=True)):
            if k > 0 or self.start_with_relu:
                h = jax.nn.relu(h)
            h = bn(sep(h), use_running_average=not train)
        if self.stride != 1:
            h = layers.max_pool(h, 3, self.stride, 1, self.impl)
        if self.skip is None:
            return h + x
        return h + self.skipbn(self.skip(x), use_running_average=not train)


class Xception(nnx.Module):
    """images: float[B, H, W, C] (normalised) -> logits float32[B, K]. Native size 299."""

    feature_dim = 2048

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
        self.conv1 = layers.conv(
            in_channels, 32, 3, 2, padding="valid", dtype=dtype, impl=impl, rngs=rngs
        )
        self.bn1 = layers.batch_norm(32, BN_EPSILON, dtype, rngs)
        self.conv2 = layers.conv(32, 64, 3, padding="valid", dtype=dtype, impl=impl, rngs=rngs)
        self.bn2 = layers.batch_norm(64, BN_EPSILON, dtype, rngs)
        self.blocks = nnx.List([Block(*spec, dtype=dtype, impl=impl, rngs=rngs) for spec in BLOCKS])
        self.conv3 = SeparableConv(1024, 1536, dtype=dtype, impl=impl, rngs=rngs)
        self.bn3 = layers.batch_norm(1536, BN_EPSILON, dtype, rngs)
        self.conv4 = SeparableConv(1536, 2048, dtype=dtype, impl=impl, rngs=rngs)
        self.bn4 = layers.batch_norm(2048, BN_EPSILON, dtype, rngs)
        self.fc = nnx.Linear(2048, num_classes, dtype=dtype, rngs=rngs)

    def features(self, x: jax.Array, train: bool = False) -> jax.Array:
        ura = not train
        x = jax.nn.relu(self.bn1(self.conv1(x), use_running_average=ura))
        x = jax.nn.relu(self.bn2(self.conv2(x), use_running_average=ura))
        for block in self.blocks:
            x = block(x, train)
        x = jax.nn.relu(self.bn3(self.conv3(x), use_running_average=ura))
        x = jax.nn.relu(self.bn4(self.conv4(x), use_running_average=ura))
        return jnp.mean(x, axis=(1, 2))

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        return self.head(self.features(x, train))

    def head(self, features: jax.Array) -> jax.Array:
        """Pooled features -> logits float32[B, K]."""
        return self.fc(features).astype(jnp.float32)
