"""The jitted, sharded train step: 8 devices reproduce 1 device; the teacher never changes."""

import time

import distill_setup
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from mkln_jax import sharding
from mkln_jax import step as step_lib
from mkln_jax.models.small_cnn import SmallCNN


def _run(num_devices: int):
    losses, state, teacher_before, teacher_after, _ = distill_setup.run(
        sharding.make_mesh(num_devices)
    )
    return losses, state, teacher_before, teacher_after


@pytest.mark.slow  # whole models, compiled
def test_eight_devices_reproduce_one_device_and_the_teacher_never_changes():
    assert jax.device_count() == 8, "conftest sets 8 fake CPU devices"
    losses_1, state_1, _, _ = _run(1)
    losses_8, state_8, teacher_before, teacher_after = _run(8)
    np.testing.assert_allclose(losses_8, losses_1, rtol=1e-5, atol=1e-6)
    for tree_8, tree_1 in (
        (state_8.params, state_1.params),
        (state_8.batch_stats, state_1.batch_stats),
    ):
        for a, b in zip(jax.tree.leaves(tree_8), jax.tree.leaves(tree_1), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    # The teacher's variables are bit-identical after training steps.
    for a, b in zip(jax.tree.leaves(teacher_before), jax.tree.leaves(teacher_after), strict=True):
        np.testing.assert_array_equal(a, b)
    assert losses_8[-1] != losses_8[0]  # the student did train


def test_changing_distillation_hyperparameters_does_not_recompile():
    fn, state, frozen = distill_setup.setup()
    jitted = jax.jit(fn)
    batch = distill_setup.batches(1)[0]
    losses = []
    for temperature in (1.0, 2.0, 8.0):
        hp = {
            k: jnp.float32(v)
            for k, v in {**distill_setup.HPARAMS, "temperature": temperature}.items()
        }
        _, metrics = jitted(state, frozen, batch, hp)
        losses.append(float(metrics["kd"]))
    assert jitted._cache_size() == 1
    assert len(set(losses)) == 3  # the value did reach the loss


def test_typed_hyperparameters_trace_once_and_refuse_a_misspelled_name():
    fn, state, frozen = distill_setup.setup()
    jitted = jax.jit(fn)
    batch = distill_setup.batches(1)[0]
    losses = []
    for temperature in (1.0, 4.0):
        hp = step_lib.HParams.create(**{**distill_setup.HPARAMS, "temperature": temperature})
        losses.append(float(jitted(state, frozen, batch, hp)[1]["kd"]))
    assert jitted._cache_size() == 1 and losses[0] != losses[1]
    with pytest.raises(TypeError, match="temprature"):
        step_lib.HParams.create(temprature=4.0)
    misspelled = {**distill_setup.HPARAMS, "temprature": 4.0}  # a dict is checked the same way
    with pytest.raises(TypeError, match="temprature"):
        jitted(state, frozen, batch, misspelled)


def test_without_teacher_the_step_is_cross_entropy_only():
    student = SmallCNN(2, widths=(8,), rngs=nnx.Rngs(0))
    tx = optax.sgd(0.0)
    graph, _, _ = step_lib.split_model(student)
    fn = step_lib.make_train_step(step_lib.ModelFn(graph, (0.5,) * 3, (0.25,) * 3), tx)
    state = step_lib.init_state(student, tx, seed=0)
    _, metrics = jax.jit(fn)(
        state,
        None,
        distill_setup.batches(1)[0],
        {k: jnp.float32(v) for k, v in distill_setup.HPARAMS.items()},
    )
    assert "kd" not in metrics
    assert float(metrics["loss"]) == pytest.approx(float(metrics["ce"]))


class _Step:
    """A step on a simulated device that runs one step at a time, `seconds` each: its output
    is ready once the steps queued before it and itself have run."""

    device_free = 0.0

    def __init__(self, seconds: float):
        start = max(time.perf_counter(), _Step.device_free)
        self.ready_at = _Step.device_free = start + seconds

    def block_until_ready(self):
        time.sleep(max(0.0, self.ready_at - time.perf_counter()))
        return self


@pytest.mark.parametrize("host_seconds, expected", [(0.004, 0.0), (0.08, 0.5)])
def test_idle_share_counts_only_time_the_device_had_no_step(host_seconds, expected):
    # A step of 40 ms. A host that hands over a batch every 4 ms keeps the device busy even
    # though the loop sits in the loader most of the time; one that needs 80 ms leaves the
    # device idle half of the time.
    from mkln_jax.train import IdleWatch

    watch, _Step.device_free = IdleWatch(), 0.0
    try:
        for _ in range(12):
            time.sleep(host_seconds)  # the loader
            watch.dispatched(_Step(0.04))
        time.sleep(0.5)  # the loop synchronises at its log line
        assert watch.share(12) == pytest.approx(expected, abs=0.12)
        assert watch.overall() == pytest.approx(expected, abs=0.12)
    finally:
        watch.close()
