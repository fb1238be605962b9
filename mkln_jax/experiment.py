"""Builders of an experiment from its config: meshes and shardings, models (student, peers,
feature projectors), teachers from every source, the optimiser, the step's static method and
traced hyper-parameters, initial and restored train states, and the best checkpoint of a
finished stage. No training loop: `train.py` runs one, `evaluate.py` and `export.py` load
what it saved.
"""

from __future__ import annotations

import contextlib
import functools
import pathlib

import jax
import ml_collections
import numpy as np
import optax
from flax import nnx

from mkln_jax import checkpoint, config_lib, frequency, models, sharding
from mkln_jax import step as step_lib
from mkln_jax.backends.cpu import hostmem, xla_options
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


def hparams(config: ml_collections.ConfigDict, stage: str) -> step_lib.HParams:
    """The step's traced numbers (step.HParams): changing them never recompiles."""
    aug = config.freq_aug
    weights = None
    if stage == "student" and config.distill.teachers:
        weights = tuple(config.distill.teacher_weights) or (1.0,) * len(config.distill.teachers)
    return step_lib.HParams.create(
        temperature=config.distill.temperature,
        alpha=config.distill.alpha,
        temperature_end=_end(config.distill.temperature_end, config.distill.temperature),
        alpha_end=_end(config.distill.alpha_end, config.distill.alpha),
        total_steps=config[stage].steps,
        mutual_weight=config.mutual.weight,
        feature_weight=config.distill.feature_weight,
        freq_prob=aug.prob,
        **{k: aug[k] for k in frequency.AUGMENT_DEFAULTS if k != "prob"},
        teacher_weights=weights,
    )


def _end(end: float, start: float) -> float:
    return start if end < 0 else end


def method(config: ml_collections.ConfigDict, stage: str, members=()) -> step_lib.Method:
    """The static choices of a stage's step (see step.Method); `members`: the configs of a
    population's members, whose traced settings may switch on what the base config leaves off."""
    distilling = stage == "student"
    augs = [c.freq_aug for c in (config, *members)]
    return step_lib.Method(
        frequency_augment=config[stage].frequency_augment,
        augment_block=config.freq_aug.block,
        augment_mix=any(a.prob > 0 and a.mix_prob > 0 and a.mix_strength != 0 for a in augs),
        augment_noise=any(a.prob > 0 and a.noise_prob > 0 and a.noise_std != 0 for a in augs),
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
            dtype=config_lib.compute_dtype(config),
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
            dtype=models.DTYPES[config_lib.compute_dtype(config)],
            rngs=nnx.Rngs(params=config.seed + 2),
        )
    return model


def model_fn(config, stage: str, graphdef) -> step_lib.ModelFn:
    """Normalisation happens in ModelFn, except for `Peers`, which normalise per peer."""
    spec = models.spec(config[stage].model)
    mean, std = spec.mean, spec.std
    if stage == "student" and config.mutual.enabled:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    return step_lib.ModelFn(graphdef, mean, std, models.DTYPES[config_lib.compute_dtype(config)])


def describe_model(config, stage: str) -> str:
    """A stage's model in words, e.g. "small_cnn (rgb) + small_cnn (frequency), mutual, deploy
    rgb"."""
    section = config[stage]
    text = f"{section.model} ({section.stream})"
    if stage == "student" and config.mutual.enabled:
        peer = config.mutual
        text += f" + {peer.peer_model} ({peer.peer_stream}), mutual, deploy {peer.deploy}"
    return text


def teacher_sources(config) -> list[config_lib.TeacherSource]:
    return [config_lib.parse_teacher(spec) for spec in config.distill.teachers]


def source_config(config, source: config_lib.TeacherSource) -> ml_collections.ConfigDict:
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


def teacher_feature_dim(config, source: config_lib.TeacherSource) -> int:
    if source.kind == "weights":
        model = nnx.eval_shape(
            lambda: models.build(source.model, NUM_CLASSES, dtype=config_lib.compute_dtype(config))
        )
    else:
        cfg = source_config(config, source)
        model = nnx.eval_shape(lambda: build_model(cfg, source.stage, with_weights=False))
    if not hasattr(model, "feature_dim"):
        raise config_lib.ConfigError(f"teacher {source.spec} has no single feature space")
    return model.feature_dim


def load_weights(config, source: config_lib.TeacherSource, mesh):
    """(ModelFn, Frozen variables placed on `mesh`, description) of a `weights:` source."""
    model, description = models.load_detector(
        source.model,
        source.path,
        num_classes=NUM_CLASSES,
        image_size=config.data.image_size,
        dtype=config_lib.compute_dtype(config),
        cache_dir=config_lib.cache_dir(config),
    )
    graphdef, params, batch_stats = step_lib.split_model(model)
    variables = step_lib.Frozen(params, batch_stats)
    variables = sharding.place(variables, shardings_of(config, variables, mesh))
    spec = models.spec(source.model)
    fn = step_lib.ModelFn(
        graphdef, spec.mean, spec.std, models.DTYPES[config_lib.compute_dtype(config)]
    )
    return fn, variables, description


def load_teachers(config, workdir, mesh):
    """(ModelFns, Frozen variables, description) of every teacher in distill.teachers."""
    fns, frozen, described = [], [], []
    for source in teacher_sources(config):
        if source.kind == "weights":
            fn, variables, description = load_weights(config, source, mesh)
            described.append(description)
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


def shardings_of(config, tree, mesh):
    return sharding.state_shardings(tree, mesh, config.train.fsdp_min_size)


def cpu_compiler_options(config, stage: str) -> dict[str, str]:
    """The train step's XLA:CPU convolution and dot libraries (backends/cpu/xla_options.py);
    {} elsewhere."""
    cpu = config.train.cpu
    return xla_options.for_model(config[stage].model, cpu.convolutions, cpu.dots)


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
        target = checkpoint.abstract_like(abstract, shardings_of(config, abstract, mesh))
        # A corrupt best is refused (CheckpointError names its step): nothing is exported or
        # evaluated from weights that changed on disk.
        state = ckpts.restore("best", best, target)
    finally:
        ckpts.close()
    frozen = step_lib.Frozen(params=state.params, batch_stats=state.batch_stats)
    return model_fn(config, stage, graphdef), frozen, best


def count_params(tree) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def step_bytes(compiled) -> int | None:
    """Bytes one device holds while the compiled step runs (arguments, outputs, temporaries),
    or None where the backend does not say."""
    try:
        memory = compiled.memory_analysis()
    except Exception:  # not every backend reports memory
        return None
    if memory is None:
        return None
    return int(
        memory.argument_size_in_bytes
        + memory.output_size_in_bytes
        + memory.temp_size_in_bytes
        - memory.alias_size_in_bytes
    )


# On the CPU, XLA's memory analysis leaves out what lives beside its buffers (the runtime, our
# kernels' scratch) and the allocator keeping freed blocks (hostmem.tune). Measured on a 4-member
# EfficientNet-B4 -> B0 population step (2026-12-07, this project's 2-core VM): resident size
# 1.4x the analysis with the system allocator, 2.35x with the tuned one.
CPU_OVERHEAD = {"system": 1.5, "tuned": 2.5}


def check_step_memory(compiled, stage: str, population_size: int = 1) -> None:
    """Refuses, in one line and before step one, a compiled step that cannot fit its devices
    (rather than an out-of-memory kill partway through, or a swapping host): on an
    accelerator, the step's memory against the device's limit; on the CPU, the step's memory
    on every local device, times CPU_OVERHEAD, against what this process holds plus what the
    host has available."""
    need = step_bytes(compiled)
    if need is None:
        return
    device = jax.local_devices()[0]
    if device.platform == "cpu":
        available = hostmem.available_bytes()
        if available is None:
            return
        free = available + hostmem.resident_bytes()
        overhead = CPU_OVERHEAD["tuned" if hostmem.is_tuned() else "system"]
        need = int(need * len(jax.local_devices()) * overhead)
        where = "the host has"
    else:
        try:
            free = int((device.memory_stats() or {})["bytes_limit"])
        except Exception:  # not every backend reports memory
            return
        where = f"{device.platform}:{device.id} has"
    if need <= free:
        return
    fixes = "a smaller train.batch_size or data.image_size, more devices (train.mesh_fsdp)"
    if population_size > 1:
        fixes += f", fewer than {population_size} members or a larger population.mesh"
    raise config_lib.ConfigError(
        f"[{stage}] the compiled step needs about {need / 2**30:.1f} GiB and {where} "
        f"{free / 2**30:.1f} GiB. Fix: {fixes}."
    )


def compiled_costs(compiled) -> str:
    """FLOPs and memory of the compiled step, where the backend reports them."""
    parts = []
    try:
        analysis = compiled.cost_analysis()
        if isinstance(analysis, list):
            analysis = analysis[0] if analysis else {}
        if analysis and analysis.get("flops"):
            # XLA cannot see inside our FFI kernels (backends/cpu/native): say so, rather than
            # print a figure that looks like the whole step's (bench/step_bench.py counts all).
            partial = 'custom_call_target="mkln_' in compiled.as_text()
            note = " (XLA's count, without mkln_jax's CPU kernels)" if partial else ""
            parts.append(f"{analysis['flops'] / 1e9:.2f} GFLOP per step{note}")
    except Exception:  # not every backend reports costs
        pass
    total = step_bytes(compiled)
    if total is not None:
        temporaries = compiled.memory_analysis().temp_size_in_bytes
        parts.append(
            f"{total / 2**20:.0f} MiB per device (temporaries {temporaries / 2**20:.0f} MiB)"
        )
    return ", " + ", ".join(parts) if parts else ""
