"""A population of students in one jitted step equals separate runs, member by member, with the
augmented view and the teacher's forward pass computed once per batch."""

import distill_setup
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from mkln_jax import population, sharding
from mkln_jax import step as step_lib
from mkln_jax.models.small_cnn import SmallCNN

TEMPERATURES = (1.0, 4.0, 8.0)
STEPS = 4


def _sgd():
    return optax.sgd(1e-2, momentum=0.9)


def _models(probe=None, tx=None):
    """Student and teacher step functions; `probe` counts the teacher's forward passes."""
    student = SmallCNN(2, widths=(8, 16), rngs=nnx.Rngs(0))
    teacher = SmallCNN(2, widths=(12, 12), rngs=nnx.Rngs(1))
    tx = tx or _sgd()
    s_graph, _, _ = step_lib.split_model(student)
    t_graph, t_params, t_stats = step_lib.split_model(teacher)
    teacher_fn = (_Probed if probe is not None else step_lib.ModelFn)(t_graph, *distill_setup.NORM)
    if probe is not None:
        object.__setattr__(teacher_fn, "probe", probe)
    return (
        step_lib.ModelFn(s_graph, *distill_setup.NORM),
        tx,
        (teacher_fn,),
        (step_lib.Frozen(t_params, t_stats),),
        step_lib.init_state(student, tx, seed=0),
    )


class _Probed(step_lib.ModelFn):
    """A teacher that calls back once per forward pass actually computed (under vmap, a
    callback runs once per member whose input differs)."""

    def apply(self, params, batch_stats, images01, train, call=None):
        jax.debug.callback(lambda x: self.probe.append(x.shape), images01)
        return super().apply(params, batch_stats, images01, train, call)


def _hparams(temperature, **extra):
    return step_lib.HParams.create(**{**distill_setup.HPARAMS, "temperature": temperature, **extra})


def _separate(temperature, tx=None):
    student, tx, teachers, frozen, state = _models(tx=tx)
    step = jax.jit(
        step_lib.make_train_step(student, tx, teachers=teachers, method=_METHOD),
        donate_argnums=0,
    )
    losses = []
    for batch in distill_setup.batches(STEPS):
        state, metrics = step(state, frozen, batch, _hparams(temperature))
        losses.append([float(metrics["loss"]), float(metrics["grad_norm"])])
    return np.asarray(losses).T, jax.device_get(state)


_METHOD = step_lib.Method(frequency_augment=True, teacher_input="view")


def _population(temperatures, probe=None, mesh=None, tx=None):
    student, tx, teachers, frozen, state = _models(probe, tx)
    fn = step_lib.make_population_step(student, tx, teachers=teachers, method=_METHOD)
    states = population.stack([state] * len(temperatures))
    hps = population.stack([_hparams(t) for t in temperatures])
    if mesh is None:
        step = jax.jit(fn, donate_argnums=0)
        place = lambda batch: batch
    else:
        state_sh = population.state_shardings(states, mesh)
        repl = sharding.replicated(mesh)
        step = jax.jit(
            fn,
            in_shardings=(
                state_sh,
                repl,
                sharding.batch_sharding(mesh),
                population.member_sharding(hps, mesh),
            ),
            out_shardings=(state_sh, population.member_sharding(None, mesh)),
            donate_argnums=0,
        )
        states = sharding.place(jax.device_get(states), state_sh)
        place = lambda batch: sharding.host_to_global(batch, mesh)
    losses = []
    for batch in distill_setup.batches(STEPS):
        states, metrics = step(states, frozen, place(batch), hps)
        losses.append(np.stack([metrics["loss"], metrics["grad_norm"]], axis=-1))
    # [member, loss or gradient norm, step]
    return np.stack(losses, axis=-1), jax.device_get(states), step


def _assert_member_equals(states, k, single_state, adam=False):
    """Member k's variables equal a single run's. The programs differ (vmap batches the
    student's operations), so sums run in another order: with SGD every element stays within
    rtol 1e-5. Adam's update lr * m / (sqrt(v) + eps) turns a 1e-7 relative change of a gradient
    element near eps (1e-8) into a visible change of that element; there, every element within
    lr / 200 and all but 0.5% within rtol 1e-5."""
    member = population.take(states, k)
    close = total = 0
    for a, b in zip(
        jax.tree.leaves((member.params, member.batch_stats)),
        jax.tree.leaves((single_state.params, single_state.batch_stats)),
        strict=True,
    ):
        if not adam:
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(a, b, atol=5e-5)
        close += int(np.isclose(a, b, rtol=1e-5, atol=1e-6).sum())
        total += a.size
    assert close >= 0.995 * total, f"{total - close} of {total} elements differ"


@pytest.mark.slow  # four programs compiled
def test_a_population_of_three_temperatures_equals_three_separate_runs():
    probe = []
    losses, states, step = _population(TEMPERATURES, probe=probe)
    assert step._cache_size() == 1  # one compilation for the population, all steps
    # One teacher forward per step, on the batch's B images (not K x B).
    assert len(probe) == STEPS and all(shape[0] == 16 for shape in probe), probe
    for k, temperature in enumerate(TEMPERATURES):
        single_losses, single_state = _separate(temperature)
        np.testing.assert_allclose(losses[k], single_losses, rtol=1e-5)
        _assert_member_equals(states, k, single_state)
    assert not np.allclose(losses[0], losses[2])  # the settings did reach the members
    # AdamW, as training uses it: losses and gradient norms as tight, variables see above.
    adam_losses, adam_states, _ = _population(TEMPERATURES, tx=optax.adamw(1e-2))
    single_losses, single_state = _separate(8.0, tx=optax.adamw(1e-2))
    np.testing.assert_allclose(adam_losses[2], single_losses, rtol=1e-5)
    _assert_member_equals(adam_states, 2, single_state, adam=True)


@pytest.mark.slow
def test_members_that_differ_in_augmentation_get_their_own_views_from_common_keys():
    student, tx, teachers, frozen, state = _models()
    strengths = (0.2, 0.9)
    fn = step_lib.make_population_step(
        student, tx, teachers=teachers, method=_METHOD, shared_augment=False
    )
    states = population.stack([state] * 2)
    hps = population.stack([_hparams(4.0, band_drop_prob=p) for p in strengths])
    batch = distill_setup.batches(1)[0]
    new_states, metrics = jax.jit(fn)(states, frozen, batch, hps)
    single = jax.jit(step_lib.make_train_step(student, tx, teachers=teachers, method=_METHOD))
    for k, p in enumerate(strengths):
        single_state, single_metrics = single(state, frozen, batch, _hparams(4.0, band_drop_prob=p))
        np.testing.assert_allclose(metrics["loss"][k], single_metrics["loss"], rtol=1e-5)
        _assert_member_equals(new_states, k, single_state)


@pytest.mark.slow
def test_a_member_gone_non_finite_is_frozen_and_the_others_are_unaffected():
    # Temperature 0 divides the logits by zero: that member's loss is NaN from the first step.
    losses, states, _ = _population((4.0, 0.0, 8.0))
    nonfinite = np.asarray(states.nonfinite)
    assert nonfinite.tolist() == [0, STEPS, 0]
    _, _, _, _, initial = _models()
    frozen_member = population.take(states, 1)
    pairs = zip(jax.tree.leaves(frozen_member.params), jax.tree.leaves(initial.params), strict=True)
    for a, b in pairs:
        np.testing.assert_array_equal(a, b)  # never updated
    without, states_without, _ = _population((4.0, 8.0))
    np.testing.assert_allclose(losses[[0, 2]], without, rtol=1e-5)
    _assert_member_equals(states, 0, population.take(states_without, 0))
    _assert_member_equals(states, 2, population.take(states_without, 1))


@pytest.mark.slow
def test_a_population_sharded_over_population_and_data_equals_the_unsharded_one():
    assert jax.device_count() == 8, "conftest sets 8 fake CPU devices"
    temperatures = (1.0, 4.0)
    mesh = population.make_mesh(population_size=2, num_data=4)
    assert dict(mesh.shape) == {"population": 2, "data": 4, "fsdp": 1}
    losses_sharded, states_sharded, _ = _population(temperatures, mesh=mesh)
    losses, states, _ = _population(temperatures)
    np.testing.assert_allclose(losses_sharded, losses, rtol=1e-5)
    for k in range(2):
        _assert_member_equals(states_sharded, k, population.take(states, k))


@pytest.mark.slow
def test_the_population_benchmark_runs_at_a_tiny_size():
    import pathlib
    import subprocess
    import sys

    repo = pathlib.Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [
            sys.executable,
            "bench/population_bench.py",
            "--cases=tiny",
            "--sizes=2",
            "--steps=1",
            "--size=32",
            "--batch=8",
            "--run_steps=10",
        ],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    row = next(line for line in done.stdout.splitlines() if line.startswith("| 2 |"))
    assert len(row.split("|")) == 9  # K, step, K single steps, ratios, compile, sweep ratio


def test_a_step_too_large_for_the_host_is_refused_before_step_one(monkeypatch):
    from mkln_jax import config_lib, experiment
    from mkln_jax.backends.cpu import hostmem

    compiled = jax.jit(lambda x: jnp.tanh(x @ x) @ x).lower(jnp.ones((256, 256))).compile()
    need = experiment.step_bytes(compiled)
    assert need and need >= 2 * 256 * 256 * 4  # the argument and the result at least
    experiment.check_step_memory(compiled, "student", population_size=8)  # fits this host
    monkeypatch.setattr(hostmem, "available_bytes", lambda: 1024)
    monkeypatch.setattr(hostmem, "resident_bytes", lambda: 0)
    with pytest.raises(config_lib.ConfigError) as err:
        experiment.check_step_memory(compiled, "student", population_size=8)
    message = str(err.value)
    assert "\n" not in message and message.startswith("[student] the compiled step needs about")
    assert "fewer than 8 members" in message and "Fix:" in message
    with pytest.raises(config_lib.ConfigError) as err:
        experiment.check_step_memory(compiled, "teacher")
    assert "members" not in str(err.value)
