"""Scoring a split with a trained model, and the evaluation report (JSON + markdown)."""

from __future__ import annotations

import json
import pathlib

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from mkln_jax import config_lib, metrics, sharding
from mkln_jax import step as step_lib
from mkln_jax.input_pipeline import loader


def jit_eval_step(model: step_lib.ModelFn, mesh):
    repl = sharding.replicated(mesh)
    return jax.jit(
        step_lib.make_eval_step(model),
        in_shardings=(repl, repl, sharding.batch_sharding(mesh)),
        out_shardings=sharding.batch_sharding(mesh),
    )


def predict_source(
    eval_step, params, batch_stats, source, mesh, batch_size: int, keep: np.ndarray | None = None
) -> np.ndarray:
    """P(fake) for every example of `source` (or those at `keep`), in order: float32[N]."""
    if keep is not None:
        source = loader.Subset(source, keep)
    # Global batch must split evenly over devices and processes.
    multiple = mesh.devices.size
    batch_size = -(-batch_size // multiple) * multiple
    per_process = batch_size // jax.process_count()
    first = jax.process_index() * per_process
    scores = []
    for batch, valid in loader.eval_batches(source, batch_size):
        local = {"image": batch["image"][first : first + per_process]}
        images = sharding.host_to_global(local, mesh)["image"]
        probs = eval_step(params, batch_stats, images)
        probs = multihost_utils.process_allgather(probs, tiled=True)
        scores.append(np.asarray(probs)[:valid])
    return np.concatenate(scores) if scores else np.zeros((0,), np.float32)


def quick_metrics(index: loader.SplitIndex, keep, probs, threshold: float) -> dict[str, float]:
    s = metrics.summary(index.labels[keep], probs, threshold)
    return {k: s[k] for k in ("auc", "eer", "ap", "acc")}


def evaluate_run(config: ml_collections.ConfigDict, workdir: str, split: str | None = None):
    """Scores `split` with the best teacher and student checkpoints; writes
    <workdir>/eval/<split>.json and .md and returns (results, markdown)."""
    from mkln_jax import train  # train imports this module

    config_lib.validate(config)
    split = split or config.eval.split
    mesh = train.make_mesh(config)
    source = loader.open_split(config.data, config_lib.data_dir(config), split)
    index = loader.read_index(source)
    trained = set(config.data.train_methods)
    notes = {m: "seen in training" for m in trained}
    notes.update({m: "NOT seen in training" for m in config.data.methods if m not in trained})
    notes["all"] = "every method"
    results, sections = {}, []
    for stage in config.stages:
        model, frozen, best_step = train.load_best(config, workdir, stage, mesh)
        probs = predict_source(
            jit_eval_step(model, mesh),
            frozen.params,
            frozen.batch_stats,
            source,
            mesh,
            config.eval.batch_size,
        )
        report = metrics.report(
            index.labels, probs, index.methods, index.video_ids, config.eval.threshold
        )
        seen = np.isin(index.methods, ["real", *trained])
        report["seen methods"] = metrics.report(
            index.labels[seen],
            probs[seen],
            index.methods[seen],
            index.video_ids[seen],
            config.eval.threshold,
        )["all"]
        notes["seen methods"] = "reals + " + ", ".join(sorted(trained))
        results[stage] = {
            "model": config[stage].model,
            "checkpoint_step": best_step,
            "split": split,
            "metrics": report,
        }
        sections.append(
            f"### {stage}: {train.describe_model(config, stage)} (best validation checkpoint, "
            f"step {best_step}), {split} split\n\n" + metrics.markdown_table(report, notes)
        )
    markdown = "\n\n".join(sections)
    out_dir = pathlib.Path(workdir) / "eval"
    if jax.process_index() == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / f"{split}.json").write_text(json.dumps(results, indent=2))
        (out_dir / f"{split}.md").write_text(markdown + "\n")
    return results, markdown
