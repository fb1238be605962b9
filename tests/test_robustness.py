"""Perturbations on the device (identity at severity 0, deterministic, JPEG like libjpeg's) and
bootstrap intervals."""

import functools

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from skimage import data

from mkln_jax import metrics, perturb


def _jitted(name, severity):
    return jax.jit(functools.partial(perturb.apply, name, severity))


def _faces(batch=4, size=64):
    image = cv2.resize(data.astronaut(), (size, size), interpolation=cv2.INTER_AREA)
    rng = np.random.default_rng(0)
    images = [np.roll(image, int(rng.integers(0, size)), axis=1) for _ in range(batch)]
    return jnp.asarray(np.stack(images) / 255.0, jnp.float32)


@pytest.mark.parametrize("name", sorted(perturb.LEVELS))
def test_every_perturbation_is_identity_at_severity_0_and_deterministic(name):
    x = _faces()
    np.testing.assert_array_equal(_jitted(name, 0)(jax.random.key(0), x), x)
    for severity in range(1, len(perturb.LEVELS[name])):
        fn = _jitted(name, severity)
        a, b = fn(jax.random.key(1), x), fn(jax.random.key(1), x)
        np.testing.assert_array_equal(a, b)
        assert a.shape == x.shape and float(a.min()) >= 0.0 and float(a.max()) <= 1.0
        assert float(jnp.abs(a - x).mean()) > 1e-4  # it does something


def test_perturbations_are_identity_at_their_zero_parameter():
    x = _faces()
    key = jax.random.key(0)
    np.testing.assert_array_equal(perturb.gaussian_noise(key, x, 0.0), x)
    np.testing.assert_array_equal(perturb.gaussian_blur(x, 0.0), x)
    np.testing.assert_array_equal(perturb.brightness(key, x, 0.0), x)
    np.testing.assert_allclose(perturb.contrast(x, 1.0), x, atol=1e-6)
    np.testing.assert_array_equal(perturb.downscale(x, 1.0), x)


def test_severity_grows_the_damage():
    x = _faces()
    for name in ("gaussian_noise", "gaussian_blur", "jpeg", "downscale"):
        errors = [
            float(jnp.abs(_jitted(name, s)(jax.random.key(0), x) - x).mean())
            for s in range(len(perturb.LEVELS[name]))
        ]
        assert errors == sorted(errors), (name, errors)


@pytest.mark.parametrize("quality", [90, 50, 10])
def test_device_jpeg_loses_what_libjpeg_loses(quality):
    image = cv2.resize(data.astronaut(), (128, 128), interpolation=cv2.INTER_AREA)
    ours = np.asarray(perturb.jpeg(jnp.asarray(image[None] / 255.0, jnp.float32), quality))[0]
    ours = ours * 255.0
    encoded = cv2.imencode(".jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])[1]
    libjpeg = cv2.imdecode(encoded, cv2.IMREAD_COLOR)[..., ::-1].astype(np.float64)
    ours_error = np.abs(ours - image).mean()
    libjpeg_error = np.abs(libjpeg - image).mean()
    assert abs(ours_error - libjpeg_error) < 0.15 * libjpeg_error
    assert np.abs(ours - libjpeg).mean() < 3.0  # grey levels


def test_bootstrap_interval_contains_the_estimate_and_narrows_with_data():
    rng = np.random.default_rng(0)

    def sample(videos):
        labels = np.repeat(rng.integers(0, 2, videos), 8)
        scores = rng.normal(size=labels.size) + labels
        ids = np.repeat(np.arange(videos), 8)
        return labels, scores, ids

    labels, scores, ids = sample(40)
    point = metrics.auc(labels, scores)
    lo, hi = metrics.bootstrap_interval(labels, scores, ids, samples=300)
    assert lo <= point <= hi
    big = sample(400)
    lo_big, hi_big = metrics.bootstrap_interval(*big, samples=300)
    assert hi_big - lo_big < hi - lo
    assert metrics.bootstrap_interval(labels, scores, ids, samples=50, seed=3) == (
        metrics.bootstrap_interval(labels, scores, ids, samples=50, seed=3)
    )
