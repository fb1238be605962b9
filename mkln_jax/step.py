"""The jitted train and eval steps: pure functions over pytrees, no I/O.

Models are NNX modules split once into a static graph definition and array state (params,
BatchNorm statistics); the step merges them inside `jit` (the NNX "functional loop"). Only the
trained model's state is donated; the teacher's variables are a separate argument, never closed
over, so they are not baked into the compiled program as constants.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from mkln_jax import distill, frequency


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any  # nnx.State of nnx.Param
    batch_stats: Any  # nnx.State of nnx.BatchStat
    opt_state: Any
    rng: jax.Array  # uint32[2] raw key, split once per step
    nonfinite: jax.Array  # int32: steps whose loss or gradients were not finite (not applied)


@flax.struct.dataclass
class Frozen:
    """A frozen model's variables (the teacher), passed to the step as an argument."""

    params: Any
    batch_stats: Any


@dataclasses.dataclass(frozen=True)
class ModelFn:
    """What the step needs to run one model: its graph and input normalisation."""

    graphdef: Any
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    compute_dtype: Any = jnp.float32

    def normalise(self, images01: jax.Array) -> jax.Array:
        mean = jnp.asarray(self.mean, jnp.float32)
        std = jnp.asarray(self.std, jnp.float32)
        return ((images01 - mean) / std).astype(self.compute_dtype)

    def apply(self, params, batch_stats, images01: jax.Array, train: bool):
        """Returns (logits float32[B, K], updated batch_stats)."""
        # Fresh Variable objects in the current trace (merge would reuse the caller's).
        params, batch_stats = jax.tree.map(lambda x: x, (params, batch_stats))
        model = nnx.merge(self.graphdef, params, batch_stats)
        logits = model(self.normalise(images01), train=train)
        return logits.astype(jnp.float32), nnx.state(model, nnx.BatchStat)


def split_model(model: nnx.Module):
    """(graphdef, params, batch_stats) of an NNX module."""
    graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    return graphdef, params, batch_stats


def init_state(model: nnx.Module, tx: optax.GradientTransformation, seed: int) -> TrainState:
    _, params, batch_stats = split_model(model)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=batch_stats,
        opt_state=tx.init(params),
        rng=jax.random.key_data(jax.random.key(seed)),
        nonfinite=jnp.zeros((), jnp.int32),
    )


def to_unit_range(images: jax.Array) -> jax.Array:
    """uint8[B, H, W, 3] -> float32 in [0, 1]."""
    return images.astype(jnp.float32) / 255.0


def make_train_step(
    student: ModelFn,
    tx: optax.GradientTransformation,
    *,
    teacher: ModelFn | None,
    frequency_augment: bool,
) -> Callable:
    """Builds step(state, teacher_vars, batch, hparams) -> (state, metrics).

    batch: {"image": uint8[B, H, W, 3], "label": int32[B]}. hparams: float32 scalars
    {temperature, alpha, freq_prob, band_drop_prob, jitter}, traced so sweeps never recompile.
    Without a teacher the loss is plain cross-entropy (the teacher's own fine-tuning stage).
    The teacher sees the clean image, the student the frequency-augmented view.
    """

    def step(state: TrainState, teacher_vars: Frozen | None, batch, hparams):
        rng, aug_key = jax.random.split(jax.random.wrap_key_data(state.rng))
        clean = to_unit_range(batch["image"])
        labels = batch["label"]
        view = clean
        if frequency_augment:
            view = frequency.frequency_augment(
                aug_key,
                clean,
                prob=hparams["freq_prob"],
                band_drop_prob=hparams["band_drop_prob"],
                jitter=hparams["jitter"],
            )
            view = jnp.clip(view, 0.0, 1.0)
        teacher_logits = None
        if teacher is not None:
            teacher_logits, _ = teacher.apply(
                teacher_vars.params, teacher_vars.batch_stats, clean, train=False
            )
            teacher_logits = jax.lax.stop_gradient(teacher_logits)

        def loss_fn(params):
            logits, batch_stats = student.apply(params, state.batch_stats, view, train=True)
            if teacher_logits is None:
                loss = distill.cross_entropy(logits, labels)
                parts = {"ce": loss}
            else:
                loss, parts = distill.hinton_kd_loss(
                    logits,
                    teacher_logits,
                    labels,
                    temperature=hparams["temperature"],
                    alpha=hparams["alpha"],
                )
            return loss, (parts, batch_stats, logits)

        (loss, (parts, batch_stats, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params
        )
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        grad_norm = optax.tree.norm(grads)
        # NaN/Inf guard: a non-finite step changes nothing but the counters, so the state (and
        # every checkpoint of it) stays good; the loop stops on the count.
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        params, opt_state, batch_stats = jax.tree.map(
            lambda new, old: jnp.where(finite, new, old),
            (params, opt_state, batch_stats),
            (state.params, state.opt_state, state.batch_stats),
        )
        metrics = {
            "loss": loss,
            "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels),
            "grad_norm": grad_norm,
            **parts,
        }
        if teacher_logits is not None:
            metrics["teacher_accuracy"] = jnp.mean(jnp.argmax(teacher_logits, -1) == labels)
        new_state = state.replace(
            step=state.step + 1,
            params=params,
            batch_stats=batch_stats,
            opt_state=opt_state,
            rng=jax.random.key_data(rng),
            nonfinite=state.nonfinite + jnp.where(finite, 0, 1).astype(jnp.int32),
        )
        return new_state, metrics

    return step


def make_eval_step(model: ModelFn) -> Callable:
    """eval(params, batch_stats, images uint8[B, H, W, 3]) -> P(fake) float32[B]."""

    def eval_step(params, batch_stats, images):
        logits, _ = model.apply(params, batch_stats, to_unit_range(images), train=False)
        return jax.nn.softmax(logits, axis=-1)[:, 1]

    return eval_step
