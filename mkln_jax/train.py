"""train_and_evaluate(config, workdir): teacher fine-tuning, then student distillation.

Each stage: build the model, create or resume the train state, compile the step ahead of time,
loop with periodic logging, validation and checkpoints. Validation uses reals and the training
methods' fakes only, so model selection never sees the held-out method or the test split.
"""

from __future__ import annotations

import contextlib
import pathlib
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from clu import metrics as clu_metrics
from flax import nnx

from mkln_jax import checkpoint, config_lib, evaluate, models, sharding
from mkln_jax import step as step_lib
from mkln_jax.input_pipeline import loader
from mkln_jax.logging_utils import MetricLogger, Progress

NUM_CLASSES = 2


def mesh_context(mesh):
    """`jax.set_mesh(mesh)` where this jax has it (all shardings here are explicit anyway)."""
    return jax.set_mesh(mesh) if hasattr(jax, "set_mesh") else contextlib.nullcontext()


def make_optimizer(section: ml_collections.ConfigDict) -> optax.GradientTransformation:
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=section.learning_rate,
        warmup_steps=min(section.warmup_steps, section.steps // 2),
        decay_steps=max(section.steps, 1),
        end_value=section.learning_rate * 0.01,
    )
    return optax.adamw(schedule, weight_decay=section.weight_decay)


def hparams(config: ml_collections.ConfigDict) -> dict[str, jax.Array]:
    """The step's traced scalars: changing them never recompiles."""
    values = {
        "temperature": config.distill.temperature,
        "alpha": config.distill.alpha,
        "freq_prob": config.freq_aug.prob,
        "band_drop_prob": config.freq_aug.band_drop_prob,
        "jitter": config.freq_aug.jitter,
    }
    return {k: jnp.asarray(v, jnp.float32) for k, v in values.items()}


def build_model(config, stage: str, *, with_weights: bool = True) -> nnx.Module:
    section = config[stage]
    return models.build(
        section.model,
        NUM_CLASSES,
        seed=config.seed,
        dtype=config.train.compute_dtype,
        pretrained=section.pretrained if with_weights else "",
        cache_dir=config_lib.cache_dir(config),
    )


def model_fn(config, stage: str, graphdef) -> step_lib.ModelFn:
    spec = models.spec(config[stage].model)
    return step_lib.ModelFn(
        graphdef, spec.mean, spec.std, models.DTYPES[config.train.compute_dtype]
    )


def stage_dir(workdir: str | pathlib.Path, stage: str) -> pathlib.Path:
    return pathlib.Path(workdir) / stage


def abstract_train_state(config, stage: str):
    """Graph definition and the abstract TrainState of a stage, without loading any weights."""
    tx = make_optimizer(config[stage])
    model = nnx.eval_shape(lambda: build_model(config, stage, with_weights=False))
    graphdef, _, _ = step_lib.split_model(model)
    abstract = jax.eval_shape(
        lambda: step_lib.init_state(build_model(config, stage, with_weights=False), tx, 0)
    )
    return graphdef, abstract


def load_best(config, workdir, stage: str, mesh) -> tuple[step_lib.ModelFn, step_lib.Frozen, int]:
    """The best-by-validation checkpoint of a finished stage, as frozen variables."""
    graphdef, abstract = abstract_train_state(config, stage)
    ckpts = checkpoint.Checkpoints(stage_dir(workdir, stage) / "checkpoints", keep=1)
    best = ckpts.best_step()
    if best is None:
        ckpts.close()
        raise FileNotFoundError(
            f"no {stage} checkpoint under {stage_dir(workdir, stage)}. Fix: run `mkln train` with "
            f"the same --workdir (stages {tuple(config.stages)}) first."
        )
    state = ckpts.restore(
        "best", best, checkpoint.abstract_like(abstract, sharding.replicated(mesh))
    )
    ckpts.close()
    frozen = step_lib.Frozen(params=state.params, batch_stats=state.batch_stats)
    return model_fn(config, stage, graphdef), frozen, best


def train_stage(config, workdir, stage: str, mesh) -> dict[str, float]:
    section = config[stage]
    out_dir = stage_dir(workdir, stage)
    data_dir = config_lib.data_dir(config)
    train_source = loader.open_split(config.data, data_dir, "train")
    val_source = loader.open_split(config.data, data_dir, "val")
    train_index = loader.training_indices(
        loader.read_index(train_source), config.data.train_methods, config.data.balance
    )
    val_index = loader.read_index(val_source)
    val_keep = np.flatnonzero(np.isin(val_index.methods, ["real", *config.data.train_methods]))

    repl = sharding.replicated(mesh)
    teacher, teacher_vars = None, None
    if stage == "student":
        teacher, teacher_vars, teacher_step = load_best(config, workdir, "teacher", mesh)
        print(f"[{stage}] teacher: {config.teacher.model}, best checkpoint at step {teacher_step}")

    tx = make_optimizer(section)
    ckpts = checkpoint.Checkpoints(out_dir / "checkpoints", keep=config.train.keep_checkpoints)
    graphdef, abstract = abstract_train_state(config, stage)
    start = ckpts.latest_step()
    if start is not None:
        changed = checkpoint.config_differences(ckpts.saved_config(start), config)
        if changed:
            ckpts.close()
            raise config_lib.ConfigError(
                f"{out_dir} holds a run with a different config ({'; '.join(changed)}). Fix: "
                "use a new --workdir, or the config that run was started with."
            )
        state = ckpts.restore("latest", start, checkpoint.abstract_like(abstract, repl))
        print(f"[{stage}] resumed from step {start}")
    else:
        start = 0
        state = jax.device_put(
            step_lib.init_state(build_model(config, stage), tx, config.seed), repl
        )
    student = model_fn(config, stage, graphdef)
    if start >= section.steps:
        ckpts.close()
        print(f"[{stage}] already trained ({start} steps); skipping")
        return {"best_step": ckpts.best_step()}

    train_step = jax.jit(
        step_lib.make_train_step(
            student, tx, teacher=teacher, frequency_augment=section.frequency_augment
        ),
        in_shardings=(repl, repl, sharding.batch_sharding(mesh), repl),
        out_shardings=(repl, repl),
        donate_argnums=0,
    )
    eval_step = evaluate.jit_eval_step(student, mesh)
    scalars = jax.device_put(hparams(config), repl)

    batches = loader.train_batches(
        train_source,
        train_index,
        global_batch_size=section.batch_size,
        seed=config.seed + (0 if stage == "teacher" else 7),
        hflip=config.data.hflip,
    )
    data_iter = loader.iterate_from(batches, start, config.data.read_threads)
    first = sharding.host_to_global(next(data_iter), mesh)
    t0 = time.time()
    compiled = train_step.lower(state, teacher_vars, first, scalars).compile()
    flops = _flops(compiled)
    print(
        f"[{stage}] {section.model}: {_count(state.params):,} parameters, step compiled in "
        f"{time.time() - t0:.1f}s" + (f", {flops / 1e9:.2f} GFLOP per step" if flops else "")
    )

    logger = MetricLogger(out_dir / "logs")
    progress = Progress(stage, section.steps, start)
    collection = clu_metrics.Collection.create(
        **{k: clu_metrics.Average.from_output(k) for k in _metric_names(teacher is not None)}
    )
    accumulated = None
    best = {}
    batch = first
    with mesh_context(mesh):
        for step in range(start, section.steps):
            if step > start:
                batch = sharding.host_to_global(next(data_iter), mesh)
            state, step_metrics = compiled(state, teacher_vars, batch, scalars)
            update = collection.single_from_model_output(**step_metrics)
            accumulated = update if accumulated is None else accumulated.merge(update)
            done = step + 1
            if done % config.train.log_every == 0 or done == section.steps:
                values = {k: float(v) for k, v in accumulated.compute().items()}
                accumulated = None
                logger.write(done, {f"train/{k}": v for k, v in values.items()})
                progress.report(done, values)
            if done % config.train.eval_every == 0 or done == section.steps:
                probs = evaluate.predict_source(
                    eval_step,
                    state.params,
                    state.batch_stats,
                    val_source,
                    mesh,
                    config.eval.batch_size,
                    keep=val_keep,
                )
                val = evaluate.quick_metrics(val_index, val_keep, probs, config.eval.threshold)
                logger.write(done, {f"val/{k}": v for k, v in val.items()})
                print(
                    f"[{stage}] step {done} validation: "
                    + " ".join(f"{k} {v:.4f}" for k, v in val.items()),
                    flush=True,
                )
                ckpts.save(done, state, config, {checkpoint.BEST_METRIC: val["auc"]})
                if not best or val["auc"] > best["val_auc"]:
                    best = {"val_auc": val["auc"], "best_step": done}
    ckpts.wait()
    ckpts.close()
    logger.close()
    return best


def _metric_names(distilling: bool) -> tuple[str, ...]:
    names = ("loss", "accuracy", "grad_norm", "ce")
    return (*names, "kd", "teacher_accuracy") if distilling else names


def _count(tree) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def _flops(compiled) -> float | None:
    try:
        analysis = compiled.cost_analysis()
    except Exception:  # some backends do not report costs
        return None
    if isinstance(analysis, list):
        analysis = analysis[0] if analysis else {}
    return analysis.get("flops") if analysis else None


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, dict]:
    """Runs the configured stages in order; returns each stage's best validation result."""
    config_lib.validate(config)
    mesh = sharding.make_mesh(config.train.mesh_data)
    results = {}
    for stage in config.stages:
        results[stage] = train_stage(config, workdir, stage, mesh)
    return results
