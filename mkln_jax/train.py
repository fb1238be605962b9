"""train_and_evaluate(config, workdir): teacher fine-tuning, then student distillation.

Each stage: build the model, create or resume the train state, compile the step ahead of time,
loop with periodic logging, validation and checkpoints. Validation uses reals and the training
methods' fakes only, so model selection never sees the held-out method or the test split.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import pathlib
import shutil
import signal
import time

import jax
import ml_collections
import numpy as np
import optax
from clu import metrics as clu_metrics
from flax import nnx
from jax.experimental import multihost_utils

from mkln_jax import checkpoint, config_lib, evaluate, frequency, models, sharding, xla_options
from mkln_jax import metrics as metrics_lib
from mkln_jax import step as step_lib
from mkln_jax import workdir as workdir_lib
from mkln_jax.errors import WorkdirError
from mkln_jax.input_pipeline import loader
from mkln_jax.logging_utils import MetricLogger, Progress
from mkln_jax.models import detectors

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


def hparams(config: ml_collections.ConfigDict, stage: str) -> dict[str, np.ndarray]:
    """The step's traced scalars: changing them never recompiles."""
    aug = config.freq_aug
    values = {
        "temperature": config.distill.temperature,
        "alpha": config.distill.alpha,
        "temperature_end": _end(config.distill.temperature_end, config.distill.temperature),
        "alpha_end": _end(config.distill.alpha_end, config.distill.alpha),
        "total_steps": config[stage].steps,
        "mutual_weight": config.mutual.weight,
        "feature_weight": config.distill.feature_weight,
        "freq_prob": aug.prob,
        **{k: aug[k] for k in frequency.AUGMENT_DEFAULTS if k != "prob"},
    }
    out = {k: np.float32(v) for k, v in values.items()}
    if stage == "student" and config.distill.teachers:
        weights = tuple(config.distill.teacher_weights) or (1.0,) * len(config.distill.teachers)
        out["teacher_weights"] = np.asarray(weights, np.float32)
    return out


def _end(end: float, start: float) -> float:
    return start if end < 0 else end


def method(config: ml_collections.ConfigDict, stage: str) -> step_lib.Method:
    """The static choices of a stage's step (see step.Method)."""
    distilling = stage == "student"
    return step_lib.Method(
        frequency_augment=config[stage].frequency_augment,
        augment_block=config.freq_aug.block,
        teacher_input=config.distill.teacher_input,
        schedule=config.distill.schedule,
        mutual=distilling and config.mutual.enabled,
        feature_loss=config.distill.feature_loss if distilling else "",
    )


def build_model(config, stage: str, *, with_weights: bool = True) -> nnx.Module:
    """The stage's model: a detector (see models.build_detector); for a mutual student, the
    `Peers` pair; with feature distillation, plus one projection per teacher."""
    section = config[stage]

    def detector(name: str, stream: str, pretrained: str, seed: int):
        return models.build_detector(
            name,
            NUM_CLASSES,
            stream=stream,
            image_size=config.data.image_size,
            seed=seed,
            dtype=config.train.compute_dtype,
            pretrained=pretrained if with_weights else "",
            cache_dir=config_lib.cache_dir(config),
        )

    model = detector(section.model, section.stream, section.pretrained, config.seed)
    if stage != "student":
        return model
    if config.mutual.enabled:
        peer = config.mutual
        second = detector(peer.peer_model, peer.peer_stream, peer.peer_pretrained, config.seed + 1)
        norms = tuple(
            (models.spec(name).mean, models.spec(name).std)
            for name in (section.model, peer.peer_model)
        )
        return detectors.Peers(model, second, norms, deploy=peer.deploy)
    if config.distill.feature_loss:
        dims = tuple(teacher_feature_dim(config, source) for source in teacher_sources(config))
        model.feature_projectors = detectors.FeatureProjectors(
            model.feature_dim,
            dims,
            dtype=models.DTYPES[config.train.compute_dtype],
            rngs=nnx.Rngs(params=config.seed + 2),
        )
    return model


def model_fn(config, stage: str, graphdef) -> step_lib.ModelFn:
    """Normalisation happens in ModelFn, except for `Peers`, which normalise per peer."""
    spec = models.spec(config[stage].model)
    mean, std = spec.mean, spec.std
    if stage == "student" and config.mutual.enabled:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    return step_lib.ModelFn(graphdef, mean, std, models.DTYPES[config.train.compute_dtype])


def describe_model(config, stage: str) -> str:
    """A stage's model in words, e.g. "small_cnn (rgb) + small_cnn (frequency), mutual, deploy
    rgb"."""
    section = config[stage]
    text = f"{section.model} ({section.stream})"
    if stage == "student" and config.mutual.enabled:
        peer = config.mutual
        text += f" + {peer.peer_model} ({peer.peer_stream}), mutual, deploy {peer.deploy}"
    return text


@dataclasses.dataclass(frozen=True)
class TeacherSource:
    """Where a teacher comes from (one entry of distill.teachers):
    "teacher"                 this run's teacher stage (best validation checkpoint);
    "run:<workdir>/<stage>"   another run's finished stage (its config is read from there);
    "weights:<model>:<path>"  a 2-class detector's weights (`mkln convert-weights` folder or a
                              PyTorch state dict), RGB stream."""

    kind: str
    spec: str
    stage: str = "teacher"
    path: str = ""
    model: str = ""


def parse_teacher(spec: str) -> TeacherSource:
    if spec == "teacher":
        return TeacherSource("stage", spec)
    if spec.startswith("run:"):
        path = pathlib.Path(spec[4:].rstrip("/"))
        return TeacherSource("run", spec, stage=path.name, path=str(path))
    if spec.startswith("weights:") and spec.count(":") >= 2:
        _, model, path = spec.split(":", 2)
        return TeacherSource("weights", spec, model=model, path=path)
    raise ValueError(
        f"distill.teachers entry {spec!r}: expected 'teacher', 'run:<workdir>/<stage>' or "
        "'weights:<model>:<path>'"
    )


def teacher_sources(config) -> list[TeacherSource]:
    return [parse_teacher(spec) for spec in config.distill.teachers]


def source_config(config, source: TeacherSource) -> ml_collections.ConfigDict:
    """The config a teacher was trained with (this run's, or the one saved with the run)."""
    if source.kind != "run":
        return config
    return config_lib.from_saved(_saved_best_config(source.path, source.stage))


@functools.lru_cache(maxsize=16)
def _saved_best_config(path: str, stage: str) -> dict:
    """The config saved with a finished stage's best checkpoint, read once per process (a stage
    with feature distillation builds its model several times)."""
    ckpts = checkpoint.Checkpoints(pathlib.Path(path) / "checkpoints", keep=1, read_only=True)
    try:
        step = ckpts.best_step()
        if step is None:
            raise FileNotFoundError(
                f"{path} has no best checkpoint. Fix: finish that run's {stage} stage, or "
                "point distill.teachers at a finished one."
            )
        return ckpts.saved_config(step, which="best")
    finally:
        ckpts.close()


def teacher_feature_dim(config, source: TeacherSource) -> int:
    if source.kind == "weights":
        model = nnx.eval_shape(
            lambda: models.build(source.model, NUM_CLASSES, dtype=config.train.compute_dtype)
        )
    else:
        cfg = source_config(config, source)
        model = nnx.eval_shape(lambda: build_model(cfg, source.stage, with_weights=False))
    if not hasattr(model, "feature_dim"):
        raise config_lib.ConfigError(f"teacher {source.spec} has no single feature space")
    return model.feature_dim


def load_teachers(config, workdir, mesh):
    """(ModelFns, Frozen variables, description) of every teacher in distill.teachers."""
    fns, frozen, described = [], [], []
    for source in teacher_sources(config):
        if source.kind == "weights":
            model = models.build(
                source.model,
                NUM_CLASSES,
                dtype=config.train.compute_dtype,
                pretrained=source.path,
                cache_dir=config_lib.cache_dir(config),
            )
            graphdef, params, batch_stats = step_lib.split_model(model)
            variables = step_lib.Frozen(params, batch_stats)
            variables = sharding.place(variables, _shardings(config, variables, mesh))
            spec = models.spec(source.model)
            fn = step_lib.ModelFn(
                graphdef, spec.mean, spec.std, models.DTYPES[config.train.compute_dtype]
            )
            described.append(f"{source.model} weights from {source.path}")
        else:
            cfg = source_config(config, source)
            root = workdir if source.kind == "stage" else pathlib.Path(source.path).parent
            fn, variables, best = load_best(cfg, root, source.stage, mesh)
            described.append(f"{cfg[source.stage].model} ({source.spec}, best step {best})")
        fns.append(fn)
        frozen.append(variables)
    return tuple(fns), tuple(frozen), described


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


def cpu_compiler_options(config, stage: str) -> dict[str, str]:
    """The train step's XLA:CPU convolution and dot libraries (mkln_jax/xla_options.py); {}
    elsewhere."""
    return xla_options.for_model(
        models.spec(config[stage].model),
        config.train.get("cpu_convolutions", "auto"),
        config.train.get("cpu_dots", "auto"),
    )


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
    ckpts = checkpoint.Checkpoints(
        stage_dir(workdir, stage) / "checkpoints", keep=1, read_only=True
    )
    try:
        best = ckpts.best_step()
        if best is None:
            raise FileNotFoundError(
                f"no {stage} checkpoint under {stage_dir(workdir, stage)}. Fix: run `mkln train` "
                f"with the same --workdir (stages {tuple(config.stages)}) first."
            )
        target = checkpoint.abstract_like(abstract, _shardings(config, abstract, mesh))
        # A corrupt best is refused (CheckpointError names its step): nothing is exported or
        # evaluated from weights that changed on disk.
        state = ckpts.restore("best", best, target)
    finally:
        ckpts.close()
    frozen = step_lib.Frozen(params=state.params, batch_stats=state.batch_stats)
    return model_fn(config, stage, graphdef), frozen, best


# Config fields that do not change what a stage trains (so resuming may differ in them).
IGNORED_ON_RESUME = {
    "teacher": ("student", "distill", "mutual", "eval", "predict", "stages"),
    "student": ("eval", "predict", "stages"),
}


def train_stage(config, workdir, stage: str, mesh, preemption=None) -> dict[str, float]:
    section = config[stage]
    out_dir = stage_dir(workdir, stage)
    data_dir = config_lib.data_dir(config)
    train_source = loader.open_split(config.data, data_dir, "train")
    val_source = loader.open_split(config.data, data_dir, "val")
    # DeepfakeBench-compatible numbers need the test AUC at every evaluation (its tables report
    # the mean of the top-3): logged apart, never used for model selection here.
    test_source, test_labels = None, None
    if config.eval.deepfakebench_report:
        test_source = loader.open_split(config.data, data_dir, "test")
        test_labels = loader.read_index(test_source).labels
    if config.data.sbi:  # reals only; their self-blended twins are made on the fly
        train_index = np.flatnonzero(loader.read_index(train_source).methods == "real")
    else:
        train_index = loader.training_indices(
            loader.read_index(train_source), config.data.train_methods, config.data.balance
        )
    val_index = loader.read_index(val_source)
    val_keep = np.flatnonzero(np.isin(val_index.methods, ["real", *config.data.train_methods]))

    repl = sharding.replicated(mesh)
    teachers, teacher_vars = (), None
    if stage == "student" and config.distill.teachers:
        teachers, teacher_vars, described = load_teachers(config, workdir, mesh)
        print(f"[{stage}] teachers: {'; '.join(described)}")
    teacher_shardings = _shardings(config, teacher_vars, mesh) if teacher_vars else repl

    tx = make_optimizer(config, stage)
    ckpts = checkpoint.Checkpoints(out_dir / "checkpoints", keep=config.train.keep_checkpoints)
    graphdef, abstract = abstract_train_state(config, stage)
    state_shardings = _shardings(config, abstract, mesh)

    def same_run(saved: dict) -> None:
        changed = checkpoint.config_differences(saved, config, ignore=IGNORED_ON_RESUME[stage])
        if changed:
            raise config_lib.ConfigError(
                f"{out_dir} holds a run with a different config ({'; '.join(changed)}). Fix: "
                "use a new --workdir, or the config that run was started with."
            )

    try:
        start, state = ckpts.restore_latest_intact(
            checkpoint.abstract_like(abstract, state_shardings),
            same_run,
            log=lambda line: print(f"[{stage}] {line}", flush=True),
        )
    except BaseException:
        ckpts.close()
        raise
    if start is not None:
        print(f"[{stage}] resumed from step {start} (checkpoint verified)")
    else:
        start = 0
        state = create_state(config, stage, mesh, state_shardings)
    student = model_fn(config, stage, graphdef)
    if start >= section.steps:
        ckpts.close()
        print(f"[{stage}] already trained ({start} steps); skipping")
        return {"best_step": ckpts.best_step()}

    train_step = jax.jit(
        step_lib.make_train_step(student, tx, teachers=teachers, method=method(config, stage)),
        in_shardings=(state_shardings, teacher_shardings, sharding.batch_sharding(mesh), repl),
        out_shardings=(state_shardings, repl),
        donate_argnums=0,
    )
    eval_step = evaluate.jit_eval_step(student, mesh)
    host_scalars = hparams(config, stage)
    scalars = sharding.place(host_scalars, {k: repl for k in host_scalars})

    batches = loader.train_batches(
        train_source,
        train_index,
        global_batch_size=section.batch_size,
        seed=config.seed + (0 if stage == "teacher" else 7),
        augment=loader.HostAugment.from_config(config.data),
    )
    data_iter = loader.iterate_from(batches, start, config.data.read_threads)
    first = sharding.host_to_global(next(data_iter), mesh)
    t0 = time.time()
    compiled = train_step.lower(state, teacher_vars, first, scalars).compile(
        compiler_options=cpu_compiler_options(config, stage)
    )
    print(
        f"[{stage}] {section.model}: {_count(state.params):,} parameters, mesh "
        f"{dict(mesh.shape)}, step compiled in {time.time() - t0:.1f}s{_costs(compiled)}"
    )

    logger = MetricLogger(out_dir / "logs")
    progress = Progress(stage, section.steps, start)
    collection = clu_metrics.Collection.create(
        **{
            k: clu_metrics.Average.from_output(k)
            for k in jax.eval_shape(train_step, state, teacher_vars, first, scalars)[1]
        }
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
                    if test_source is not None:
                        test_probs = evaluate.predict_source(
                            eval_step,
                            state.params,
                            state.batch_stats,
                            test_source,
                            mesh,
                            config.eval.batch_size,
                        )
                        logger.write(
                            done,
                            {
                                "test_for_deepfakebench_report/auc": metrics_lib.auc(
                                    test_labels, test_probs
                                )
                            },
                        )
                    metrics = {checkpoint.BEST_METRIC: val["auc"]}
                    if not best or val["auc"] > best["val_auc"]:
                        best = {"val_auc": val["auc"], "best_step": done}
                stop = preemption.reached(done)
                if metrics or done % config.train.checkpoint_every == 0 or stop:
                    _check_finite(state, stage, done, last_saved)
                    _save(ckpts, done, state, config, metrics, out_dir)
                    last_saved = done
                if stop:
                    _wait(ckpts, out_dir)
                    raise Preempted(
                        f"[{stage}] preempted (SIGTERM) at step {done}: checkpoint "
                        "saved; rerun the same command to resume"
                    )
    finally:
        try:
            _wait(ckpts, out_dir)
            if best:
                # The step whose checkpoint `best` kept: on a tie orbax keeps the later one
                # (seen in the demo: equal validation AUC at steps 500 and 600, 600 kept).
                best["best_step"] = ckpts.best_step()
        finally:
            # Stop orbax's writer threads even after a failed save: none left running at exit.
            with contextlib.suppress(Exception):
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
        kept = (
            f"The last checkpoint, step {last_saved}, holds the state before them"
            if last_saved
            else "No checkpoint was saved before them"
        )
        raise NonFiniteError(
            f"[{stage}] {count} step(s) up to step {step} had a non-finite loss or gradient; "
            f"their updates were not applied and training stops. {kept}. Fix: lower the "
            "learning rate or check the input data."
        )


def _last_step(ckpts: checkpoint.Checkpoints) -> str:
    ckpts.latest.reload()
    steps = ckpts.latest.all_steps()
    return f"step {max(steps)}" if steps else "none"


def _nbytes(tree) -> int:
    return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree)))


def _disk_full_error(ckpts: checkpoint.Checkpoints, out_dir: pathlib.Path) -> WorkdirError:
    return WorkdirError(
        f"no space left on the device holding {out_dir / 'checkpoints'}; training stopped. The "
        f"last complete checkpoint: {_last_step(ckpts)}. Fix: free space, then rerun the same "
        "command."
    )


def _enough_space(directory: pathlib.Path, needed: int) -> bool:
    """Whether `directory`'s file system has `needed` bytes free, decided by process 0 for all
    (every process must stop at the same save, or the others wait at orbax's barrier)."""
    free = shutil.disk_usage(directory).free if jax.process_index() == 0 else 0
    ok = np.int32(free >= needed)
    if jax.process_count() > 1:
        ok = multihost_utils.broadcast_one_to_all(ok)
    return bool(ok)


def _save(ckpts, step: int, state, config, metrics, out_dir: pathlib.Path) -> None:
    # Refuse before orbax starts: a save that runs out of space mid-write fails in its writer
    # threads, which print thousands of lines before the error reaches this one.
    copies = 2 if metrics else 1  # latest, and best
    needed = copies * _nbytes(state) + (16 << 20)
    if not _enough_space(ckpts.directory, needed):
        free = shutil.disk_usage(ckpts.directory).free
        raise WorkdirError(
            f"not enough space for checkpoint step {step} under {out_dir / 'checkpoints'} "
            f"({free / 2**20:.0f} MiB free, {needed / 2**20:.0f} MiB needed); training stopped. "
            f"The last complete checkpoint: {_last_step(ckpts)}. Fix: free space, then rerun the "
            "same command."
        )
    try:
        ckpts.save(step, state, config, metrics)
    except Exception as err:
        if workdir_lib.is_disk_full(err):
            raise _disk_full_error(ckpts, out_dir) from None
        raise


def _wait(ckpts, out_dir: pathlib.Path) -> None:
    try:
        ckpts.wait()
    except Exception as err:
        if workdir_lib.is_disk_full(err):
            raise _disk_full_error(ckpts, out_dir) from None
        raise


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
            # XLA cannot see inside our FFI kernels (mkln_jax/native): say so, rather than
            # print a figure that looks like the whole step's (bench/step_bench.py counts all).
            partial = 'custom_call_target="mkln_' in compiled.as_text()
            note = " (XLA's count, without mkln_jax's CPU kernels)" if partial else ""
            parts.append(f"{analysis['flops'] / 1e9:.2f} GFLOP per step{note}")
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
    # One writer per workdir (process 0 holds the lock for a multi-process run).
    lock = workdir_lib.WorkdirLock(workdir) if jax.process_index() == 0 else None
    if lock is not None:
        lock.acquire()
    else:
        workdir_lib.ensure_writable(workdir)
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
        if lock is not None:
            lock.release()
    return results
