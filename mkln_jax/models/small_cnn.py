"""A small plain CNN: the default student. Cheap on every backend (no depthwise convolutions)."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from mkln_jax.backends.cpu import ops as cpu_ops
from mkln_jax.models import layers as zoo_layers


class ConvBNReLU(nnx.Module):
    def __init__(
        self, in_ch: int, out_ch: int, stride: int, *, dtype: Any, impl: str, rngs: nnx.Rngs
    ):
        # "cpu": our FFI convolution kernels where they apply (cpu_ops.dense_conv), small maps
        # too: their results do not depend on the thread or process layout, XLA's can (two
        # processes then train the default student differently from one in the last bits).
        conv = (
            functools.partial(cpu_ops.dense_conv, small_maps_on_kernels=True)
            if impl == "cpu"
            else jax.lax.conv_general_dilated
        )
        self.conv = nnx.Conv(
            in_ch,
            out_ch,
            (3, 3),
            strides=stride,
            use_bias=False,
            dtype=dtype,
            conv_general_dilated=conv,
            rngs=rngs,
        )
        self.bn = zoo_layers.batch_norm(out_ch, 1e-5, dtype, rngs)

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        return jax.nn.relu(self.bn(self.conv(x), use_running_average=not train))


class SmallCNN(nnx.Module):
    """Stem at full resolution (forgery traces are high-frequency), then stages that halve.

    images: float[B, H, W, C] (normalised) -> logits float32[B, K].
    """

    def __init__(
        self,
        num_classes: int = 2,
        *,
        in_channels: int = 3,
        widths: tuple[int, ...] = (32, 64, 128, 256),
        dtype: Any = jnp.float32,
        conv_impl: str = "auto",
        rngs: nnx.Rngs,
    ):
        impl = zoo_layers.resolve_conv_impl(conv_impl)
        self.stem = ConvBNReLU(in_channels, widths[0] // 2, 1, dtype=dtype, impl=impl, rngs=rngs)
        layers = []
        in_ch = widths[0] // 2
        for width in widths:
            layers.append(ConvBNReLU(in_ch, width, 2, dtype=dtype, impl=impl, rngs=rngs))
            layers.append(ConvBNReLU(width, width, 1, dtype=dtype, impl=impl, rngs=rngs))
            in_ch = width
        self.layers = nnx.List(layers)
        self.feature_dim = in_ch
        self.classifier = nnx.Linear(in_ch, num_classes, dtype=dtype, rngs=rngs)

    def features(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Pooled features: float[B, widths[-1]]."""
        x = self.stem(x, train)
        for layer in self.layers:
            x = layer(x, train)
        return jnp.mean(x, axis=(1, 2))

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        return self.head(self.features(x, train))

    def head(self, features: jax.Array) -> jax.Array:
        """Pooled features -> logits float32[B, K]."""
        return self.classifier(features).astype(jnp.float32)
