"""Detectors built from zoo backbones: RGB stream, frequency stream, two-stream fusion, and the
pair of peers trained by mutual learning.

- RGB stream: a zoo backbone on the (normalised) image.
- Frequency stream: F3-Net's frequency-aware decomposition (fixed band masks + learnable filters,
  12 channels, float32) in front of a backbone whose stem takes 12 channels.
- Two-stream: an RGB backbone and a frequency stream side by side; their pooled features are
  concatenated and one linear head classifies them (late fusion).
- Peers: two detectors (by default an RGB one and a frequency one) trained together by Deep
  Mutual Learning; each normalises its own input, so the pair takes images in [0, 1]. Deployed as
  one of them or as their ensemble (mean of logits), chosen by `deploy`.

Every detector has `features(x, train)`, `head(features)` and `__call__ = head(features)`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from mkln_jax.frequency import FrequencyAwareDecomposition

STREAMS = ("rgb", "frequency", "two_stream")
DEPLOY = ("rgb", "frequency", "ensemble")


class FrequencyStream(nnx.Module):
    def __init__(
        self,
        backbone: nnx.Module,
        image_size: int,
        *,
        dtype: Any,
        bands: str = "ours",
        rngs: nnx.Rngs,
    ):
        self.fad = FrequencyAwareDecomposition(image_size, dtype=dtype, bands=bands, rngs=rngs)
        self.backbone = backbone
        self.feature_dim = backbone.feature_dim

    def features(self, x: jax.Array, train: bool = False) -> jax.Array:
        return self.backbone.features(self.fad(x), train)

    def head(self, features: jax.Array) -> jax.Array:
        return self.backbone.head(features)

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        return self.head(self.features(x, train))


class TwoStream(nnx.Module):
    def __init__(
        self,
        rgb: nnx.Module,
        frequency: FrequencyStream,
        num_classes: int,
        *,
        dtype: Any,
        rngs: nnx.Rngs,
    ):
        self.rgb = rgb
        self.frequency = frequency
        self.feature_dim = rgb.feature_dim + frequency.feature_dim
        self.classifier = nnx.Linear(self.feature_dim, num_classes, dtype=dtype, rngs=rngs)

    def features(self, x: jax.Array, train: bool = False) -> jax.Array:
        return jnp.concatenate(
            [self.rgb.features(x, train), self.frequency.features(x, train)], axis=-1
        )

    def head(self, features: jax.Array) -> jax.Array:
        return self.classifier(features).astype(jnp.float32)

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        return self.head(self.features(x, train))


class Peers(nnx.Module):
    """Two detectors trained by mutual learning. Input: images in [0, 1] (each peer applies its
    own normalisation). `peer_logits` gives both peers' logits; calling the module gives the
    deployed prediction."""

    def __init__(
        self,
        first: nnx.Module,
        second: nnx.Module,
        norms: tuple[tuple[tuple[float, ...], tuple[float, ...]], ...],
        deploy: str = "rgb",
    ):
        if deploy not in DEPLOY:
            raise ValueError(f"deploy must be one of {DEPLOY}, got {deploy!r}")
        self.first = first
        self.second = second
        self.norms = tuple((tuple(m), tuple(s)) for m, s in norms)
        self.deploy = deploy

    def _normalised(self, x: jax.Array, index: int, dtype) -> jax.Array:
        mean, std = self.norms[index]
        return ((x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)).astype(dtype)

    def peer_logits(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
        dtype = x.dtype
        x = x.astype(jnp.float32)
        return (
            self.first(self._normalised(x, 0, dtype), train),
            self.second(self._normalised(x, 1, dtype), train),
        )

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if self.deploy == "ensemble":
            first, second = self.peer_logits(x, train)
            return 0.5 * (first + second)
        dtype = x.dtype
        index = 0 if self.deploy == "rgb" else 1
        peer = self.first if index == 0 else self.second
        return peer(self._normalised(x.astype(jnp.float32), index, dtype), train)


class FeatureProjectors(nnx.Module):
    """One linear projection per teacher: student features -> that teacher's feature space."""

    def __init__(
        self, in_dim: int, out_dims: tuple[int, ...], *, dtype: Any = jnp.float32, rngs: nnx.Rngs
    ):
        self.layers = nnx.List([nnx.Linear(in_dim, d, dtype=dtype, rngs=rngs) for d in out_dims])

    def __call__(self, features: jax.Array) -> tuple[jax.Array, ...]:
        return tuple(layer(features).astype(jnp.float32) for layer in self.layers)
