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


# One setting per operation that turns it fully on, and each operation's "off" settings.
OPERATIONS = {
    "jitter": ({"jitter_prob": 1.0, "jitter": 0.8}, [{"jitter": 0.0}, {"jitter_prob": 0.0}]),
    "band_drop": (
        {"band_drop_prob": 0.7, "drop_strength": 1.0},
        [{"band_drop_prob": 0.0}, {"drop_strength": 0.0}],
    ),
    "noise": ({"noise_prob": 1.0, "noise_std": 0.1}, [{"noise_prob": 0.0}, {"noise_std": 0.0}]),
    "mix": ({"mix_prob": 1.0, "mix_strength": 0.7}, [{"mix_prob": 0.0}, {"mix_strength": 0.0}]),
}
LABELS = jnp.asarray([0, 0, 0, 0, 1, 1, 1, 1])


def _images(seed, batch=8, size=16):
    return jnp.asarray(
        np.random.default_rng(seed).uniform(size=(batch, size, size, 3)), jnp.float32
    )


@pytest.mark.parametrize("block", [0, 8])
@pytest.mark.parametrize("operation", sorted(OPERATIONS))
def test_each_augmentation_is_deterministic_given_its_key(operation, block):
    x = _images(3)
    on, _ = OPERATIONS[operation]

    def run(seed):
        return frequency.frequency_augment(
            jax.random.key(seed), x, labels=LABELS, block=block, prob=1.0, **on
        )

    a, b, c = run(0), run(0), run(1)
    np.testing.assert_array_equal(a, b)
    assert np.abs(np.asarray(a) - np.asarray(x)).max() > 1e-3  # it does something
    assert np.abs(np.asarray(a) - np.asarray(c)).max() > 1e-3  # and the key matters


@pytest.mark.parametrize("block", [0, 8])
@pytest.mark.parametrize("operation", sorted(OPERATIONS))
def test_each_augmentation_at_zero_strength_or_probability_is_identity(operation, block):
    x = _images(4)
    on, offs = OPERATIONS[operation]
    for off in offs:
        out = frequency.frequency_augment(
            jax.random.key(0), x, labels=LABELS, block=block, prob=1.0, **{**on, **off}
        )
        np.testing.assert_allclose(out, x, atol=1e-5)
    gated = frequency.frequency_augment(jax.random.key(0), x, labels=LABELS, prob=0.0, **on)
    np.testing.assert_allclose(gated, x, atol=1e-5)


def test_noise_lands_in_the_high_band_only():
    x = _images(6)
    out = frequency.frequency_augment(jax.random.key(2), x, prob=1.0, noise_prob=1.0, noise_std=0.2)
    bands = frequency.band_decompose(out - x)
    np.testing.assert_allclose(bands[:, :2], 0.0, atol=1e-5)
    assert float(jnp.abs(bands[:, 2]).max()) > 0.05


def test_mixing_takes_only_same_label_partners_and_keeps_the_low_band():
    x = _images(7, batch=2)
    alone = frequency.frequency_augment(
        jax.random.key(0), x, labels=jnp.asarray([0, 1]), prob=1.0, mix_prob=1.0, mix_strength=1
    )
    np.testing.assert_allclose(alone, x, atol=1e-5)  # the only partner has the other label
    for seed in range(4):  # with one same-label partner, whichever is drawn
        out = frequency.frequency_augment(
            jax.random.key(seed),
            x,
            labels=jnp.asarray([1, 1]),
            prob=1.0,
            mix_prob=1.0,
            mix_strength=1.0,
        )
        low_out, low_x = frequency.band_decompose(out)[:, 0], frequency.band_decompose(x)[:, 0]
        np.testing.assert_allclose(low_out, low_x, atol=1e-5)
        # Nobody is its own partner: in a group of two, each takes the other's upper bands.
        x_bands, out_bands = frequency.band_decompose(x), frequency.band_decompose(out)
        np.testing.assert_allclose(out_bands[0, 1:], x_bands[1, 1:], atol=1e-5)
        np.testing.assert_allclose(out_bands[1, 1:], x_bands[0, 1:], atol=1e-5)


def _partners(seed: int, batch: int) -> np.ndarray:
    onehot = np.asarray(frequency.group_partners(jax.random.key(seed), batch))
    assert np.all(onehot.sum(-1) == 1)
    group = onehot.shape[1]
    return (np.argmax(onehot, -1) + np.arange(batch // group)[:, None] * group).reshape(-1)


def test_mixing_partners_are_drawn_within_groups_uniformly_among_the_others():
    batch, group = 32, frequency.MIX_GROUP
    counts = np.zeros((batch, batch))
    for seed in range(400):
        partner = _partners(seed, batch)
        assert sorted(partner) == list(range(batch))  # a permutation ...
        assert np.all(partner != np.arange(batch))  # ... without fixed points ...
        assert np.all(partner // group == np.arange(batch) // group)  # ... inside each group
        counts[np.arange(batch), partner] += 1
    # Each of the 7 others of a group is drawn with chance 1/7 (400 draws: 57 +- 7 each).
    others = counts[np.arange(batch) // group == np.arange(batch)[:, None] // group]
    others = others[others > 0]
    assert len(others) == batch * (group - 1) and 25 < others.min() and others.max() < 95
    assert _partners(0, 6).tolist() != list(range(6))  # a batch of 6: one group of 6


def test_mixing_blends_only_same_label_partners_of_the_group():
    x = _images(11, batch=16)
    labels = jnp.asarray([0, 1, 1, 0, 0, 1, 0, 1] * 2)
    out = frequency.frequency_augment(
        jax.random.key(5), x, labels=labels, prob=1.0, mix_prob=1.0, mix_strength=1.0
    )
    x_bands, out_bands = frequency.band_decompose(x), frequency.band_decompose(out)
    mixed = 0
    for i in range(16):
        if np.allclose(out_bands[i, 1:], x_bands[i, 1:], atol=1e-5):
            continue  # its drawn partner had the other label
        sources = [
            j
            for j in range(16)
            if j != i and np.allclose(out_bands[i, 1:], x_bands[j, 1:], atol=1e-5)
        ]
        assert len(sources) == 1 and labels[sources[0]] == labels[i]
        assert sources[0] // frequency.MIX_GROUP == i // frequency.MIX_GROUP
        mixed += 1
    assert mixed > 0


def test_leaving_mixing_and_noise_out_of_the_program_equals_probability_zero():
    x = _images(12)
    on = {"prob": 1.0, "jitter": 0.5, "mix_strength": 0.7, "noise_std": 0.1}
    zero = frequency.frequency_augment(
        jax.random.key(1), x, labels=LABELS, mix_prob=0.0, noise_prob=0.0, **on
    )
    left_out = frequency.frequency_augment(
        jax.random.key(1),
        x,
        labels=LABELS,
        mix=False,
        noise=False,
        mix_prob=1.0,
        noise_prob=1.0,
        **on,
    )
    np.testing.assert_array_equal(left_out, zero)


def test_augmentation_runs_in_float32_for_bfloat16_inputs():
    x = _images(8).astype(jnp.bfloat16)
    out = frequency.frequency_augment(jax.random.key(0), x, prob=1.0, jitter=0.5)
    assert out.dtype == jnp.float32


@pytest.mark.parametrize("size", [8, 16, 32])
def test_block_dct_with_one_block_is_the_full_dct(size):
    x = _images(9, batch=2, size=size)
    np.testing.assert_allclose(frequency.block_dct2(x, size), frequency.dct2(x), atol=1e-5)


def test_block_dct_transforms_each_8x8_tile_like_scipy_and_round_trips():
    x = np.random.default_rng(10).normal(size=(2, 24, 16, 3)).astype(np.float32)
    y = np.asarray(frequency.block_dct2(x, 8))
    for i in range(0, 24, 8):
        for j in range(0, 16, 8):
            tile = x[:, i : i + 8, j : j + 8].astype(np.float64)
            expected = scipy.fft.dctn(tile, axes=(1, 2), norm="ortho")
            np.testing.assert_allclose(y[:, i : i + 8, j : j + 8], expected, atol=1e-5)
    np.testing.assert_allclose(frequency.block_idct2(y, 8), x, atol=1e-5)
    with pytest.raises(ValueError, match="divisible by 8"):
        frequency.block_dct2(x[:, :20], 8)


def test_fad_layer_with_zero_filters_is_f3net_fixed_decomposition_and_learns():
    from flax import nnx

    x = _images(11, batch=2)
    layer = frequency.FrequencyAwareDecomposition(16, rngs=nnx.Rngs(0))
    assert float(jnp.abs(layer.filters[...]).max()) > 0  # N(0, 0.1) initialisation
    layer.filters[...] = jnp.zeros((4, 16, 16))
    np.testing.assert_allclose(layer(x), frequency.fad_features(x), atol=1e-5)
    grads = nnx.grad(lambda m: jnp.sum(m(x) ** 2))(layer)
    assert float(jnp.abs(grads.filters[...]).max()) > 0
    half = frequency.FrequencyAwareDecomposition(16, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    half.filters[...] = jnp.zeros((4, 16, 16))
    out = half(x)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out, np.float32), frequency.fad_features(x), atol=2e-2)


def test_band_drop_removes_high_frequencies_inside_jit():
    x = jnp.asarray(np.random.default_rng(5).uniform(size=(2, 16, 16, 3)), jnp.float32)
    aug = jax.jit(
        lambda k, v: frequency.frequency_augment(k, v, prob=1.0, band_drop_prob=1.0, jitter=0.0)
    )(jax.random.key(0), x)
    np.testing.assert_allclose(aug, frequency.band_decompose(x)[:, 0], atol=1e-5)
