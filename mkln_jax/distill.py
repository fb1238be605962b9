"""Classification and distillation losses, in float32 whatever the compute dtype.

Hinton et al. (2015), "Distilling the Knowledge in a Neural Network":
    loss = alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(s, y)
with the KL summed over classes and averaged over the batch. `temperature` and `alpha` may be
traced scalars, so sweeping them never recompiles the step.

Also here: several weighted teachers (a weighted mean of their KD terms), Deep Mutual Learning
(Zhang et al., CVPR 2018: each peer matches the other's stop-gradient posterior), feature
distillation (a learned projection of the student's features onto the teacher's, L2 or cosine),
and schedules for the traced scalars.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy. logits: float[B, K], labels: int[B] -> float32[]."""
    logits = logits.astype(jnp.float32)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def kd_kl(
    student_logits: jax.Array, teacher_logits: jax.Array, temperature: float | jax.Array
) -> jax.Array:
    """T^2 * KL(softmax(t/T) || softmax(s/T)), summed over classes, mean over batch: float32[].

    The teacher side is a stop-gradient target.
    """
    temperature = jnp.asarray(temperature, jnp.float32)
    teacher_logits = jax.lax.stop_gradient(teacher_logits.astype(jnp.float32))
    teacher_log_probs = jax.nn.log_softmax(teacher_logits / temperature, axis=-1)
    student_log_probs = jax.nn.log_softmax(
        student_logits.astype(jnp.float32) / temperature, axis=-1
    )
    kl = jnp.sum(jnp.exp(teacher_log_probs) * (teacher_log_probs - student_log_probs), axis=-1)
    return temperature**2 * kl.mean()


def hinton_kd_loss(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    labels: jax.Array,
    *,
    temperature: float | jax.Array,
    alpha: float | jax.Array,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Hinton KD: alpha * T^2 KL + (1 - alpha) CE. Returns (loss, {"ce", "kd"})."""
    ce = cross_entropy(student_logits, labels)
    kd = kd_kl(student_logits, teacher_logits, temperature)
    alpha = jnp.asarray(alpha, jnp.float32)
    return alpha * kd + (1.0 - alpha) * ce, {"ce": ce, "kd": kd}


def multi_teacher_kd(
    student_logits: jax.Array,
    teacher_logits: tuple[jax.Array, ...],
    weights: jax.Array,
    temperature: float | jax.Array,
) -> jax.Array:
    """Weighted mean over teachers of `kd_kl`; weights: float[n_teachers] (normalised here)."""
    weights = jnp.asarray(weights, jnp.float32)
    terms = jnp.stack([kd_kl(student_logits, t, temperature) for t in teacher_logits])
    return jnp.sum(weights * terms) / jnp.sum(weights)


def mutual_kl(logits: jax.Array, peer_logits: jax.Array) -> jax.Array:
    """Deep Mutual Learning's term for one peer: KL(p_peer || p_self) at temperature 1, the
    peer's posterior a stop-gradient target, so its gradient reaches only this peer."""
    return kd_kl(logits, peer_logits, 1.0)


def feature_loss(projected: jax.Array, target: jax.Array, kind: str) -> jax.Array:
    """Feature distillation: projected student features against the (stop-gradient) teacher's.

    "cosine": mean of 1 - cos; "l2": mean over the batch of the squared distance per dimension.
    projected, target: float[B, D] -> float32[].
    """
    projected = projected.astype(jnp.float32)
    target = jax.lax.stop_gradient(target.astype(jnp.float32))
    if kind == "cosine":
        cos = optax.losses.cosine_similarity(projected, target, epsilon=1e-6)
        return jnp.mean(1.0 - cos)
    if kind == "l2":
        return jnp.mean(jnp.square(projected - target))
    raise ValueError(f"feature loss must be 'cosine' or 'l2', got {kind!r}")


SCHEDULES = ("constant", "linear", "cosine")


def scheduled(kind: str, start, end, progress) -> jax.Array:
    """A traced scalar moving from `start` to `end` as `progress` goes 0 -> 1 (clipped).

    kind: "constant" (always start), "linear", or "cosine" (half-cosine, flat at both ends).
    """
    start = jnp.asarray(start, jnp.float32)
    if kind == "constant":
        return start
    progress = jnp.clip(jnp.asarray(progress, jnp.float32), 0.0, 1.0)
    if kind == "linear":
        frac = progress
    elif kind == "cosine":
        frac = 0.5 * (1.0 - jnp.cos(jnp.pi * progress))
    else:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {kind!r}")
    return start + frac * (jnp.asarray(end, jnp.float32) - start)
