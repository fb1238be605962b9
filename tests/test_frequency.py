import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.fft

from mkln_jax import frequency


@pytest.mark.parametrize("size", [8, 17, 32, 64])
def test_dct2_matches_scipy_orthonormal_dctn(size):
    x = np.random.default_rng(size).normal(size=(2, size, size, 3)).astype(np.float32)
    expected = scipy.fft.dctn(x.astype(np.float64), axes=(1, 2), norm="ortho")
    np.testing.assert_allclose(frequency.dct2(x), expected, atol=1e-5, rtol=0)


def test_dct2_of_non_square_images_matches_scipy():
    x = np.random.default_rng(0).normal(size=(1, 12, 20, 2)).astype(np.float32)
    expected = scipy.fft.dctn(x.astype(np.float64), axes=(1, 2), norm="ortho")
    np.testing.assert_allclose(frequency.dct2(x), expected, atol=1e-5, rtol=0)


def test_idct2_inverts_dct2():
    x = np.random.default_rng(1).uniform(size=(3, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(frequency.idct2(frequency.dct2(x)), x, atol=1e-5, rtol=0)


def test_dct_matrix_is_orthonormal():
    d = frequency.dct_matrix(24)
    np.testing.assert_allclose(d @ d.T, np.eye(24), atol=1e-12)


def test_band_masks_partition_the_spectrum_with_f3net_bounds():
    masks = frequency.band_masks(32)
    np.testing.assert_array_equal(masks.sum(0), np.ones((32, 32)))
    index_sum = np.add.outer(np.arange(32), np.arange(32))
    assert masks[0][index_sum <= 32 / 2.82].all() and not masks[0][index_sum > 32 / 2.82].any()
    assert masks[2][index_sum > 16].all() and not masks[2][index_sum <= 16].any()


def test_bands_sum_back_to_the_image_and_fad_has_12_channels():
    x = np.random.default_rng(2).uniform(size=(2, 16, 16, 3)).astype(np.float32)
    bands = frequency.band_decompose(x)
    assert bands.shape == (2, 3, 16, 16, 3)
    np.testing.assert_allclose(bands.sum(1), x, atol=1e-5)
    fad = frequency.fad_features(x)
    assert fad.shape == (2, 16, 16, 12)
    # channel layout: [low, middle, high, all] per colour channel
    np.testing.assert_allclose(fad[..., 3 * 3 : 4 * 3], x, atol=1e-5)
    np.testing.assert_allclose(fad[..., 0:3], bands[:, 0], atol=1e-6)


def test_low_band_of_a_constant_image_is_the_image():
    x = np.full((1, 16, 16, 3), 0.7, np.float32)
    bands = frequency.band_decompose(x)
    np.testing.assert_allclose(bands[:, 0], x, atol=1e-5)
    np.testing.assert_allclose(bands[:, 1:], 0.0, atol=1e-5)


def test_frequency_augment_is_deterministic_given_its_key():
    x = jnp.asarray(np.random.default_rng(3).uniform(size=(4, 16, 16, 3)), jnp.float32)
    kwargs = dict(prob=1.0, band_drop_prob=0.5, jitter=0.5)
    a = frequency.frequency_augment(jax.random.key(0), x, **kwargs)
    b = frequency.frequency_augment(jax.random.key(0), x, **kwargs)
    c = frequency.frequency_augment(jax.random.key(1), x, **kwargs)
    np.testing.assert_array_equal(a, b)
    assert np.abs(np.asarray(a) - np.asarray(c)).max() > 1e-3


def test_frequency_augment_with_zero_probability_or_strength_is_identity():
    x = jnp.asarray(np.random.default_rng(4).uniform(size=(4, 16, 16, 3)), jnp.float32)
    off = frequency.frequency_augment(jax.random.key(0), x, prob=0.0, band_drop_prob=1, jitter=1)
    np.testing.assert_allclose(off, x, atol=1e-5)
    weak = frequency.frequency_augment(jax.random.key(0), x, prob=1.0, band_drop_prob=0, jitter=0)
    np.testing.assert_allclose(weak, x, atol=1e-5)


def test_band_drop_removes_high_frequencies_inside_jit():
    x = jnp.asarray(np.random.default_rng(5).uniform(size=(2, 16, 16, 3)), jnp.float32)
    aug = jax.jit(
        lambda k, v: frequency.frequency_augment(k, v, prob=1.0, band_drop_prob=1.0, jitter=0.0)
    )(jax.random.key(0), x)
    np.testing.assert_allclose(aug, frequency.band_decompose(x)[:, 0], atol=1e-5)
