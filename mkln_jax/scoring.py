"""P(fake) for every example of a split, on the mesh: the jitted evaluation step (optionally
with an on-device perturbation) and the loop that feeds it. Used by training's validation and
by evaluation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from mkln_jax import metrics, perturb, sharding
from mkln_jax import step as step_lib
from mkln_jax.input_pipeline import loader, splits
from mkln_jax.logging_utils import ProgressLine


def _shardings(variables):
    """The shardings of a model's variables (arrays, or shardings already): replicated for
    data parallelism, split over `fsdp` where the train state is, and evaluation keeps them so."""
    return jax.tree.map(
        lambda x: x if isinstance(x, jax.sharding.Sharding) else x.sharding, variables
    )


def jit_eval_step(model: step_lib.ModelFn, mesh, variables, with_margin: bool = False):
    """eval(params, batch_stats, images uint8) -> P(fake); `variables`: (params, batch_stats)
    as arrays or their shardings, which the compiled step takes as they are."""
    variables = (_shardings(variables[0]), _shardings(variables[1]))
    return jax.jit(
        sharding.variables_gathered(step_lib.make_eval_step(model, with_margin), variables),
        in_shardings=(*variables, sharding.batch_sharding(mesh)),
        out_shardings=sharding.batch_sharding(mesh),
    )


def jit_perturbed_eval_step(model: step_lib.ModelFn, mesh, variables, name: str, severity: int):
    """eval(params, batch_stats, images uint8, key) -> P(fake), the images perturbed on the
    device first (mkln_jax/perturb.py)."""
    repl = sharding.replicated(mesh)
    variables = (_shardings(variables[0]), _shardings(variables[1]))
    plain = step_lib.make_eval_step(model)

    def eval_step(params, batch_stats, images, key):
        x = perturb.apply(name, severity, key, images.astype(jnp.float32) / 255.0)
        # Back to 8-bit pixels, as a perturbed image reaches a detector in practice.
        return plain(params, batch_stats, jnp.round(x * 255.0).astype(jnp.uint8))

    return jax.jit(
        sharding.variables_gathered(eval_step, variables),
        in_shardings=(*variables, sharding.batch_sharding(mesh), repl),
        out_shardings=sharding.batch_sharding(mesh),
    )


def predict_source(
    eval_step,
    params,
    batch_stats,
    source,
    mesh,
    batch_size: int,
    keep: np.ndarray | None = None,
    key: jax.Array | None = None,
    progress: str = "",
) -> np.ndarray:
    """P(fake) for every example of `source` (or those at `keep`), in order: float32[N]. With
    `key`, eval_step also takes a key, a different one per batch (fold_in of the batch number).
    `progress`: a label for a frames-done line with ETA (every 30 s; process 0), for long
    evaluations."""
    if keep is not None:
        source = loader.Subset(source, keep)
    # Global batch must split evenly over devices and processes.
    multiple = mesh.devices.size
    batch_size = -(-batch_size // multiple) * multiple
    scores = []
    bar = None
    if progress and jax.process_index() == 0:
        bar = ProgressLine(len(source), what=progress, unit="frames", per_minute=False)
    # Each process reads and decodes only its rows of every global batch.
    for number, (local, valid) in enumerate(loader.eval_batches(source, batch_size)):
        images = sharding.host_to_global(local, mesh)["image"]
        if key is None:
            probs = eval_step(params, batch_stats, images)
        else:
            probs = eval_step(params, batch_stats, images, jax.random.fold_in(key, number))
        probs = multihost_utils.process_allgather(probs, tiled=True)
        scores.append(np.asarray(probs)[:valid])
        if bar is not None:
            bar.update(sum(len(x) for x in scores))
    return np.concatenate(scores) if scores else np.zeros((0,), np.float32)


def predict_margins(model: step_lib.ModelFn, frozen, source, mesh, batch_size: int) -> np.ndarray:
    """Logit margins (fake minus real) for every example of `source`: float32[N]."""
    return predict_source(
        jit_eval_step(model, mesh, (frozen.params, frozen.batch_stats), with_margin=True),
        frozen.params,
        frozen.batch_stats,
        source,
        mesh,
        batch_size,
    )[:, 1]


def quick_metrics(index: splits.SplitIndex, keep, probs, threshold: float) -> dict[str, float]:
    s = metrics.summary(index.labels[keep], probs, threshold)
    return {k: s[k] for k in ("auc", "eer", "ap", "acc")}
