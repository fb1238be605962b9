import numpy as np
import pytest

from mkln_jax import distill


def _kd_numpy(student, teacher, temperature):
    def log_softmax(z):
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))

    t = log_softmax(teacher / temperature)
    s = log_softmax(student / temperature)
    return temperature**2 * np.mean(np.sum(np.exp(t) * (t - s), -1))


def test_kd_is_zero_for_identical_logits():
    logits = np.random.default_rng(0).normal(size=(8, 2)).astype(np.float32)
    assert abs(float(distill.kd_kl(logits, logits, 4.0))) < 1e-6


@pytest.mark.parametrize("temperature", [1.0, 2.0, 6.0])
def test_kd_equals_numpy_reference(temperature):
    rng = np.random.default_rng(1)
    s, t = rng.normal(size=(16, 2)) * 3, rng.normal(size=(16, 2)) * 3
    got = float(distill.kd_kl(s.astype(np.float32), t.astype(np.float32), temperature))
    assert got == pytest.approx(_kd_numpy(s, t, temperature), rel=1e-5)


def test_kd_carries_the_t_squared_factor():
    rng = np.random.default_rng(2)
    s, t = rng.normal(size=(16, 2)).astype(np.float32), rng.normal(size=(16, 2)).astype(np.float32)
    # Scaling logits by T and the temperature by T leaves the softened distributions equal,
    # so the loss grows exactly by T^2.
    for temperature in (2.0, 5.0):
        scaled = float(distill.kd_kl(s * temperature, t * temperature, temperature))
        assert scaled == pytest.approx(temperature**2 * float(distill.kd_kl(s, t, 1.0)), rel=1e-4)


def test_hinton_loss_mixes_kd_and_ce_by_alpha():
    rng = np.random.default_rng(3)
    s, t = rng.normal(size=(8, 2)).astype(np.float32), rng.normal(size=(8, 2)).astype(np.float32)
    labels = rng.integers(0, 2, 8)
    loss, parts = distill.hinton_kd_loss(s, t, labels, temperature=3.0, alpha=0.25)
    assert float(loss) == pytest.approx(0.25 * float(parts["kd"]) + 0.75 * float(parts["ce"]))
    ce_only, _ = distill.hinton_kd_loss(s, t, labels, temperature=3.0, alpha=0.0)
    assert float(ce_only) == pytest.approx(float(distill.cross_entropy(s, labels)))
