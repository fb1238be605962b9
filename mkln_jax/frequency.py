"""DCT-II as matrix products, F3-Net frequency bands, and frequency-texture augmentation.

Everything here is pure `jnp` and runs inside the jitted train step. The DCT is the orthonormal
DCT-II written as ``D @ x @ D.T`` (a fixed matrix product maps to the matrix units of TPUs and
GPUs); it is computed in float32 whatever the compute dtype of the models.

Band split follows F3-Net (Qian et al., ECCV 2020): on the index sum ``i + j`` of an N x N spectrum,
low = [0, N/2.82], middle = (N/2.82, N/2], high = (N/2, 2N]. The three bands partition the spectrum,
so their inverse transforms add up to the image ("all").
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

BAND_NAMES = ("low", "middle", "high")


@functools.lru_cache(maxsize=32)
def dct_matrix(size: int) -> np.ndarray:
    """Orthonormal DCT-II matrix ``D[i, j] = c_i cos(pi (j + 0.5) i / N)``: float64[N, N]."""
    n = np.arange(size)
    matrix = np.cos(np.pi * (n[None, :] + 0.5) * n[:, None] / size)
    scale = np.full((size, 1), np.sqrt(2.0 / size))
    scale[0, 0] = np.sqrt(1.0 / size)
    return matrix * scale


def dct2(x: jax.Array) -> jax.Array:
    """2-D orthonormal DCT-II over the two axes before the channel axis.

    x: float[..., H, W, C] -> float32[..., H, W, C]; equals scipy.fft.dctn(x, axes=(-3, -2),
    norm="ortho").
    """
    x = x.astype(jnp.float32)
    d_h = jnp.asarray(dct_matrix(x.shape[-3]), jnp.float32)
    d_w = jnp.asarray(dct_matrix(x.shape[-2]), jnp.float32)
    hp = jax.lax.Precision.HIGHEST
    return jnp.einsum("ih,...hwc,jw->...ijc", d_h, x, d_w, precision=hp)


def idct2(y: jax.Array) -> jax.Array:
    """Inverse of `dct2` (the transpose, since D is orthonormal): float32[..., H, W, C]."""
    y = y.astype(jnp.float32)
    d_h = jnp.asarray(dct_matrix(y.shape[-3]), jnp.float32)
    d_w = jnp.asarray(dct_matrix(y.shape[-2]), jnp.float32)
    hp = jax.lax.Precision.HIGHEST
    return jnp.einsum("ih,...ijc,jw->...hwc", d_h, y, d_w, precision=hp)


@functools.lru_cache(maxsize=32)
def band_masks(size: int) -> np.ndarray:
    """F3-Net's fixed band masks on the index sum i + j: float32[3, N, N] (low, middle, high)."""
    index_sum = np.arange(size)[:, None] + np.arange(size)[None, :]
    low = index_sum <= size / 2.82
    middle = (index_sum > size / 2.82) & (index_sum <= size / 2)
    high = index_sum > size / 2
    return np.stack([low, middle, high]).astype(np.float32)


def band_decompose(x: jax.Array) -> jax.Array:
    """Split images into F3-Net frequency bands, each back in the pixel domain.

    x: float[B, N, N, C] -> float32[B, 3, N, N, C] (low, middle, high); the sum over axis 1
    gives back x (the "all" band).
    """
    if x.shape[-3] != x.shape[-2]:
        raise ValueError(f"band_decompose needs square images, got {x.shape[-3]}x{x.shape[-2]}")
    masks = jnp.asarray(band_masks(x.shape[-2]))[None, :, :, :, None]
    spectrum = dct2(x)[:, None]
    return idct2(spectrum * masks)


def fad_features(x: jax.Array) -> jax.Array:
    """F3-Net frequency-aware decomposition with fixed masks: float32[B, N, N, 4 C].

    Channels are the low, middle, high and all bands in the pixel domain (12 channels for RGB).
    """
    bands = band_decompose(x)
    all_band = jnp.sum(bands, axis=1, keepdims=True)
    stacked = jnp.concatenate([bands, all_band], axis=1)  # [B, 4, N, N, C]
    return jnp.moveaxis(stacked, 1, -2).reshape(*x.shape[:-1], 4 * x.shape[-1])


def frequency_augment(
    key: jax.Array,
    x: jax.Array,
    *,
    prob: float | jax.Array,
    band_drop_prob: float | jax.Array,
    jitter: float | jax.Array,
) -> jax.Array:
    """Frequency-texture augmentation: re-weight F3-Net bands per sample, sometimes drop one.

    For each image (with probability `prob`), each band gets a gain in [1 - jitter, 1 + jitter];
    the middle and high bands are each zeroed with probability `band_drop_prob` (the low band
    carries the face itself and is never dropped). Since the bands partition the spectrum, the
    re-weighted sum is one inverse DCT of the spectrum times a per-image gain map.
    x: float[B, N, N, C] -> float32[B, N, N, C]. Deterministic given `key`.
    """
    batch = x.shape[0]
    prob = jnp.asarray(prob, jnp.float32)
    band_drop_prob = jnp.asarray(band_drop_prob, jnp.float32)
    jitter = jnp.asarray(jitter, jnp.float32)
    k_apply, k_gain, k_drop = jax.random.split(key, 3)
    gains = jax.random.uniform(
        k_gain, (batch, 3), minval=1.0 - jitter, maxval=1.0 + jitter, dtype=jnp.float32
    )
    drop = jax.random.bernoulli(k_drop, band_drop_prob, (batch, 3))
    drop = drop.at[:, 0].set(False)
    gains = jnp.where(drop, 0.0, gains)
    apply = jax.random.bernoulli(k_apply, prob, (batch, 1))
    gains = jnp.where(apply, gains, 1.0)
    gain_map = jnp.einsum("bk,khw->bhw", gains, jnp.asarray(band_masks(x.shape[-2])))
    return idct2(dct2(x) * gain_map[..., None])
