"""Forgery synthesis on face crops, for the built-in demo and for real-only training.

Each method takes an RGB uint8 crop [S, S, 3] (a face centred with margin 1.3) and a numpy
Generator, and returns a manipulated crop of the same shape. They are of different kinds, so that
one can be held out to test generalisation:

- `self_blend`: Self-Blended Images (Shiohara & Yamasaki, CVPR 2022). The face is blended with a
  colour-, sharpness- and scale-jittered copy of itself inside a deformed soft face mask, leaving
  blending boundaries and colour mismatch but no identity change.
- `upsampler`: re-synthesis of the face region through 2x down-sampling and a stride-2 transposed
  convolution with a perturbed bilinear kernel, the up-sampler of GAN / autoencoder decoders; it
  leaves the periodic "checkerboard" spectrum such decoders are known for (Odena et al., 2016).
- `face_swap`: the inner face of another identity, colour-matched in Lab space and blended in;
  the classic swap pipeline of FaceSwap-style methods, without a learned generator.

Without landmarks, the face mask is an ellipse in the crop's centre (where the detector's box
lies), randomly scaled, shifted and deformed, then blurred (SBI's mask augmentation).
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

METHODS = ("self_blend", "upsampler", "face_swap")


def face_mask(size: int, rng: np.random.Generator) -> np.ndarray:
    """Soft face mask float32[S, S, 1] in [0, 1]: a jittered, deformed, blurred ellipse."""
    mask = np.zeros((size, size), np.float32)
    centre = (
        round(size * (0.5 + rng.uniform(-0.03, 0.03))),
        round(size * (0.53 + rng.uniform(-0.03, 0.03))),
    )
    axes = (round(size * rng.uniform(0.26, 0.33)), round(size * rng.uniform(0.32, 0.40)))
    cv2.ellipse(mask, centre, axes, rng.uniform(-10, 10), 0, 360, 1.0, -1)
    # Smooth random displacement field deforms the ellipse boundary.
    grid = np.mgrid[0:size, 0:size].astype(np.float32)
    coarse = rng.normal(0, size * 0.04, (2, 4, 4)).astype(np.float32)
    flow = np.stack([cv2.resize(c, (size, size), interpolation=cv2.INTER_CUBIC) for c in coarse])
    mask = cv2.remap(mask, grid[1] + flow[1], grid[0] + flow[0], cv2.INTER_LINEAR)
    kernel = 2 * int(size * rng.uniform(0.03, 0.08)) + 1
    mask = cv2.GaussianBlur(mask, (kernel, kernel), 0)
    mask *= rng.uniform(0.75, 1.0)  # blend ratio
    return np.clip(mask, 0.0, 1.0)[..., None]


def _blend(target: np.ndarray, source: np.ndarray, mask: np.ndarray) -> np.ndarray:
    out = mask * source.astype(np.float32) + (1.0 - mask) * target.astype(np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _colour_jitter(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV).astype(np.float32)
    hsv[..., 0] = (hsv[..., 0] + rng.uniform(-8, 8)) % 180
    hsv[..., 1] *= rng.uniform(0.75, 1.3)
    hsv[..., 2] = hsv[..., 2] * rng.uniform(0.8, 1.2) + rng.uniform(-12, 12)
    out = cv2.cvtColor(np.clip(hsv, 0, 255).astype(np.uint8), cv2.COLOR_HSV2RGB)
    return out


def self_blend(crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    size = crop.shape[0]
    source = _colour_jitter(crop, rng)
    if rng.random() < 0.5:
        source = cv2.GaussianBlur(source, (3, 3), rng.uniform(0.5, 1.2))
    else:
        blurred = cv2.GaussianBlur(source, (0, 0), 1.0)
        source = cv2.addWeighted(source, 1.6, blurred, -0.6, 0)
    scale = rng.uniform(0.94, 1.06)
    shift = rng.uniform(-0.03, 0.03, 2) * size
    affine = np.array(
        [
            [scale, 0, (1 - scale) * size / 2 + shift[0]],
            [0, scale, (1 - scale) * size / 2 + shift[1]],
        ],
        np.float32,
    )
    source = cv2.warpAffine(source, affine, (size, size), borderMode=cv2.BORDER_REFLECT)
    return _blend(crop, source, face_mask(size, rng))


def transposed_conv_upsample(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Stride-2 transposed convolution of float[H, W, C] with float[4, 4, C]: float[2H, 2W, C]."""
    height, width, channels = image.shape
    zero_inserted = np.zeros((2 * height, 2 * width, channels), np.float32)
    zero_inserted[::2, ::2] = image
    out = np.empty_like(zero_inserted)
    for c in range(channels):
        out[..., c] = cv2.filter2D(
            zero_inserted[..., c], -1, kernel[..., c], borderType=cv2.BORDER_REFLECT
        )
    return out


def upsampler(crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    size = crop.shape[0]
    small = cv2.resize(crop, (size // 2, size // 2), interpolation=cv2.INTER_AREA)
    small = small.astype(np.float32)
    bilinear = np.array([0.25, 0.75, 0.75, 0.25], np.float32)
    base = np.outer(bilinear, bilinear)[..., None]
    kernel = base * (1.0 + rng.uniform(0.15, 0.35) * rng.standard_normal((4, 4, 3)))
    # Keep each output phase's gain at one, as a trained decoder would, so only texture changes.
    for dy in range(2):
        for dx in range(2):
            kernel[dy::2, dx::2] /= kernel[dy::2, dx::2].sum(axis=(0, 1), keepdims=True)
    resynth = transposed_conv_upsample(small, kernel)
    resynth = np.clip(np.rint(resynth), 0, 255).astype(np.uint8)
    return _blend(crop, resynth, face_mask(size, rng))


def _match_colour(source: np.ndarray, target: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Shifts source's Lab mean / std inside the mask to target's."""
    src = cv2.cvtColor(source, cv2.COLOR_RGB2LAB).astype(np.float32)
    tgt = cv2.cvtColor(target, cv2.COLOR_RGB2LAB).astype(np.float32)
    weight = mask[..., 0] > 0.5
    if weight.sum() < 16:
        return source
    mean_s, std_s = src[weight].mean(0), src[weight].std(0) + 1e-3
    mean_t, std_t = tgt[weight].mean(0), tgt[weight].std(0) + 1e-3
    out = (src - mean_s) / std_s * std_t + mean_t
    return cv2.cvtColor(np.clip(out, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB)


def face_swap(crop: np.ndarray, rng: np.random.Generator, donor: np.ndarray) -> np.ndarray:
    """Blends the inner face of `donor` (another identity's crop, same size) into `crop`."""
    size = crop.shape[0]
    mask = face_mask(size, rng)
    source = _match_colour(donor, crop, mask)
    return _blend(crop, source, mask)


def synthesise(
    method: str, crop: np.ndarray, rng: np.random.Generator, donor: np.ndarray | None = None
) -> np.ndarray:
    """Applies a forgery method by name; `face_swap` needs a donor crop."""
    table: dict[str, Callable[..., np.ndarray]] = {"self_blend": self_blend, "upsampler": upsampler}
    if method == "face_swap":
        if donor is None:
            raise ValueError("face_swap needs a donor crop of another identity")
        return face_swap(crop, rng, donor)
    if method not in table:
        raise ValueError(f"unknown forgery method {method!r}; known: {', '.join(METHODS)}")
    return table[method](crop, rng)
