"""Classification and distillation losses, in float32 whatever the compute dtype.

Hinton et al. (2015), "Distilling the Knowledge in a Neural Network":
    loss = alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(s, y)
with the KL summed over classes and averaged over the batch. `temperature` and `alpha` may be
traced scalars, so sweeping them never recompiles the step.
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
