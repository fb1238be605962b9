"""train_and_evaluate(config, workdir): teacher fine-tuning, then student distillation.

Each stage: build the model, create or resume the train state, compile the step ahead of time,
loop with periodic logging, validation and checkpoints. Validation uses reals and the training
methods' fakes only, so model selection never sees the held-out method or the test split.
"""

from __future__ import annotations

import contextlib
import pathlib
import signal
import time

import jax
import ml_collections
import numpy as np
import optax
from clu import metrics as clu_metrics
from flax import nnx
from jax.experimental import multihost_utils

from mkln_jax import checkpoint, config_lib, evaluate, models, sharding
from mkln_jax import step as step_lib
from mkln_jax.input_pipeline import loader
from mkln_jax.logging_utils import MetricLogger, Progress

NUM_CLASSES = 2


def mesh_context(mesh):
    """`jax.set_mesh(mesh)` where this jax has it (all shardings here are explicit anyway)."""
    return jax.set_mesh(mesh) if hasattr(jax, "set_mesh") else contextlib.nullcontext()


def make_optimizer(config, stage: str) -> optax.GradientTransformation:
    """AdamW with warmup + cosine decay, counted in optimizer updates; with
    train.grad_accum_steps = k, each update averages the gradients of k consecutive batches."""
    section = config[stage]
    accum = config.train.grad_accum_steps
    updates = max(section.steps // accum, 1)
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=section.learning_rate,
        warmup_steps=min(section.warmup_steps // accum, updates // 2),
        decay_steps=updates,
        end_value=section.learning_rate * 0.01,
    )
    tx = optax.adamw(schedule, weight_decay=section.weight_decay)
    return optax.MultiSteps(tx, every_k_schedule=accum) if accum > 1 else tx


def hparams(config: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
    """The step's traced scalars: changing them never recompiles."""
    values = {
        "temperature": config.distill.temperature,
        "alpha": config.distill.alpha,
        "freq_prob": config.freq_aug.prob,
        "band_drop_prob": config.freq_aug.band_drop_prob,
        "jitter": config.freq_aug.jitter,
    }
    return {k: np.float32(v) for k, v in values.items()}


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
    tx = make_optimizer(config, stage)
    model = nnx.eval_shape(lambda: build_model(config, stage, with_weights=False))
    graphdef, _, _ = step_lib.split_model(model)
    abstract = jax.eval_shape(
        lambda: step_lib.init_state(build_model(config, stage, with_weights=False), tx, 0)
    )
    return graphdef, abstract


def make_mesh(config):
    return sharding.make_mesh(config.train.mesh_data, config.train.mesh_fsdp)


def _shardings(config, tree, mesh):
    return sharding.state_shardings(tree, mesh, config.train.fsdp_min_size)


def create_state(config, stage: str, mesh, state_shardings):
    """The initial TrainState, created already sharded: random init runs inside `jit` with
    the target shardings; pretrained weights are loaded on the host and placed shard by shard."""
    tx = make_optimizer(config, stage)
    if not config[stage].pretrained:
        init = jax.jit(
            lambda: step_lib.init_state(
                build_model(config, stage, with_weights=False), tx, config.seed
            ),
            out_shardings=state_shardings,
        )
        return init()
    host_state = step_lib.init_state(build_model(config, stage), tx, config.seed)
    return sharding.place(jax.device_get(host_state), state_shardings)


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
    target = checkpoint.abstract_like(abstract, _shardings(config, abstract, mesh))
    state = ckpts.restore("best", best, target)
    ckpts.close()
    frozen = step_lib.Frozen(params=state.params, batch_stats=state.batch_stats)
    return model_fn(config, stage, graphdef), frozen, best


# Config fields that do not change what a stage trains (so resuming may differ in them).
IGNORED_ON_RESUME = {
    "teacher": ("student", "distill", "eval", "predict", "stages"),
    "student": ("eval", "predict", "stages"),
}


def train_stage(config, workdir, stage: str, mesh, preemption=None) -> dict[str, float]:
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
    teacher_shardings = _shardings(config, teacher_vars, mesh) if teacher_vars else repl

    tx = make_optimizer(config, stage)
    ckpts = checkpoint.Checkpoints(out_dir / "checkpoints", keep=config.train.keep_checkpoints)
    graphdef, abstract = abstract_train_state(config, stage)
    state_shardings = _shardings(config, abstract, mesh)
    start = ckpts.latest_step()
    if start is not None:
        changed = checkpoint.config_differences(
            ckpts.saved_config(start), config, ignore=IGNORED_ON_RESUME[stage]
        )
        if changed:
            ckpts.close()
            raise config_lib.ConfigError(
                f"{out_dir} holds a run with a different config ({'; '.join(changed)}). Fix: "
                "use a new --workdir, or the config that run was started with."
            )
        state = ckpts.restore("latest", start, checkpoint.abstract_like(abstract, state_shardings))
        print(f"[{stage}] resumed from step {start}")
    else:
        start = 0
        state = create_state(config, stage, mesh, state_shardings)
    student = model_fn(config, stage, graphdef)
    if start >= section.steps:
        ckpts.close()
        print(f"[{stage}] already trained ({start} steps); skipping")
        return {"best_step": ckpts.best_step()}

    train_step = jax.jit(
        step_lib.make_train_step(
            student, tx, teacher=teacher, frequency_augment=section.frequency_augment
        ),
        in_shardings=(state_shardings, teacher_shardings, sharding.batch_sharding(mesh), repl),
        out_shardings=(state_shardings, repl),
        donate_argnums=0,
    )
    eval_step = evaluate.jit_eval_step(student, mesh)
    host_scalars = hparams(config)
    scalars = sharding.place(host_scalars, {k: repl for k in host_scalars})

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
    print(
        f"[{stage}] {section.model}: {_count(state.params):,} parameters, mesh "
        f"{dict(mesh.shape)}, step compiled in {time.time() - t0:.1f}s{_costs(compiled)}"
    )

    logger = MetricLogger(out_dir / "logs")
    progress = Progress(stage, section.steps, start)
    collection = clu_metrics.Collection.create(
        **{k: clu_metrics.Average.from_output(k) for k in _metric_names(teacher is not None)}
    )
    accumulated = None
    best = {}
    batch = first
    preemption = preemption or PreemptionWatch()
    last_saved = start
    try:
        with mesh_context(mesh):
            for step in range(start, section.steps):
                if step > start:
                    batch = sharding.host_to_global(next(data_iter), mesh)
                state, step_metrics = compiled(state, teacher_vars, batch, scalars)
                update = collection.single_from_model_output(**step_metrics)
                accumulated = update if accumulated is None else accumulated.merge(update)
                done = step + 1
                last = done == section.steps
                if done % config.train.log_every == 0 or last:
                    _check_finite(state, stage, done, last_saved)
                    values = {k: float(v) for k, v in accumulated.compute().items()}
                    accumulated = None
                    logger.write(done, {f"train/{k}": v for k, v in values.items()})
                    progress.report(done, values)
                metrics = {}
                if done % config.train.eval_every == 0 or last:
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
                    metrics = {checkpoint.BEST_METRIC: val["auc"]}
                    if not best or val["auc"] > best["val_auc"]:
                        best = {"val_auc": val["auc"], "best_step": done}
                stop = preemption.reached(done)
                if metrics or done % config.train.checkpoint_every == 0 or stop:
                    _check_finite(state, stage, done, last_saved)
                    ckpts.save(done, state, config, metrics)
                    last_saved = done
                if stop:
                    ckpts.wait()
                    raise Preempted(
                        f"[{stage}] preempted (SIGTERM) at step {done}: checkpoint "
                        "saved; rerun the same command to resume"
                    )
    finally:
        ckpts.wait()
        ckpts.close()
        logger.close()
    return best


class Preempted(SystemExit):
    """Raised after the checkpoint of a SIGTERM'd run is safely written."""

    def __init__(self, message: str):
        print(message, flush=True)
        super().__init__(143)


class NonFiniteError(RuntimeError):
    pass


def _check_finite(state, stage: str, step: int, last_saved: int) -> None:
    count = int(jax.device_get(state.nonfinite))
    if count:
        raise NonFiniteError(
            f"[{stage}] {count} step(s) up to step {step} had a non-finite loss or gradient; "
            f"their updates were not applied and training stops. The last checkpoint (step "
            f"{last_saved}) is intact. Fix: lower the learning rate or check the input data."
        )


class PreemptionWatch:
    """SIGTERM -> checkpoint at the next step and a clean exit. With several processes, jax's
    preemption sync point makes every process stop at the same step."""

    def __init__(self):
        self.flag = False
        self.multi = jax.process_count() > 1
        self._previous = None
        if not self.multi:
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        del signum, frame
        self.flag = True

    def reached(self, step: int) -> bool:
        if self.multi:
            return multihost_utils.reached_preemption_sync_point(step)
        return self.flag

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _metric_names(distilling: bool) -> tuple[str, ...]:
    names = ("loss", "accuracy", "grad_norm", "ce")
    return (*names, "kd", "teacher_accuracy") if distilling else names


def _count(tree) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def _costs(compiled) -> str:
    """FLOPs and memory of the compiled step, where the backend reports them."""
    parts = []
    try:
        analysis = compiled.cost_analysis()
        if isinstance(analysis, list):
            analysis = analysis[0] if analysis else {}
        if analysis and analysis.get("flops"):
            parts.append(f"{analysis['flops'] / 1e9:.2f} GFLOP per step")
    except Exception:  # not every backend reports costs
        pass
    try:
        memory = compiled.memory_analysis()
        if memory is not None:
            total = (
                memory.argument_size_in_bytes
                + memory.output_size_in_bytes
                + memory.temp_size_in_bytes
                - memory.alias_size_in_bytes
            )
            parts.append(
                f"{total / 2**20:.0f} MiB per device "
                f"(temporaries {memory.temp_size_in_bytes / 2**20:.0f} MiB)"
            )
    except Exception:  # not every backend reports memory
        pass
    return ", " + ", ".join(parts) if parts else ""


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, dict]:
    """Runs the configured stages in order; returns each stage's best validation result."""
    config_lib.validate(config)
    mesh = make_mesh(config)
    results = {}
    # Watch for SIGTERM from the start, so a preemption during set-up or compilation is
    # honoured at the first step.
    preemption = PreemptionWatch()
    try:
        for stage in config.stages:
            results[stage] = train_stage(config, workdir, stage, mesh, preemption)
    finally:
        preemption.restore()
    return results
