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
import numpy as np
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


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, kw_only=True)
class HParams:
    """The step's numbers: float32 leaves, traced, so changing them never recompiles. A name
    that is not a field is an error (`HParams.create(temprature=4)` raises), never a silent
    default. Defaults make a field inert where its part of the step is off."""

    temperature: jax.Array = 1.0  # Hinton KD temperature (start of a schedule)
    alpha: jax.Array = 0.0  # weight of KD against CE (start of a schedule)
    temperature_end: jax.Array = 1.0  # schedule ends (Method.schedule)
    alpha_end: jax.Array = 0.0
    total_steps: jax.Array = 1.0  # the schedules' length
    mutual_weight: jax.Array = 1.0  # Deep Mutual Learning's KL weight
    feature_weight: jax.Array = 1.0  # feature distillation's weight
    # frequency.AUGMENT_DEFAULTS, with its gate `prob` named freq_prob here
    freq_prob: jax.Array = frequency.AUGMENT_DEFAULTS["prob"]
    jitter_prob: jax.Array = frequency.AUGMENT_DEFAULTS["jitter_prob"]
    jitter: jax.Array = frequency.AUGMENT_DEFAULTS["jitter"]
    band_drop_prob: jax.Array = frequency.AUGMENT_DEFAULTS["band_drop_prob"]
    drop_strength: jax.Array = frequency.AUGMENT_DEFAULTS["drop_strength"]
    noise_prob: jax.Array = frequency.AUGMENT_DEFAULTS["noise_prob"]
    noise_std: jax.Array = frequency.AUGMENT_DEFAULTS["noise_std"]
    mix_prob: jax.Array = frequency.AUGMENT_DEFAULTS["mix_prob"]
    mix_strength: jax.Array = frequency.AUGMENT_DEFAULTS["mix_strength"]
    teacher_weights: jax.Array | None = None  # float32[n_teachers]; None = equal weights

    @classmethod
    def create(cls, **values) -> HParams:
        """Every value as float32 (host values stay numpy, so the caller chooses placement)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - fields)
        if unknown:
            raise TypeError(f"unknown step hyper-parameter(s) {unknown}; known: {sorted(fields)}")
        merged = {f.name: f.default for f in dataclasses.fields(cls)} | values
        return cls(**{k: _float32(v) for k, v in merged.items()})

    def augment_settings(self) -> dict[str, jax.Array]:
        """The keyword arguments of frequency.frequency_augment."""
        return {
            k: getattr(self, "freq_prob" if k == "prob" else k) for k in frequency.AUGMENT_DEFAULTS
        }


def _float32(value):
    if value is None:
        return None
    if isinstance(value, jax.Array):  # also a tracer, when a mapping arrives inside jit
        return value.astype(jnp.float32)
    return np.asarray(value, np.float32)


def as_hparams(hparams) -> HParams:
    """`hparams` as HParams; a mapping is checked name by name (a wrong name raises)."""
    return hparams if isinstance(hparams, HParams) else HParams.create(**dict(hparams))


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

    def apply(self, params, batch_stats, images01: jax.Array, train: bool, call=None):
        """Returns (logits float32[B, K], updated batch_stats); with `call(model, x, train)`,
        that function's outputs (float32) instead of the logits."""
        # Fresh Variable objects in the current trace (merge would reuse the caller's).
        params, batch_stats = jax.tree.map(lambda x: x, (params, batch_stats))
        model = nnx.merge(self.graphdef, params, batch_stats)
        x = self.normalise(images01)
        out = call(model, x, train) if call else model(x, train=train)
        out = jax.tree.map(lambda y: y.astype(jnp.float32), out)
        return out, nnx.state(model, nnx.BatchStat)


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


@dataclasses.dataclass(frozen=True)
class Method:
    """The static (compile-time) choices of a training step; numbers live in hparams.

    frequency_augment: the trained model sees a frequency-texture augmented view.
    augment_block: 0 = full-image spectrum, 8 = JPEG's 8 x 8 block spectra.
    teacher_input: "clean" (teachers see the clean image) or "view" (they see exactly the view
        the student sees: "consistent teaching", Beyer et al., CVPR 2022).
    schedule: how temperature and alpha move from their start to their end values over the
        stage ("constant", "linear", "cosine"; see distill.scheduled).
    mutual: the trained model is a `Peers` pair, both updated by Deep Mutual Learning.
    feature_loss: "" (off), "cosine" or "l2": the trained model's `feature_projectors` map its
        pooled features onto each teacher's.
    augment_mix, augment_noise: whether the program holds frequency mixing and high-band noise
        at all (experiment.method turns them off where their probability is 0 for every
        model trained, so they cost nothing; their numbers stay traced).
    """

    frequency_augment: bool = False
    augment_block: int = 0
    augment_mix: bool = True
    augment_noise: bool = True
    teacher_input: str = "clean"
    schedule: str = "constant"
    mutual: bool = False
    feature_loss: str = ""


def _features_and_logits(model, x, train):
    features = model.features(x, train)
    return features, model.head(features)


def _peer_logits(model, x, train):
    return model.peer_logits(x, train)


def _with_projection(model, x, train):
    features, logits = _features_and_logits(model, x, train)
    return model.feature_projectors(features), logits


def _step_parts(student, tx, teachers, method):
    """The two halves of a train step: `views` (the augmented view and the teachers' outputs,
    which depend on the data, the shared key and the augmentation settings only) and `update`
    (one trained model's loss, gradients and optimiser update). A population step computes the
    first once per batch and maps the second over its members."""
    if method.feature_loss and (not teachers or method.mutual):
        raise ValueError("feature distillation needs teachers and a single (non-mutual) student")

    def augment(rng, batch, hp):
        rng, aug_key = jax.random.split(jax.random.wrap_key_data(rng))
        clean = to_unit_range(batch["image"])
        view = clean
        if method.frequency_augment:
            view = frequency.frequency_augment(
                aug_key,
                clean,
                labels=batch["label"],
                block=method.augment_block,
                mix=method.augment_mix,
                noise=method.augment_noise,
                **hp.augment_settings(),
            )
            view = jnp.clip(view, 0.0, 1.0)
        return jax.random.key_data(rng), clean, view

    def teach(teacher_vars, image):
        teacher_logits, teacher_features = [], []
        for model_fn, frozen in zip(teachers, teacher_vars or (), strict=True):
            if method.feature_loss:
                (features, logits), _ = model_fn.apply(
                    frozen.params, frozen.batch_stats, image, False, _features_and_logits
                )
                teacher_features.append(jax.lax.stop_gradient(features.astype(jnp.float32)))
            else:
                logits, _ = model_fn.apply(frozen.params, frozen.batch_stats, image, False)
            teacher_logits.append(jax.lax.stop_gradient(logits))
        return tuple(teacher_logits), tuple(teacher_features)

    def update(state: TrainState, hp: HParams, labels, view, targets, rng):
        teacher_logits, teacher_features = targets
        progress = state.step / jnp.maximum(hp.total_steps, 1.0)
        temperature = distill.scheduled(
            method.schedule, hp.temperature, hp.temperature_end, progress
        )
        alpha = distill.scheduled(method.schedule, hp.alpha, hp.alpha_end, progress)
        weights = hp.teacher_weights
        if weights is None:
            weights = jnp.ones((len(teachers),), jnp.float32)

        def supervised(logits):
            """CE, or Hinton KD against the weighted teachers."""
            ce = distill.cross_entropy(logits, labels)
            if not teachers:
                return ce, {"ce": ce}
            kd = distill.multi_teacher_kd(logits, teacher_logits, weights, temperature)
            return alpha * kd + (1.0 - alpha) * ce, {"ce": ce, "kd": kd}

        def loss_fn(params):
            if method.mutual:
                (first, second), batch_stats = student.apply(
                    params, state.batch_stats, view, True, _peer_logits
                )
                loss_a, parts_a = supervised(first)
                loss_b, parts_b = supervised(second)
                dml_a = distill.mutual_kl(first, second)
                dml_b = distill.mutual_kl(second, first)
                weight = hp.mutual_weight
                loss = loss_a + weight * dml_a + loss_b + weight * dml_b
                parts = {f"peer1_{k}": v for k, v in parts_a.items()}
                parts |= {f"peer2_{k}": v for k, v in parts_b.items()}
                parts |= {
                    "peer1_mutual": dml_a,
                    "peer2_mutual": dml_b,
                    "peer2_accuracy": jnp.mean(jnp.argmax(second, -1) == labels),
                }
                return loss, (parts, batch_stats, first)
            if method.feature_loss:
                (projected, logits), batch_stats = student.apply(
                    params, state.batch_stats, view, True, _with_projection
                )
                loss, parts = supervised(logits)
                feats = jnp.stack(
                    [
                        distill.feature_loss(p, t, method.feature_loss)
                        for p, t in zip(projected, teacher_features, strict=True)
                    ]
                )
                feat = jnp.sum(weights * feats) / jnp.sum(weights)
                loss = loss + hp.feature_weight * feat
                return loss, (parts | {"feature": feat}, batch_stats, logits)
            logits, batch_stats = student.apply(params, state.batch_stats, view, True)
            loss, parts = supervised(logits)
            return loss, (parts, batch_stats, logits)

        (loss, (parts, batch_stats, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params
        )
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        grad_norm = optax.tree.norm(grads)
        # NaN/Inf guard: a non-finite step changes nothing but the counter, so the state (and
        # every checkpoint of it) stays good. A model that went non-finite once stays frozen:
        # the loop stops a single run on the count, and a population goes on without it.
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & (state.nonfinite == 0)
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
        if teachers:
            metrics["teacher_accuracy"] = jnp.mean(jnp.argmax(teacher_logits[0], -1) == labels)
            metrics["temperature"] = temperature
            metrics["alpha"] = alpha
        new_state = state.replace(
            step=state.step + 1,
            params=params,
            batch_stats=batch_stats,
            opt_state=opt_state,
            rng=rng,
            nonfinite=state.nonfinite + jnp.where(finite, 0, 1).astype(jnp.int32),
        )
        return new_state, metrics

    def views(rng, teacher_vars, batch, hp):
        rng, clean, view = augment(rng, batch, hp)
        targets = teach(teacher_vars, view if method.teacher_input == "view" else clean)
        return rng, view, targets

    return augment, teach, views, update


def make_train_step(
    student: ModelFn,
    tx: optax.GradientTransformation,
    *,
    teachers: tuple[ModelFn, ...] = (),
    method: Method = Method(),
) -> Callable:
    """Builds step(state, teacher_vars, batch, hparams) -> (state, metrics).

    batch: {"image": uint8[B, H, W, 3], "label": int32[B]}. teacher_vars: a tuple of `Frozen`,
    one per teacher (or None without teachers). hparams: an `HParams` (or a mapping of its field
    names, checked), traced so sweeps never recompile.

    Loss of one model: (1 - alpha) CE + alpha * weighted KD over teachers (CE alone without
    teachers) [+ feature_weight * feature loss]. Mutual: the sum over both peers of that, plus
    mutual_weight * KL(other peer || this peer) for each, the other peer a stop-gradient target.
    """
    _, _, views, update = _step_parts(student, tx, teachers, method)

    def step(state: TrainState, teacher_vars, batch, hparams):
        hp = as_hparams(hparams)
        rng, view, targets = views(state.rng, teacher_vars, batch, hp)
        return update(state, hp, batch["label"], view, targets, rng)

    return step


def make_population_step(
    student: ModelFn,
    tx: optax.GradientTransformation,
    *,
    teachers: tuple[ModelFn, ...] = (),
    method: Method = Method(),
    shared_augment: bool = True,
) -> Callable:
    """Builds step(states, teacher_vars, batch, hparams) -> (states, metrics) for a population
    of K students: `states` and `hparams` carry a leading member axis (an HParams whose leaves
    are [K, ...]); the batch and the teachers are shared.

    Every member sees the same batch and the same random numbers (the augmentation key of
    member 0; members are created with one data seed, so their keys are equal), so members
    differ by their settings alone. With `shared_augment` (no augmentation setting varies over
    the population) the augmented view and the teachers' forward passes are computed once per
    batch; otherwise each member's view is made with its own settings and the teachers run once
    per member only when they see that view (`teacher_input="view"`). Member k's result is the
    single step's with member k's state and settings.
    """
    augment, teach, views, update = _step_parts(student, tx, teachers, method)

    def step(states: TrainState, teacher_vars, batch, hparams):
        hp = as_hparams(hparams)
        labels = batch["label"]
        rng0 = states.rng[0]
        if shared_augment:
            rng, view, targets = views(rng0, teacher_vars, batch, jax.tree.map(_first, hp))
            return jax.vmap(lambda s, h: update(s, h, labels, view, targets, rng))(states, hp)
        if method.teacher_input != "view":
            _, clean, _ = augment(rng0, batch, jax.tree.map(_first, hp))
            targets = teach(teacher_vars, clean)

            def member(s, h):
                rng, _, view = augment(rng0, batch, h)
                return update(s, h, labels, view, targets, rng)

            return jax.vmap(member)(states, hp)

        def member_with_teachers(s, h):
            rng, view, targets = views(rng0, teacher_vars, batch, h)
            return update(s, h, labels, view, targets, rng)

        return jax.vmap(member_with_teachers)(states, hp)

    return step


def _first(x):
    return x[0]


def make_eval_step(model: ModelFn, with_margin: bool = False) -> Callable:
    """eval(params, batch_stats, images uint8[B, H, W, 3]) -> P(fake) float32[B]; with
    `with_margin`, float32[B, 2]: P(fake) and the logit margin (fake minus real, what
    temperature scaling divides)."""

    def eval_step(params, batch_stats, images):
        logits, _ = model.apply(params, batch_stats, to_unit_range(images), train=False)
        probs = jax.nn.softmax(logits, axis=-1)[:, 1]
        if with_margin:
            return jnp.stack([probs, logits[:, 1] - logits[:, 0]], axis=-1)
        return probs

    return eval_step
