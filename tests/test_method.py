"""The method's parts inside the jitted step: detectors, several teachers, consistent teaching,
mutual learning, feature distillation and schedules."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from mkln_jax import distill, models
from mkln_jax import step as step_lib
from mkln_jax.models import detectors
from mkln_jax.models.small_cnn import SmallCNN

NORM = ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
HP = {
    "temperature": np.float32(4.0),
    "alpha": np.float32(0.7),
    "freq_prob": np.float32(1.0),
    "jitter": np.float32(0.5),
    "band_drop_prob": np.float32(0.3),
}


def _small(seed, widths=(8, 16)):
    return SmallCNN(2, widths=widths, rngs=nnx.Rngs(seed))


def _frozen(model):
    graphdef, params, stats = step_lib.split_model(model)
    return step_lib.ModelFn(graphdef, *NORM), step_lib.Frozen(params, stats)


def _batch(seed=0, batch=8, size=16):
    rng = np.random.default_rng(seed)
    return {
        "image": rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8),
        "label": np.tile(np.int32([0, 1]), batch // 2),
    }


def _state(model, tx):
    return step_lib.init_state(model, tx, seed=0)


def _jit_step(student, tx, teachers=(), norm=NORM, **method):
    """The jitted train step of `student` (an NNX module) with these teachers and choices."""
    model_fn = step_lib.ModelFn(step_lib.split_model(student)[0], *norm)
    return jax.jit(
        step_lib.make_train_step(model_fn, tx, teachers=teachers, method=step_lib.Method(**method))
    )


def _changed(before, after):
    return [
        bool(np.any(np.asarray(a) != np.asarray(b)))
        for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True)
    ]


@pytest.mark.parametrize("stream", ["rgb", "frequency", "two_stream"])
def test_detectors_classify_and_expose_features(stream):
    model = models.build_detector("small_cnn", 2, stream=stream, image_size=16)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 16, 16, 3)), jnp.float32)
    features = model.features(x)
    assert features.shape == (3, model.feature_dim)
    np.testing.assert_allclose(model(x), model.head(features), atol=1e-6)
    if stream != "rgb":
        fad = model.fad if stream == "frequency" else model.frequency.fad
        assert fad.filters[...].shape == (4, 16, 16)  # the learnable FAD filters are params


def test_frequency_stream_under_bfloat16_keeps_the_dct_in_float32():
    model = models.build_detector(
        "small_cnn", 2, stream="frequency", image_size=16, dtype="bfloat16"
    )
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 16, 16, 3)), jnp.bfloat16)
    out = model(x)
    assert out.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(out)))
    jaxpr = str(jax.make_jaxpr(lambda v: model.fad(v))(x))
    assert "dot_general" in jaxpr and "bf16[2,16,16,12]" in jaxpr  # cast only at the end
    assert "preferred_element_type=float32" in jaxpr


def test_several_teachers_give_the_weighted_mean_of_their_kd_terms():
    rng = np.random.default_rng(2)
    student = rng.normal(size=(6, 2)).astype(np.float32)
    t1, t2 = rng.normal(size=(2, 6, 2)).astype(np.float32)
    weights = np.float32([3.0, 1.0])
    got = distill.multi_teacher_kd(student, (t1, t2), weights, 3.0)
    expected = (3 * distill.kd_kl(student, t1, 3.0) + distill.kd_kl(student, t2, 3.0)) / 4
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    np.testing.assert_allclose(
        distill.multi_teacher_kd(student, (t1,), np.float32([5.0]), 3.0),
        distill.kd_kl(student, t1, 3.0),
        rtol=1e-6,
    )


@pytest.mark.slow  # whole models, compiled
def test_two_teachers_in_the_step_and_both_stay_bit_identical():
    tx = optax.adamw(1e-2)
    t1, v1 = _frozen(_small(1, (8, 8)))
    t2, v2 = _frozen(_small(2, (8, 8)))
    fn = _jit_step(_small(0), tx, teachers=(t1, t2), frequency_augment=True)
    state = _state(_small(0), tx)
    before = jax.device_get((v1, v2))
    hp = {**HP, "teacher_weights": np.float32([1.0, 0.0])}
    only_first = fn(state, (v1, v2), _batch(), hp)[1]["kd"]
    single = _jit_step(_small(0), tx, teachers=(t1,), frequency_augment=True)
    np.testing.assert_allclose(only_first, single(state, (v1,), _batch(), HP)[1]["kd"], rtol=1e-5)
    both = fn(state, (v1, v2), _batch(), {**HP, "teacher_weights": np.float32([1.0, 1.0])})
    assert abs(float(both[1]["kd"]) - float(only_first)) > 1e-6
    after = jax.device_get((v1, v2))
    assert not any(_changed(before, after))


@pytest.mark.slow  # whole models, compiled
def test_consistent_teaching_feeds_the_teacher_the_students_view():
    tx = optax.sgd(0.0)
    teacher, frozen = _frozen(_small(1, (8, 8)))

    def kd(teacher_input, freq_prob):
        fn = _jit_step(
            _small(0), tx, (teacher,), frequency_augment=True, teacher_input=teacher_input
        )
        hp = {**HP, "freq_prob": np.float32(freq_prob), "band_drop_prob": np.float32(1.0)}
        return float(fn(_state(_small(0), tx), (frozen,), _batch(), hp)[1]["kd"])

    # Without augmentation the two inputs are the same image; with it they differ.
    assert kd("view", 0.0) == pytest.approx(kd("clean", 0.0), rel=1e-4)  # DCT round trip
    assert abs(kd("view", 1.0) - kd("clean", 1.0)) > 1e-3


def _peers(deploy="rgb"):
    first = models.build_detector("small_cnn", 2, stream="rgb", seed=0)
    second = models.build_detector("small_cnn", 2, stream="frequency", image_size=16, seed=1)
    return detectors.Peers(first, second, (NORM, NORM), deploy=deploy)


def test_each_mutual_loss_reaches_only_its_own_peer():
    model = _peers()
    graphdef, params, stats = step_lib.split_model(model)
    fn = step_lib.ModelFn(graphdef, (0.0,) * 3, (1.0,) * 3)
    batch = _batch()
    images = batch["image"].astype(np.float32) / 255.0

    def peer_loss(p, which):
        (first, second), _ = fn.apply(p, stats, images, True, step_lib._peer_logits)
        own, other = (first, second) if which == 0 else (second, first)
        return distill.cross_entropy(own, batch["label"]) + distill.mutual_kl(own, other)

    for which, (mine, theirs) in enumerate((("first", "second"), ("second", "first"))):
        grads = nnx.to_pure_dict(jax.grad(peer_loss)(params, which))
        assert all(not np.any(g) for g in jax.tree.leaves(grads[theirs]))
        assert any(np.any(g) for g in jax.tree.leaves(grads[mine]))


def test_mutual_step_updates_both_peers_and_deploys_the_chosen_one():
    tx = optax.adamw(1e-2)
    teacher, frozen = _frozen(_small(3, (8, 8)))
    model = _peers()
    fn = _jit_step(
        model,
        tx,
        teachers=(teacher,),
        norm=((0.0,) * 3, (1.0,) * 3),
        frequency_augment=True,
        mutual=True,
    )
    state = _state(model, tx)
    new, metrics = fn(state, (frozen,), _batch(), {**HP, "mutual_weight": np.float32(1.0)})
    before, after = nnx.to_pure_dict(state.params), nnx.to_pure_dict(jax.device_get(new.params))
    for peer in ("first", "second"):
        assert any(_changed(before[peer], after[peer])), peer
    assert float(metrics["peer1_mutual"]) > 0 and float(metrics["peer2_mutual"]) > 0
    x = jnp.asarray(np.random.default_rng(4).uniform(size=(2, 16, 16, 3)), jnp.float32)
    first, second = model.peer_logits(x)
    np.testing.assert_allclose(model(x), first, atol=1e-6)
    model.deploy = "ensemble"
    np.testing.assert_allclose(model(x), (first + second) / 2, atol=1e-6)


@pytest.mark.slow  # whole models, compiled
@pytest.mark.parametrize("kind", ["cosine", "l2"])
def test_feature_distillation_trains_the_projection(kind):
    tx = optax.adamw(1e-2)
    teacher, frozen = _frozen(_small(1, (8, 12)))
    student = _small(0)
    student.feature_projectors = detectors.FeatureProjectors(16, (12,), rngs=nnx.Rngs(5))
    fn = _jit_step(student, tx, teachers=(teacher,), feature_loss=kind)
    state = _state(student, tx)
    new, metrics = fn(state, (frozen,), _batch(), {**HP, "feature_weight": np.float32(1.0)})
    assert float(metrics["feature"]) > 0
    before = nnx.to_pure_dict(state.params)["feature_projectors"]
    after = nnx.to_pure_dict(jax.device_get(new.params))["feature_projectors"]
    assert all(_changed(before, after))


def test_feature_loss_matches_its_definition():
    rng = np.random.default_rng(6)
    a, b = rng.normal(size=(2, 5, 7)).astype(np.float32)
    cos = np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    np.testing.assert_allclose(distill.feature_loss(a, b, "cosine"), np.mean(1 - cos), rtol=1e-5)
    np.testing.assert_allclose(distill.feature_loss(a, b, "l2"), np.mean((a - b) ** 2), rtol=1e-5)
    assert float(distill.feature_loss(a, a, "cosine")) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_schedules_move_from_start_to_end_inside_the_step(kind):
    assert float(distill.scheduled(kind, 6.0, 2.0, 0.0)) == pytest.approx(6.0)
    assert float(distill.scheduled(kind, 6.0, 2.0, 1.0)) == pytest.approx(2.0)
    assert float(distill.scheduled(kind, 6.0, 2.0, 0.5)) == pytest.approx(4.0)
    assert float(distill.scheduled("constant", 6.0, 2.0, 0.7)) == pytest.approx(6.0)
    tx = optax.sgd(0.0)
    teacher, frozen = _frozen(_small(1, (8, 8)))
    fn = _jit_step(_small(0), tx, teachers=(teacher,), schedule=kind)
    hp = {**HP, "temperature_end": np.float32(2.0), "total_steps": np.float32(4.0)}
    state = _state(_small(0), tx)
    temps = []
    for _ in range(5):
        state, metrics = fn(state, (frozen,), _batch(), hp)
        temps.append(float(metrics["temperature"]))
    assert temps[0] == pytest.approx(4.0) and temps[-1] == pytest.approx(2.0)
    assert all(a >= b for a, b in itertools.pairwise(temps))
