"""Perturbations for robustness evaluation, in jnp on the device, at graded severities.

Each takes images in [0, 1] (float32[B, H, W, 3]), a key and a severity index; severity 0 is the
identity, higher is stronger (the levels below). All are jit-able and deterministic given the
key. The paper's own claim is robustness to Gaussian noise; the others follow common practice
(DeeperForensics-1.0's distortions, Jiang et al. CVPR 2020: noise, blur, JPEG, resizing,
colour changes).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mkln_jax import frequency

LEVELS: dict[str, tuple[float, ...]] = {
    "gaussian_noise": (0.0, 0.01, 0.02, 0.04, 0.06, 0.1),  # std in [0, 1] pixel units
    "gaussian_blur": (0.0, 0.5, 1.0, 1.5, 2.0, 3.0),  # sigma in pixels
    "jpeg": (0, 90, 70, 50, 30, 10),  # quality (0 = not compressed)
    "downscale": (1.0, 1.5, 2.0, 3.0, 4.0, 6.0),  # down by this factor, then back up
    "brightness": (0.0, 0.1, 0.2, 0.3, 0.4, 0.5),  # added (half the images darker, half lighter)
    "contrast": (1.0, 0.8, 0.6, 0.45, 0.3, 0.2),  # factor around the image mean
}


def gaussian_noise(key, x, std):
    return jnp.clip(x + std * jax.random.normal(key, x.shape, jnp.float32), 0.0, 1.0)


def _gaussian_kernel(sigma: float) -> np.ndarray:
    if sigma <= 0:
        return np.ones((1,), np.float32)
    radius = int(np.ceil(3 * sigma))
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    return (k / k.sum()).astype(np.float32)


def gaussian_blur(x, sigma: float):
    """Separable Gaussian blur, edges replicated."""
    kernel = jnp.asarray(_gaussian_kernel(sigma))
    radius = (kernel.shape[0] - 1) // 2
    if radius == 0:
        return x
    padded = jnp.pad(x, ((0, 0), (radius, radius), (radius, radius), (0, 0)), mode="edge")
    h = sum(kernel[i] * padded[:, i : i + x.shape[1], :, :] for i in range(kernel.shape[0]))
    return sum(kernel[i] * h[:, :, i : i + x.shape[2], :] for i in range(kernel.shape[0]))


# The JPEG standard's example quantisation tables (ITU-T T.81, Annex K), luma and chroma.
_LUMA = np.array(
    [
        [16, 11, 10, 16, 24, 40, 51, 61],
        [12, 12, 14, 19, 26, 58, 60, 55],
        [14, 13, 16, 24, 40, 57, 69, 56],
        [14, 17, 22, 29, 51, 87, 80, 62],
        [18, 22, 37, 56, 68, 109, 103, 77],
        [24, 35, 55, 64, 81, 104, 113, 92],
        [49, 64, 78, 87, 103, 121, 120, 101],
        [72, 92, 95, 98, 112, 100, 103, 99],
    ],
    np.float32,
)
_CHROMA = np.full((8, 8), 99, np.float32)
_CHROMA[:4, :4] = [[17, 18, 24, 47], [18, 21, 26, 66], [24, 26, 56, 99], [47, 66, 99, 99]]


def _quant_table(table: np.ndarray, quality: int) -> np.ndarray:
    """libjpeg's quality scaling of a base table."""
    scale = 5000 / quality if quality < 50 else 200 - 2 * quality
    return np.clip(np.floor((table * scale + 50) / 100), 1, 255).astype(np.float32)


def jpeg(x, quality: int):
    """JPEG round trip simulated on the device: YCbCr, 4:2:0 chroma, 8x8 block DCT, quantised
    with libjpeg's tables at `quality`, rounded, dequantised, inverted. Image sides must be
    multiples of 16."""
    if quality <= 0:
        return x
    h, w = x.shape[1], x.shape[2]
    if h % 16 or w % 16:
        raise ValueError(f"jpeg needs sides that are multiples of 16, got {h}x{w}")
    rgb = x * 255.0
    m = jnp.asarray(
        [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]]
    )
    ycc = jnp.einsum("bhwc,kc->bhwk", rgb, m) + jnp.asarray([0.0, 128.0, 128.0])
    luma, chroma = ycc[..., :1], ycc[..., 1:]
    chroma = chroma.reshape(-1, h // 2, 2, w // 2, 2, 2).mean(axis=(2, 4))

    def code(plane, table):
        q = jnp.asarray(
            np.tile(_quant_table(table, quality), (plane.shape[1] // 8, plane.shape[2] // 8))
        )
        coeffs = frequency.block_dct2(plane - 128.0, 8)
        return frequency.block_idct2(jnp.round(coeffs / q[..., None]) * q[..., None], 8) + 128.0

    luma = code(luma, _LUMA)
    chroma = code(chroma, _CHROMA)
    chroma = jnp.repeat(jnp.repeat(chroma, 2, axis=1), 2, axis=2)
    ycc = jnp.concatenate([luma, chroma], -1) - jnp.asarray([0.0, 128.0, 128.0])
    inv = jnp.asarray([[1.0, 0.0, 1.402], [1.0, -0.344136, -0.714136], [1.0, 1.772, 0.0]])
    return jnp.clip(jnp.einsum("bhwk,ck->bhwc", ycc, inv) / 255.0, 0.0, 1.0)


def downscale(x, factor: float):
    if factor <= 1.0:
        return x
    b, h, w, c = x.shape
    small = (b, max(1, round(h / factor)), max(1, round(w / factor)), c)
    down = jax.image.resize(x, small, "linear", antialias=True)
    return jnp.clip(jax.image.resize(down, x.shape, "linear"), 0.0, 1.0)


def brightness(key, x, delta):
    sign = jnp.where(jax.random.bernoulli(key, 0.5, (x.shape[0], 1, 1, 1)), 1.0, -1.0)
    return jnp.clip(x + sign * delta, 0.0, 1.0)


def contrast(x, factor):
    mean = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
    return jnp.clip(mean + factor * (x - mean), 0.0, 1.0)


def apply(name: str, severity: int, key: jax.Array, x: jax.Array) -> jax.Array:
    """The perturbation `name` at `severity` (index into LEVELS[name]; static)."""
    if name not in LEVELS:
        raise ValueError(f"unknown perturbation {name!r}; known: {sorted(LEVELS)}")
    level = LEVELS[name][severity]
    x = x.astype(jnp.float32)
    if severity == 0:
        return x
    fn = {
        "gaussian_noise": lambda: gaussian_noise(key, x, level),
        "gaussian_blur": lambda: gaussian_blur(x, level),
        "jpeg": lambda: jpeg(x, int(level)),
        "downscale": lambda: downscale(x, level),
        "brightness": lambda: brightness(key, x, level),
        "contrast": lambda: contrast(x, level),
    }[name]
    return fn()
