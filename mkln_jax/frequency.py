"""DCT-II as matrix products, F3-Net frequency bands, and frequency-texture augmentation.

Everything here is pure `jnp` and runs inside the jitted train step. The DCT is the orthonormal
DCT-II written as ``D @ x @ D.T`` (a fixed matrix product maps to the matrix units of TPUs and
GPUs); it is computed in float32 whatever the compute dtype of the models.

Band split follows F3-Net (Qian et al., ECCV 2020): on the index sum ``i + j`` of an N x N spectrum,
low = [0, N/2.82], middle = (N/2.82, N/2], high = (N/2, 2N]. The three bands partition the spectrum,
so their inverse transforms add up to the image ("all").

Two transform domains: the full image (one N x N spectrum) and 8 x 8 blocks (JPEG's grid; each
block's spectrum in place of its pixels, so block-domain masks are the 8 x 8 masks tiled).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

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


def block_dct2(x: jax.Array, block: int = 8) -> jax.Array:
    """Orthonormal DCT-II of each `block` x `block` tile, coefficients stored in place of the
    tile's pixels (the layout of JPEG's DCT). x: float[..., H, W, C], H and W multiples of
    `block` -> float32[..., H, W, C]."""
    return _blockwise(dct2, x, block)


def block_idct2(y: jax.Array, block: int = 8) -> jax.Array:
    """Inverse of `block_dct2`."""
    return _blockwise(idct2, y, block)


def _blockwise(transform, x: jax.Array, block: int) -> jax.Array:
    *lead, h, w, c = x.shape
    if h % block or w % block:
        raise ValueError(f"block DCT needs H and W divisible by {block}, got {h}x{w}")
    tiles = x.reshape(*lead, h // block, block, w // block, block, c)
    tiles = jnp.swapaxes(tiles, -4, -3)  # [..., H/b, W/b, b, b, C]
    out = transform(tiles)
    return jnp.swapaxes(out, -4, -3).reshape(*lead, h, w, c)


def spectrum_masks(height: int, width: int, block: int = 0) -> np.ndarray:
    """Band masks over a whole spectrum: float32[3, H, W] (low, middle, high).

    block = 0: F3-Net's masks of the full H x W spectrum (H must equal W); block = b: the b x b
    masks tiled over the image, matching `block_dct2`'s layout.
    """
    if block:
        if height % block or width % block:
            raise ValueError(f"{height}x{width} is not a multiple of the {block}-pixel block")
        return np.tile(band_masks(block), (1, height // block, width // block))
    if height != width:
        raise ValueError(f"full-image bands need square images, got {height}x{width}")
    return band_masks(height)


AUGMENT_DEFAULTS = {
    "prob": 0.0,  # chance that an image is augmented at all (the gate of everything below)
    "jitter_prob": 1.0,  # band amplitude jitter: chance, and gains in [1 - jitter, 1 + jitter]
    "jitter": 0.0,
    "band_drop_prob": 0.0,  # random band drop: chance per middle / high band, and how much of
    "drop_strength": 1.0,  # the band goes (1 = zeroed)
    "noise_prob": 0.0,  # high-frequency noise injection: chance, and the std of Gaussian noise
    "noise_std": 0.0,  # added to each high-band coefficient (in [0, 1] pixel units)
    "mix_prob": 0.0,  # low/high-pass mixing: chance, and the weight of another same-label
    "mix_strength": 0.0,  # image's middle + high bands blended into this one's
}


# Mixing partners are drawn within consecutive groups of this many images. A device's shard of
# the batch is a run of consecutive rows, so while the per-device batch is a multiple of the
# group, partners never cross devices and the step moves no image between them (a partner from
# anywhere in the global batch made every device gather the whole batch's spectra).
MIX_GROUP = 8


def frequency_augment(
    key: jax.Array,
    x: jax.Array,
    *,
    labels: jax.Array | None = None,
    block: int = 0,
    mix: bool = True,
    noise: bool = True,
    **strengths: float | jax.Array,
) -> jax.Array:
    """Frequency-texture augmentation: four operations on the F3-Net bands, one transform pair.

    Each image is augmented with probability `prob`; then, each with its own probability:
      - band amplitude jitter: every band's gain drawn from [1 - jitter, 1 + jitter];
      - random band drop: the middle and high bands each lose `drop_strength` of their amplitude
        with probability `band_drop_prob` (the low band carries the face and is never dropped);
      - high-frequency noise injection: Gaussian noise of std `noise_std` on the high band;
      - low/high-pass mixing: the middle and high bands become (1 - s) own + s partner, where the
        partner is another image of its group of MIX_GROUP consecutive images (a random cyclic
        order within each group) with the same label (`labels`; without labels, or when the
        partner's label differs, the image is left unmixed), s = `mix_strength`.
    Strength 0 (or probability 0) makes an operation the identity. Keyword names and defaults:
    AUGMENT_DEFAULTS; all may be traced scalars. `mix` / `noise` = False leave those two
    operations out of the program (static: callers pass False where their probability is 0).
    `block` = 0 works on the full-image spectrum, 8 on JPEG's 8 x 8 block spectra.
    x: float[B, H, W, C] -> float32[B, H, W, C], computed in float32 whatever x's dtype.
    Deterministic given `key`.
    """
    unknown = set(strengths) - set(AUGMENT_DEFAULTS)
    if unknown:
        raise TypeError(f"unknown augmentation settings {sorted(unknown)}")
    hp = {k: jnp.asarray(strengths.get(k, v), jnp.float32) for k, v in AUGMENT_DEFAULTS.items()}
    batch, height, width = x.shape[0], x.shape[-3], x.shape[-2]
    keys = jax.random.split(key, 8)
    masks = jnp.asarray(spectrum_masks(height, width, block))  # [3, H, W]
    forward, inverse = (
        (functools.partial(block_dct2, block=block), functools.partial(block_idct2, block=block))
        if block
        else (dct2, idct2)
    )

    def chance(k, p, shape=(batch, 1)):
        return jax.random.bernoulli(k, p, shape)

    apply = chance(keys[0], hp["prob"])  # [B, 1]
    jitter = hp["jitter"] * chance(keys[1], hp["jitter_prob"])
    gains = 1.0 + jitter * jax.random.uniform(keys[2], (batch, 3), minval=-1.0, maxval=1.0)
    drop = chance(keys[3], hp["band_drop_prob"], (batch, 3)).at[:, 0].set(False)
    gains = jnp.where(drop, gains * (1.0 - hp["drop_strength"]), gains)
    gains = jnp.where(apply, gains, 1.0)
    gain_map = jnp.einsum("bk,khw->bhw", gains, masks)[..., None]

    spectrum = forward(x)
    if mix and labels is not None:
        partner = group_partners(keys[4], batch)  # [B / G, G, G] one-hot
        mixed = _in_groups(partner, spectrum)
        same = _in_groups(partner, labels.astype(jnp.float32)) == labels
        chosen = apply[:, 0] & chance(keys[5], hp["mix_prob"])[:, 0] & same
        weight = (hp["mix_strength"] * chosen.astype(jnp.float32))[:, None, None, None]
        upper = (masks[1] + masks[2])[None, :, :, None]  # middle + high
        spectrum = spectrum + weight * upper * (mixed - spectrum)
    spectrum = spectrum * gain_map
    if noise:
        noisy = (apply[:, 0] & chance(keys[6], hp["noise_prob"])[:, 0]).astype(jnp.float32)
        draw = jax.random.normal(keys[7], spectrum.shape, jnp.float32)
        spectrum = spectrum + (
            draw * (hp["noise_std"] * noisy)[:, None, None, None] * masks[2][None, :, :, None]
        )
    return inverse(spectrum)


def group_partners(key: jax.Array, batch: int, group: int = MIX_GROUP) -> jax.Array:
    """Each image's mixing partner within its group of `group` consecutive images (the batch's
    largest divisor not above it): a random cyclic order per group, each image partnered with
    the next in it, so nobody is its own partner. float32[B / g, g, g], one-hot rows."""
    group = max(d for d in range(1, min(group, batch) + 1) if batch % d == 0)
    keys = jax.random.split(key, batch // group)
    order = jax.vmap(lambda k: jax.random.permutation(k, group))(keys)  # [B / g, g]
    following = jnp.roll(order, -1, axis=1)
    partner = jax.vmap(lambda o, f: jnp.zeros((group,), jnp.int32).at[o].set(f))(order, following)
    return jax.nn.one_hot(partner, group, dtype=jnp.float32)


def _in_groups(partner: jax.Array, values: jax.Array) -> jax.Array:
    """values[partner] within each group, as a small matrix product per group (an exact copy:
    one-hot rows, HIGHEST precision), which stays on the device holding the group."""
    groups, size = partner.shape[:2]
    grouped = values.reshape(groups, size, -1)
    out = jnp.einsum("gij,gjk->gik", partner, grouped, precision=jax.lax.Precision.HIGHEST)
    return out.reshape(values.shape)


@functools.lru_cache(maxsize=8)
def fad_masks(size: int, bands: str = "ours") -> np.ndarray:
    """The FAD layer's fixed masks, float32[4, N, N] (low, middle, high, all).

    "ours": `band_masks` (each index sum i + j in exactly one band) and all ones.
    "deepfakebench": DeepfakeBench's F3Net (training/detectors/f3net_detector.py,
    generate_filter): band k keeps start_k <= i + j <= end_k with edges 0, N // 2.82, N // 2 and
    2N, so the two boundary diagonals belong to both neighbouring bands (its checkpoints need it).
    """
    if bands == "ours":
        return np.concatenate([band_masks(size), np.ones((1, size, size), np.float32)])
    if bands != "deepfakebench":
        raise ValueError(f"FAD bands must be 'ours' or 'deepfakebench', got {bands!r}")
    index_sum = np.arange(size)[:, None] + np.arange(size)[None, :]
    edges = ((0, size // 2.82), (size // 2.82, size // 2), (size // 2, size * 2), (0, size * 2))
    return np.stack([(index_sum >= a) & (index_sum <= b) for a, b in edges]).astype(np.float32)


class FrequencyAwareDecomposition(nnx.Module):
    """F3-Net's FAD as a layer: fixed band masks plus learnable filters, 12 output channels.

    For each band k of (low, middle, high, all): idct2(dct2(x) * (mask_k + 2 sigmoid(w_k) - 1)),
    w_k ~ N(0, 0.1) learnable [N, N]; outputs concatenated over channels (4 C). Computed in
    float32; the result is cast to `dtype` for the backbone. x: float[B, N, N, C]. `bands`
    picks the masks (`fad_masks`).
    """

    def __init__(self, size: int, *, dtype=jnp.float32, bands: str = "ours", rngs: nnx.Rngs):
        fad_masks(size, bands)  # refuses an unknown name here, not at the first call
        self.size = size
        self.dtype = dtype
        self.bands = bands
        self.filters = nnx.Param(0.1 * jax.random.normal(rngs.params(), (4, size, size)))

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.shape[-3:-1] != (self.size, self.size):
            raise ValueError(
                f"FAD layer built for {self.size}x{self.size} inputs, got {x.shape[-3:-1]}"
            )
        fixed = fad_masks(self.size, self.bands)
        learned = 2.0 * jax.nn.sigmoid(self.filters[...].astype(jnp.float32)) - 1.0
        filters = jnp.asarray(fixed, jnp.float32) + learned  # [4, N, N]
        spectrum = dct2(x)
        # Channel order: (band, colour) per pixel, as in `fad_features`. One inverse transform
        # per band keeps the batch axis untouched (ONNX export needs it symbolic).
        bands = [idct2(spectrum * filters[k][:, :, None]) for k in range(4)]
        return jnp.concatenate(bands, axis=-1).astype(self.dtype)
