"""A tiny distillation step (small CNN student and teacher) run on any mesh, shared by the
sharding tests of test_step.py and test_scale.py."""

import jax
import numpy as np
import optax
from flax import nnx

from mkln_jax import sharding
from mkln_jax import step as step_lib
from mkln_jax.models.small_cnn import SmallCNN

HPARAMS = {"temperature": 4.0, "alpha": 0.7, "freq_prob": 1.0, "band_drop_prob": 0.3, "jitter": 0.5}
NORM = ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def setup():
    """(step function, student TrainState, teacher Frozen) on the host."""
    student = SmallCNN(2, widths=(8, 16), rngs=nnx.Rngs(0))
    teacher = SmallCNN(2, widths=(8, 8), rngs=nnx.Rngs(1))
    tx = optax.adamw(1e-2)
    s_graph, _, _ = step_lib.split_model(student)
    t_graph, t_params, t_stats = step_lib.split_model(teacher)
    fn = step_lib.make_train_step(
        step_lib.ModelFn(s_graph, *NORM),
        tx,
        teachers=(step_lib.ModelFn(t_graph, *NORM),),
        method=step_lib.Method(frequency_augment=True),
    )
    return fn, step_lib.init_state(student, tx, seed=0), (step_lib.Frozen(t_params, t_stats),)


def batches(count, batch=16, size=16):
    rng = np.random.default_rng(0)
    return [
        {
            "image": rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8),
            "label": rng.integers(0, 2, batch).astype(np.int32),
        }
        for _ in range(count)
    ]


def run(mesh, fsdp_min_size: int = 2**30, steps: int = 3):
    """Runs `steps` steps on `mesh`; leaves of >= fsdp_min_size elements are fsdp-sharded.

    Returns (losses, final state on the host, teacher before, teacher after, number of
    parameter leaves that were really sharded).
    """
    fn, state, frozen = setup()
    state_sh = sharding.state_shardings(state, mesh, fsdp_min_size)
    frozen_sh = sharding.state_shardings(frozen, mesh, fsdp_min_size)
    repl = sharding.replicated(mesh)
    jitted = jax.jit(
        fn,
        in_shardings=(state_sh, frozen_sh, sharding.batch_sharding(mesh), repl),
        out_shardings=(state_sh, repl),
        donate_argnums=0,
    )
    state = sharding.place(jax.device_get(state), state_sh)
    frozen = sharding.place(jax.device_get(frozen), frozen_sh)
    teacher_before = jax.device_get(frozen)
    hparams = sharding.place(
        {k: np.float32(v) for k, v in HPARAMS.items()}, dict.fromkeys(HPARAMS, repl)
    )
    losses = []
    for batch in batches(steps):
        state, metrics = jitted(state, frozen, sharding.host_to_global(batch, mesh), hparams)
        losses.append(float(metrics["loss"]))
    sharded = [x for x in jax.tree.leaves(state.params) if not x.sharding.is_fully_replicated]
    return losses, jax.device_get(state), teacher_before, jax.device_get(frozen), len(sharded)
