"""train_and_evaluate(config, workdir): teacher fine-tuning, then student distillation.

Each stage: build the model (experiment.py), create or resume the train state, compile the step
ahead of time, loop with periodic logging, validation and checkpoints. Validation uses reals and
the training methods' fakes only, so model selection never sees the held-out method or the test
split.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import queue
import shutil
import signal
import threading
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from mkln_jax import (
    checkpoint,
    config_lib,
    distributed,
    experiment,
    population,
    scoring,
    sharding,
    tracking,
)
from mkln_jax import metrics as metrics_lib
from mkln_jax import step as step_lib
from mkln_jax import workdir as workdir_lib
from mkln_jax.errors import WorkdirError
from mkln_jax.input_pipeline import loader, splits
from mkln_jax.logging_utils import MetricLogger, Progress, TextLog, say

# Config fields that do not change what a stage trains (so resuming may differ in them).
IGNORED_ON_RESUME = {
    "teacher": (
        "student",
        "distill",
        "mutual",
        "population",
        "eval",
        "predict",
        "stages",
        "train.profile_steps",
        "track",
        "export",
    ),
    "student": ("eval", "predict", "stages", "train.profile_steps", "track", "export"),
}


def train_stage(config, workdir, stage: str, mesh, preemption=None) -> dict:
    """Trains one stage; returns its best validation result (for a population, each member's,
    by member name). What it prints is also kept in <stage>/logs/train.log."""
    with TextLog(experiment.stage_dir(workdir, stage) / "logs"):
        return _train_stage(config, workdir, stage, mesh, preemption)


def _train_stage(config, workdir, stage: str, mesh, preemption=None) -> dict:
    section = config[stage]
    out_dir = experiment.stage_dir(workdir, stage)
    pop = Members(config, workdir) if stage == "student" and population.enabled(config) else None
    if pop is not None:
        mesh = pop.mesh
    data_dir = config_lib.data_dir(config)
    train_source = splits.open_split(config.data, data_dir, "train")
    val_source = splits.open_split(config.data, data_dir, "val")
    # DeepfakeBench-compatible numbers need the test AUC at every evaluation (its tables report
    # the mean of the top-3): logged apart, never used for model selection here.
    test_source, test_labels = None, None
    if config.eval.deepfakebench_report:
        test_source = splits.open_split(config.data, data_dir, "test")
        test_labels = splits.split_index(config.data, data_dir, "test").labels
    train_labels = splits.split_index(config.data, data_dir, "train")
    if config.data.sbi:  # reals only; their self-blended twins are made on the fly
        train_index = np.flatnonzero(train_labels.methods == "real")
    else:
        train_index = splits.training_indices(
            train_labels, config.data.train_methods, config.data.balance
        )
    val_index = splits.split_index(config.data, data_dir, "val")
    val_keep = np.flatnonzero(np.isin(val_index.methods, ["real", *config.data.train_methods]))

    repl = sharding.replicated(mesh)
    teachers, teacher_vars = (), None
    if stage == "student" and config.distill.teachers:
        teachers, teacher_vars, described = experiment.load_teachers(config, workdir, mesh)
        say(f"[{stage}] teachers: {'; '.join(described)}")
    teacher_shardings = (
        experiment.shardings_of(config, teacher_vars, mesh) if teacher_vars else repl
    )

    tx = experiment.make_optimizer(config, stage)
    ckpts = checkpoint.Checkpoints(out_dir / "checkpoints", keep=config.train.keep_checkpoints)
    if pop is None:
        graphdef, abstract = experiment.abstract_train_state(config, stage)
        state_shardings = experiment.shardings_of(config, abstract, mesh)
    else:
        graphdef, abstract = population.abstract_states(config, len(pop.members))
        state_shardings = population.state_shardings(abstract, mesh, config.train.fsdp_min_size)

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
            log=lambda line: say(f"[{stage}] {line}"),
        )
    except BaseException:
        ckpts.close()
        raise
    if start is not None:
        say(f"[{stage}] resumed from step {start} (checkpoint verified)")
    else:
        start = 0
        if pop is None:
            state = experiment.create_state(config, stage, mesh, state_shardings)
        else:
            state = population.create_states(config, pop.members, state_shardings)
    student = experiment.model_fn(config, stage, graphdef)
    if start >= section.steps:
        ckpts.close()
        say(f"[{stage}] already trained ({start} steps); skipping")
        return {"best_step": ckpts.best_step()} if pop is None else pop.best_steps()

    members = () if pop is None else [m.config for m in pop.members]
    method = experiment.method(config, stage, members)
    if pop is None:
        step_fn = step_lib.make_train_step(student, tx, teachers=teachers, method=method)
        host_scalars = experiment.hparams(config, stage)
        scalar_shardings = jax.tree.map(lambda _: repl, host_scalars)
        metric_sharding = repl
        eval_step = scoring.jit_eval_step(
            student, mesh, (state_shardings.params, state_shardings.batch_stats)
        )
    else:
        step_fn = step_lib.make_population_step(
            student, tx, teachers=teachers, method=method, shared_augment=pop.shared_augment
        )
        host_scalars = population.hparams(pop.members)
        scalar_shardings = population.member_sharding(host_scalars, mesh)
        metric_sharding = population.member_sharding(None, mesh)
        eval_step = population.jit_eval_step(
            student, mesh, state_shardings.params, state_shardings.batch_stats
        )
        say(f"[{stage}] {pop.describe()}")
    train_step = jax.jit(
        sharding.gathered_at_use(step_fn, state_shardings, teacher_vars and teacher_shardings),
        in_shardings=(
            state_shardings,
            teacher_shardings,
            sharding.batch_sharding(mesh),
            scalar_shardings,
        ),
        out_shardings=(state_shardings, metric_sharding),
        donate_argnums=0,
    )
    scalars = sharding.place(host_scalars, scalar_shardings)

    batches = loader.train_batches(
        train_source,
        train_index,
        global_batch_size=section.batch_size,
        seed=config.seed + (0 if stage == "teacher" else 7),
        augment=loader.HostAugment.from_config(config.data),
    )
    data_iter = loader.iterate_from(
        batches, start, config.data.read_threads, config_lib.read_workers(config)
    )
    first = sharding.host_to_global(next(data_iter), mesh)
    t0 = time.time()
    compiled = train_step.lower(state, teacher_vars, first, scalars).compile(
        compiler_options=experiment.cpu_compiler_options(config, stage)
    )
    say(
        f"[{stage}] {section.model}: {experiment.count_params(state.params):,} parameters, mesh "
        f"{dict(mesh.shape)}, step compiled in {time.time() - t0:.1f}s"
    )
    costs = experiment.compiled_costs(compiled)
    if costs:  # a line of its own: the two together ran past 200 characters
        say(f"[{stage}] per step{costs.removeprefix(',')}")
    experiment.check_step_memory(compiled, stage, len(pop.members) if pop else 1)

    logger = MetricLogger(
        out_dir / "logs",
        tracking.Tracker(config, out_dir / "logs", f"{pathlib.Path(workdir).name}/{stage}"),
    )
    progress = Progress(stage, section.steps, start)
    averages = RunningMeans()
    profiler = StepProfiler(out_dir / "profile", config.train.profile_steps, start)
    last_log = None  # (time, step) of the last log line
    idle = IdleWatch()
    best = {}
    batch = first
    preemption = preemption or PreemptionWatch()
    last_saved = start
    try:
        with experiment.mesh_context(mesh):
            for step in range(start, section.steps):
                if step > start:
                    batch = sharding.host_to_global(next(data_iter), mesh)
                profiler.before(step)
                state, step_metrics = compiled(state, teacher_vars, batch, scalars)
                idle.dispatched(step_metrics)
                profiler.after(step, state)
                averages.add(step_metrics)
                done = step + 1
                last = done == section.steps
                if done % config.train.log_every == 0 or last:
                    if pop is None:
                        _check_finite(state, stage, done, last_saved)
                    else:
                        pop.check_finite(state, done)
                    values = averages.pop()
                    if pop is not None:
                        values = pop.log_train(done, values)
                    now, rates = time.time(), {}
                    since = done - (last_log[1] if last_log else start)
                    idle_share = idle.share(since, count=last_log is not None)
                    if last_log is not None:  # the first interval holds warm-up; no rate
                        rate = (done - last_log[1]) / max(now - last_log[0], 1e-9)
                        rates = {
                            "steps_per_second": rate,
                            "images_per_second": rate * section.batch_size,
                        }
                        if idle_share is not None:
                            rates["device_idle_share"] = idle_share
                    last_log = (now, done)
                    logger.write(done, {f"train/{k}": v for k, v in (values | rates).items()})
                    progress.report(done, values)
                metrics = {}
                evaluated = done % config.train.eval_every == 0 or last
                if evaluated:
                    probs = scoring.predict_source(
                        eval_step,
                        state.params,
                        state.batch_stats,
                        val_source,
                        mesh,
                        config.eval.batch_size,
                        keep=val_keep,
                    )
                    if pop is not None:
                        pop.validate(done, state, val_index, val_keep, probs)
                    else:
                        val = scoring.quick_metrics(
                            val_index, val_keep, probs, config.eval.threshold
                        )
                        logger.write(done, {f"val/{k}": v for k, v in val.items()})
                        say(
                            f"[{stage}] step {done} validation: "
                            + " ".join(f"{k} {v:.4f}" for k, v in val.items())
                        )
                        metrics = {checkpoint.BEST_METRIC: val["auc"]}
                        if not best or val["auc"] > best["val_auc"]:
                            best = {"val_auc": val["auc"], "best_step": done}
                    if test_source is not None:
                        test_probs = scoring.predict_source(
                            eval_step,
                            state.params,
                            state.batch_stats,
                            test_source,
                            mesh,
                            config.eval.batch_size,
                        )
                        if pop is None:
                            logger.write(
                                done,
                                {
                                    "test_for_deepfakebench_report/auc": metrics_lib.auc(
                                        test_labels, test_probs
                                    )
                                },
                            )
                        else:
                            pop.log_test_auc(done, test_labels, test_probs)
                stop = preemption.reached(done)
                if evaluated or done % config.train.checkpoint_every == 0 or stop:
                    if pop is None:
                        _check_finite(state, stage, done, last_saved)
                        _save(ckpts, done, state, config, metrics, out_dir)
                    else:
                        # The population's latest (resume); each member's best was saved by
                        # validate() above.
                        _save(ckpts, done, state, config, {}, out_dir)
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
            if pop is not None:
                pop.wait()
                best = pop.best_steps()
            elif best:
                # The step whose checkpoint `best` kept: on a tie orbax keeps the later one
                # (seen in the demo: equal validation AUC at steps 500 and 600, 600 kept).
                best["best_step"] = ckpts.best_step()
        finally:
            # Stop orbax's writer threads even after a failed save: none left running at exit.
            with contextlib.suppress(Exception):
                ckpts.close()
            if pop is not None:
                pop.close()
            profiler.close()
            logger.close()
            idle.close()
    _say_if_idle(stage, idle.overall())
    return best


class StepProfiler:
    """train.profile_steps = N: a jax.profiler trace of steps start+2 .. start+2+N-1 (past
    compilation and the first executions) into <stage>/profile; off when N = 0."""

    def __init__(self, directory: pathlib.Path, steps: int, start: int):
        self.directory, self.first = directory, start + 2
        self.last = self.first + steps - 1 if steps > 0 else -1
        self.active = False

    def before(self, step: int) -> None:
        if step == self.first and self.last >= self.first:
            jax.profiler.start_trace(str(self.directory))
            self.active = True

    def after(self, step: int, state) -> None:
        if self.active and step == self.last:
            jax.block_until_ready(state)
            self.close()
            say(f"profile of {self.last - self.first + 1} step(s) written to {self.directory}")

    def close(self) -> None:
        if self.active:
            self.active = False
            jax.profiler.stop_trace()


# Above this share of idle accelerators, a stage's end says so and how to feed them faster. (On
# a CPU the input and the step share the cores, so idle time there is not lost in the same way.)
IDLE_WARNING = 0.1


def _say_if_idle(stage: str, share: float | None) -> None:
    if share is None or share <= IDLE_WARNING or jax.process_index() != 0:
        return
    if jax.devices()[0].platform == "cpu":
        return
    say(
        f"[{stage}] the accelerators waited for the host {share:.0%} of the time "
        "(train/device_idle_share in the logs): read with worker processes "
        f"(data.read_workers; this host has {len(os.sched_getaffinity(0))} cores) or lighten "
        "the host augmentations"
    )


class IdleWatch:
    """How long the devices sat without a step to run: the share of each log interval between
    one step's end and the next step's dispatch (the host still reading the next batch, or
    dispatching). Steps run asynchronously, so the time the loop spends blocked on the loader
    is not idle time while earlier steps are still queued; a watcher thread notes when each
    step's metrics are ready instead. The gap into an interval's first step (logging,
    validation, checkpoints) is not counted."""

    def __init__(self):
        self.pending = queue.SimpleQueue()
        self.ready = threading.Condition()
        self.spans: list[tuple[float, float]] = []  # (dispatched, done) per step, this interval
        self.totals = [0.0, 0.0]  # idle, elapsed over every interval read
        self.thread = threading.Thread(target=self._watch, daemon=True, name="idle-watch")
        self.thread.start()

    def dispatched(self, output) -> None:
        """Called right after a step is dispatched, with (a leaf of) its output."""
        self.pending.put((time.perf_counter(), output))

    def _watch(self) -> None:
        while (item := self.pending.get()) is not None:
            dispatched, output = item
            with contextlib.suppress(Exception):  # a failed step is reported by the loop
                jax.block_until_ready(output)
            with self.ready:
                self.spans.append((dispatched, time.perf_counter()))
                self.ready.notify()

    def share(self, steps: int, count: bool = True) -> float | None:
        """The idle share since the last call, once `steps` steps were dispatched since then
        (the caller has just synchronised with them); None for fewer than two steps. With
        count=False (the interval that holds warm-up) it is left out of `overall()`."""
        with self.ready:
            self.ready.wait_for(lambda: len(self.spans) >= steps, timeout=10.0)
            spans, self.spans = self.spans, []
        if len(spans) < 2:
            return None
        idle = sum(max(0.0, spans[k][0] - spans[k - 1][1]) for k in range(1, len(spans)))
        elapsed = spans[-1][1] - spans[0][1]
        if elapsed <= 0:
            return None
        if count:
            self.totals[0] += idle
            self.totals[1] += elapsed
        return min(idle / elapsed, 1.0)

    def overall(self) -> float | None:
        return self.totals[0] / self.totals[1] if self.totals[1] > 0 else None

    def close(self) -> None:
        self.pending.put(None)
        self.thread.join(timeout=30)


class RunningMeans:
    """Means of the step metrics since the last `pop()`, summed on the device (a population's
    metrics are per member: float32[K] each)."""

    def __init__(self):
        self.total, self.count = None, 0

    def add(self, metrics: dict) -> None:
        self.total = metrics if self.total is None else jax.tree.map(jnp.add, self.total, metrics)
        self.count += 1

    def pop(self) -> dict:
        values = jax.tree.map(lambda x: x / self.count, sharding.to_host(self.total))
        self.total, self.count = None, 0
        return {k: (float(v) if np.ndim(v) == 0 else v) for k, v in values.items()}


class Members:
    """The bookkeeping of a student population in `train_stage`: its mesh, each member's log,
    best checkpoint and validation, and the members that went non-finite (frozen, named, left
    out of the means)."""

    def __init__(self, config, workdir):
        self.config = config
        self.members = population.members(config)
        size = len(self.members)
        if size % config.population.mesh:
            raise config_lib.ConfigError(
                f"population.mesh={config.population.mesh} must divide the {size} members"
            )
        self.mesh = population.make_mesh(
            config.population.mesh, config.train.mesh_data, config.train.mesh_fsdp
        )
        self.shared_augment = not population.augment_varies(self.members)
        self.dirs = [population.member_workdir(workdir, m) for m in self.members]
        if jax.process_index() == 0:
            population.write_listing(workdir, self.members)
        self.loggers = [
            MetricLogger(
                d / "student" / "logs",
                tracking.Tracker(
                    config, d / "student" / "logs", f"{d.parent.parent.name}/{d.name}"
                ),
            )
            for d in self.dirs
        ]
        self.ckpts = [
            checkpoint.Checkpoints(d / "student" / "checkpoints", keep=1, key=f"member{k}_")
            for k, d in enumerate(self.dirs)
        ]
        self.frozen: dict[int, int] = {}  # member -> step it was found non-finite

    def describe(self) -> str:
        shared = (
            "one augmented view and one teacher pass per batch"
            if self.shared_augment
            else "augmentation settings differ: one view per member"
        )
        names = "\n".join(f"  {k} {m.name}" for k, m in enumerate(self.members))
        return f"population of {len(self.members)} students in one step ({shared}):\n{names}"

    def check_finite(self, state, step: int) -> None:
        counts = sharding.to_host(state.nonfinite)
        for k in np.flatnonzero(counts):
            if int(k) not in self.frozen:
                self.frozen[int(k)] = step
                say(
                    f"[student] member {k} ({self.members[k].name}) had a non-finite loss or "
                    f"gradient by step {step}: frozen at its last finite state; the others go "
                    "on. Fix for a rerun: lower its learning rate or change its settings."
                )
        if len(self.frozen) == len(self.members):
            raise NonFiniteError(
                f"[student] every member of the population went non-finite (by step {step}); "
                "training stops. Fix: lower the learning rate or check the input data."
            )

    def live(self) -> np.ndarray:
        return np.asarray([k not in self.frozen for k in range(len(self.members))])

    def log_train(self, step: int, values: dict) -> dict:
        """Writes each member's train metrics to its own log; returns the live members' means
        (for the population's log and progress line)."""
        live = self.live()
        for k, logger in enumerate(self.loggers):
            logger.write(step, {f"train/{n}": v[k] for n, v in values.items()})
        means = {n: float(np.mean(v[live])) for n, v in values.items()}
        return means | {"frozen": float(len(self.frozen))} if self.frozen else means

    def validate(self, step: int, state, index, keep, probs: np.ndarray) -> None:
        """Each member's validation metrics (one pass over the data for all), logged, and its
        best checkpoint kept by validation AUC."""
        lines = []
        for k, member in enumerate(self.members):
            val = scoring.quick_metrics(index, keep, probs[:, k], self.config.eval.threshold)
            self.loggers[k].write(step, {f"val/{n}": v for n, v in val.items()})
            member_state = population.take(state, k)
            self.ckpts[k].save_best(
                step, member_state, member.config, {checkpoint.BEST_METRIC: val["auc"]}
            )
            mark = " (frozen)" if k in self.frozen else ""
            lines.append(f"  {k} {member.name}: auc {val['auc']:.4f} eer {val['eer']:.4f}{mark}")
        say(f"[student] step {step} validation:\n" + "\n".join(lines))

    def log_test_auc(self, step: int, labels, probs: np.ndarray) -> None:
        for k, logger in enumerate(self.loggers):
            logger.write(
                step, {"test_for_deepfakebench_report/auc": metrics_lib.auc(labels, probs[:, k])}
            )

    def wait(self) -> None:
        for ckpts in self.ckpts:
            ckpts.wait()

    def best_steps(self) -> dict:
        return {
            m.name: {"best_step": c.best_step()}
            for m, c in zip(self.members, self.ckpts, strict=True)
        }

    def close(self) -> None:
        for ckpts in self.ckpts:
            with contextlib.suppress(Exception):
                ckpts.close()
        for logger in self.loggers:
            logger.close()


class Preempted(SystemExit):
    """Raised after the checkpoint of a SIGTERM'd run is safely written."""

    def __init__(self, message: str):
        say(message)
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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, dict]:
    """Runs the configured stages in order; returns each stage's best validation result."""
    config_lib.validate(config)
    scaled = config_lib.for_devices(config, jax.device_count())
    if scaled is not config:
        for stage in ("teacher", "student"):
            say(
                f"[{stage}] {jax.device_count()} devices: batch {scaled[stage].batch_size}, "
                f"learning rate {scaled[stage].learning_rate:.3g} (the config's "
                f"{config[stage].batch_size} and {config[stage].learning_rate:.3g} are for "
                f"{config.train.reference_devices}; train.reference_devices)"
            )
        config = scaled
    if population.enabled(config) and "student" in config.stages:
        for member in population.members(config):  # every member's settings, before compiling
            config_lib.validate(member.config)
    # One writer per workdir (process 0 holds the lock for a multi-process run).
    lock = workdir_lib.WorkdirLock(workdir) if jax.process_index() == 0 else None
    if lock is not None:
        lock.acquire()
    else:
        workdir_lib.ensure_writable(workdir)
    mesh = experiment.make_mesh(config)
    print(distributed.describe(mesh), flush=True)
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
