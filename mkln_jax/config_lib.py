"""Config files loaded with one-line errors, and checks that run before anything compiles or
touches data."""

from __future__ import annotations

import ast
import copy as copy_lib
import dataclasses
import importlib.util
import pathlib

import jax
import ml_collections

from mkln_jax import fetch, models, tracking
from mkln_jax.backends.cpu import xla_options
from mkln_jax.errors import MklnError
from mkln_jax.input_pipeline import forgeries, splits


class ConfigError(MklnError, ValueError):
    pass


def load(spec: str | pathlib.Path) -> ml_collections.ConfigDict:
    """The config named by `spec`: a Python file (`configs/demo.py`, any path ending in .py), a
    shipped config's short name (`demo`), or a module path (`mkln_jax.configs.demo`)."""
    text = str(spec)
    if text.endswith(".py") or "/" in text or pathlib.Path(text).is_file():
        return load_file(text)
    name = text if "." in text else f"{__package__}.configs.{text}"
    try:
        found = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        found = None
    if found is None or found.origin is None:
        shipped = ", ".join(shipped_configs())
        raise ConfigError(
            f"config {text!r} not found: not a file, a shipped config ({shipped}) or a module"
        )
    return load_file(found.origin, display=text)


def shipped_configs() -> list[str]:
    """Short names of the configs in mkln_jax/configs/."""
    folder = pathlib.Path(__file__).parent / "configs"
    return sorted(p.stem for p in folder.glob("*.py") if p.stem != "__init__")


def load_file(path: str | pathlib.Path, display: str = "") -> ml_collections.ConfigDict:
    """The ConfigDict that `get_config()` of a Python config file returns. Every way a file can
    fail (missing, a syntax error, an exception or `sys.exit` while loading, no `get_config`, a
    result that is not a ConfigDict) is a ConfigError of one line naming the file."""
    path = pathlib.Path(path)
    shown = display or str(path)
    if not path.is_file():
        raise ConfigError(
            f"config file {shown} not found. Fix: give a Python file with get_config(), or a "
            f"shipped config: {', '.join(shipped_configs())}"
        )
    name = f"mkln_config_{abs(hash(str(path.resolve())))}"
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        if not callable(getattr(module, "get_config", None)):
            raise ConfigError(f"config file {shown} defines no get_config() function")
        config = module.get_config()
    except ConfigError:
        raise
    except SyntaxError as err:
        raise ConfigError(
            f"config file {err.filename or shown}, line {err.lineno}: syntax error ({err.msg})"
        ) from None
    except (Exception, SystemExit) as err:
        where = _line_in(err, path)
        detail = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
        raise ConfigError(f"config file {shown}{where}: loading it failed ({detail})") from None
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(
            f"config file {shown}: get_config() returned a {type(config).__name__}, not an "
            "ml_collections.ConfigDict"
        )
    return config


def _line_in(err: BaseException, path: pathlib.Path) -> str:
    """ ", line N" of the deepest frame of `err`'s traceback inside `path`, if any."""
    line, tb = "", err.__traceback__
    while tb is not None:
        if pathlib.Path(tb.tb_frame.f_code.co_filename).resolve() == path.resolve():
            line = f", line {tb.tb_lineno}"
        tb = tb.tb_next
    return line


def _positive_int(value, name: str, errors: list[str]) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        errors.append(f"{name} must be a positive integer, got {value!r}")


def validate(config: ml_collections.ConfigDict, num_devices: int | None = None) -> None:
    """Raises ConfigError listing every problem; a config that passes can be trained."""
    errors: list[str] = []
    num_devices = num_devices or jax.device_count()
    unknown_stages = set(config.stages) - {"teacher", "student"}
    if unknown_stages or not config.stages:
        errors.append(
            f"stages must be a non-empty subset of (teacher, student), got {tuple(config.stages)}"
        )
    methods = tuple(config.data.methods)
    _check_population(config, errors)
    tracking.check(config, errors)
    rule = config.get("export", {}).get("threshold", "fixed")
    rate = rule[4:] if isinstance(rule, str) and rule.startswith("fpr:") else ""
    try:
        rate_ok = 0.0 < float(rate) < 1.0
    except ValueError:
        rate_ok = False
    aggregate = config.get("predict", {}).get("aggregate", "mean")
    if aggregate not in ("mean", "max", "confident"):
        errors.append(f"predict.aggregate must be mean, max or confident, got {aggregate!r}")
    if rule not in ("eer", "fixed") and not rate_ok:
        errors.append(
            f"export.threshold must be 'eer', 'fixed' or 'fpr:<rate in (0, 1)>', got {rule!r}"
        )
    profile = config.train.get("profile_steps", 0)
    if not isinstance(profile, int) or isinstance(profile, bool) or profile < 0:
        errors.append(f"train.profile_steps must be an integer >= 0, got {profile!r}")
    _check_data(config.data, errors)
    for method in config.data.train_methods:
        if method not in methods:
            errors.append(f"data.train_methods: {method!r} is not in data.methods {methods}")
    if not config.data.train_methods:
        errors.append("data.train_methods is empty: nothing fake to train on")
    if config.data.image_size < 16:
        errors.append(f"data.image_size must be >= 16, got {config.data.image_size}")
    _positive_int(config.data.frames_per_clip, "data.frames_per_clip", errors)
    _positive_int(config.data.clip_frames, "data.clip_frames", errors)
    _positive_int(config.data.read_threads, "data.read_threads", errors)
    workers = config.data.read_workers
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < -1:
        errors.append(f"data.read_workers must be an integer >= 0 (or -1: auto), got {workers!r}")
    if config.data.margin < 1.0:
        errors.append(f"data.margin must be >= 1.0, got {config.data.margin}")
    reference = config.train.reference_devices
    if not isinstance(reference, int) or isinstance(reference, bool) or reference < 0:
        errors.append(f"train.reference_devices must be an integer >= 0, got {reference!r}")
    mesh_data, mesh_fsdp = config.train.mesh_data, config.train.mesh_fsdp
    if not isinstance(mesh_fsdp, int) or mesh_fsdp < 1 or num_devices % mesh_fsdp:
        errors.append(
            f"train.mesh_fsdp={mesh_fsdp} must be >= 1 and divide the {num_devices} devices"
        )
        mesh_fsdp = 1
    devices_used = num_devices if mesh_data == -1 else mesh_data * mesh_fsdp
    if mesh_data != -1 and not 0 < mesh_data * mesh_fsdp <= num_devices:
        errors.append(
            f"train.mesh_data x mesh_fsdp = {mesh_data} x {mesh_fsdp}, but only "
            f"{num_devices} devices exist"
        )
    _positive_int(config.train.grad_accum_steps, "train.grad_accum_steps", errors)
    _positive_int(config.train.checkpoint_every, "train.checkpoint_every", errors)
    for stage in ("teacher", "student"):
        section = config[stage]
        if section.model not in models.REGISTRY:
            errors.append(
                f"{stage}.model: unknown model {section.model!r}; known: "
                f"{', '.join(sorted(models.REGISTRY))}"
            )
        elif problem := models.check_pretrained(section.model, section.pretrained):
            errors.append(f"{stage}.pretrained: {problem}")
        _positive_int(section.steps, f"{stage}.steps", errors)
        _positive_int(section.batch_size, f"{stage}.batch_size", errors)
        reference = config.train.reference_devices
        if isinstance(section.batch_size, int) and isinstance(reference, int) and reference > 0:
            if section.batch_size % reference:
                errors.append(
                    f"{stage}.batch_size={section.batch_size} is for train.reference_devices="
                    f"{reference} devices and must be a multiple of it"
                )
        elif isinstance(section.batch_size, int) and devices_used > 0:
            if section.batch_size % devices_used:
                errors.append(
                    f"{stage}.batch_size={section.batch_size} is not divisible by the "
                    f"{devices_used} devices of the mesh"
                )
        if section.learning_rate <= 0:
            errors.append(f"{stage}.learning_rate must be > 0, got {section.learning_rate}")
    if config.train.compute_dtype not in (*models.DTYPES, "auto"):
        errors.append(
            f"train.compute_dtype must be one of {(*models.DTYPES, 'auto')}, got "
            f"{config.train.compute_dtype!r}"
        )
    for key in ("convolutions", "dots"):
        library = config.train.cpu[key]
        if library not in ("auto", *xla_options.CONV_LIBRARIES):
            errors.append(f"train.cpu.{key} must be auto, ynnpack or eigen, got {library!r}")
    _check_method(config, errors)
    if config.distill.temperature <= 0:
        errors.append(f"distill.temperature must be > 0, got {config.distill.temperature}")
    if not 0.0 <= config.distill.alpha <= 1.0:
        errors.append(f"distill.alpha must be in [0, 1], got {config.distill.alpha}")
    for key in ("prob", "jitter_prob", "jitter", "band_drop_prob", "drop_strength"):
        if not 0.0 <= config.freq_aug[key] <= 1.0:
            errors.append(f"freq_aug.{key} must be in [0, 1], got {config.freq_aug[key]}")
    for key in ("noise_prob", "mix_prob", "mix_strength"):
        if not 0.0 <= config.freq_aug[key] <= 1.0:
            errors.append(f"freq_aug.{key} must be in [0, 1], got {config.freq_aug[key]}")
    if config.freq_aug.noise_std < 0:
        errors.append(f"freq_aug.noise_std must be >= 0, got {config.freq_aug.noise_std}")
    block = config.freq_aug.block
    if block not in (0, 4, 8, 16) or (block and config.data.image_size % block):
        errors.append(
            f"freq_aug.block must be 0 (full image) or 4/8/16 dividing data.image_size "
            f"({config.data.image_size}), got {block}"
        )
    if config.eval.split not in ("train", "val", "test"):
        errors.append(f"eval.split must be train, val or test, got {config.eval.split!r}")
    _positive_int(config.eval.batch_size, "eval.batch_size", errors)
    _positive_int(config.train.eval_every, "train.eval_every", errors)
    _positive_int(config.train.log_every, "train.log_every", errors)
    if errors:
        raise ConfigError("invalid config:\n  " + "\n  ".join(errors))


def _check_population(config: ml_collections.ConfigDict, errors: list[str]) -> None:
    pop = config.get("population")
    if pop is None:
        return
    if not all(isinstance(m, str) for m in pop.members):
        errors.append(
            f"population.members must be strings like 'distill.temperature=4', got "
            f"{tuple(pop.members)!r}"
        )
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in pop.seeds):
        errors.append(f"population.seeds must be integers, got {tuple(pop.seeds)!r}")
    if not isinstance(pop.mesh, int) or pop.mesh < 1:
        errors.append(f"population.mesh must be an integer >= 1, got {pop.mesh!r}")


def _check_data(data: ml_collections.ConfigDict, errors: list[str]) -> None:
    """The dataset's name, methods and preprocessing settings."""
    from mkln_jax.input_pipeline import faces
    from mkln_jax.input_pipeline.build import catalog

    known = {
        "mkln_demo": forgeries.METHODS,
        "ffpp": (*catalog.FFPP_METHODS, catalog.DFD),
        "celebdf": (catalog.CELEBDF_METHOD,),
    }
    if data.name not in ("mkln_demo", *splits.REAL_DATASETS):
        errors.append(
            f"data.name must be mkln_demo or one of {splits.REAL_DATASETS}, got {data.name!r}"
        )
        return
    for method in data.methods:
        if data.name in known and method not in known[data.name]:
            errors.append(
                f"data.methods: unknown {data.name} method {method!r}; known: {known[data.name]}"
            )
    if data.name == "mkln_demo":
        return
    _positive_int(data.num_frames, "data.num_frames", errors)
    if data.detector not in faces.DETECTORS:
        errors.append(f"data.detector must be one of {sorted(faces.DETECTORS)}")
    elif data.detector == "dlib":
        if importlib.util.find_spec("dlib") is None:
            errors.append(
                "data.detector = dlib needs dlib: pip install 'mkln_jax[faces]' (dlib-bin), "
                "or use data.detector = haar"
            )
    elif data.detector == "retinaface":
        missing = [m for m in ("onnxruntime", "retinaface") if importlib.util.find_spec(m) is None]
        if missing:
            errors.append(
                f"data.detector = retinaface needs {' and '.join(missing)}: pip install "
                "'mkln_jax[faces]', or use data.detector = haar"
            )
    if data.name == "ffpp" and data.compression not in ("raw", "c0", "c23", "c40"):
        errors.append(f"data.compression must be raw, c0, c23 or c40, got {data.compression!r}")
    if data.name == "celebdf" and data.version not in ("v1", "v2"):
        errors.append(f"data.version must be v1 or v2, got {data.version!r}")
    if data.name == "deepfakebench" and not data.index_json:
        errors.append("data.index_json: give one of DeepfakeBench's dataset JSON files")
    if (
        data.shape_predictor not in ("", "dlib68")
        and not pathlib.Path(data.shape_predictor).exists()
    ):
        errors.append(f"data.shape_predictor {data.shape_predictor!r} not found")


def _check_method(config: ml_collections.ConfigDict, errors: list[str]) -> None:
    """Streams, teachers, schedules, mutual learning and feature distillation."""
    from mkln_jax import distill
    from mkln_jax.models import detectors

    for stage in ("teacher", "student"):
        if config[stage].stream not in detectors.STREAMS:
            errors.append(
                f"{stage}.stream must be one of {detectors.STREAMS}, got {config[stage].stream!r}"
            )
    dist = config.distill
    sources = []
    for spec in dist.teachers:
        try:
            sources.append(parse_teacher(spec))
        except ValueError as e:
            errors.append(str(e))
    for source in sources:
        # "teacher" (this run's stage) is checked when it is loaded: it may have finished in an
        # earlier `mkln train` of the same workdir.
        if source.kind == "run" and not pathlib.Path(source.path, "checkpoints").is_dir():
            errors.append(
                f"distill.teachers {source.spec!r}: no checkpoints under {source.path}. Fix: "
                "give a finished run's stage folder, e.g. run:runs/demo/teacher"
            )
        elif source.kind == "weights":
            if source.model not in models.REGISTRY:
                errors.append(f"distill.teachers {source.spec!r}: unknown model {source.model!r}")
            elif not pathlib.Path(source.path).expanduser().exists():
                errors.append(f"distill.teachers {source.spec!r}: {source.path} not found")
    if config.eval.get("weights"):
        spec = config.eval.weights
        try:
            source = parse_teacher(spec)
        except ValueError:
            source = None
        if source is None or source.kind != "weights":
            errors.append(f"eval.weights {spec!r}: expected 'weights:<model>:<path>'")
        elif source.model not in models.REGISTRY:
            errors.append(f"eval.weights {spec!r}: unknown model {source.model!r}")
        elif not models.hub.is_hub(source.path) and not (
            pathlib.Path(source.path).expanduser().exists()
        ):
            errors.append(f"eval.weights {spec!r}: {source.path} not found")
    weights = tuple(dist.teacher_weights)
    if weights and (len(weights) != len(dist.teachers) or min(weights) < 0 or sum(weights) <= 0):
        errors.append(
            f"distill.teacher_weights {weights} must give one non-negative weight per teacher "
            f"({len(dist.teachers)}), not all zero"
        )
    if dist.teacher_input not in ("clean", "view"):
        errors.append(
            f"distill.teacher_input must be 'clean' or 'view', got {dist.teacher_input!r}"
        )
    if dist.schedule not in distill.SCHEDULES:
        errors.append(f"distill.schedule must be one of {distill.SCHEDULES}, got {dist.schedule!r}")
    if dist.temperature_end != -1.0 and dist.temperature_end <= 0:
        errors.append(f"distill.temperature_end must be > 0 (or -1), got {dist.temperature_end}")
    if dist.alpha_end != -1.0 and not 0.0 <= dist.alpha_end <= 1.0:
        errors.append(f"distill.alpha_end must be in [0, 1] (or -1), got {dist.alpha_end}")
    if dist.feature_loss not in ("", "cosine", "l2"):
        errors.append(
            f"distill.feature_loss must be '', 'cosine' or 'l2', got {dist.feature_loss!r}"
        )
    if dist.feature_loss and (not dist.teachers or config.mutual.enabled):
        errors.append("distill.feature_loss needs teachers and mutual.enabled = False")
    peer = config.mutual
    if peer.enabled:
        if peer.peer_model not in models.REGISTRY:
            errors.append(f"mutual.peer_model: unknown model {peer.peer_model!r}")
        elif problem := models.check_pretrained(peer.peer_model, peer.peer_pretrained):
            errors.append(f"mutual.peer_pretrained: {problem}")
        if peer.peer_stream not in detectors.STREAMS:
            errors.append(f"mutual.peer_stream must be one of {detectors.STREAMS}")
        if peer.deploy not in detectors.DEPLOY:
            errors.append(f"mutual.deploy must be one of {detectors.DEPLOY}, got {peer.deploy!r}")
    if peer.weight < 0:
        errors.append(f"mutual.weight must be >= 0, got {peer.weight}")


def from_saved(saved: dict) -> ml_collections.ConfigDict:
    """A config saved with a checkpoint, on top of today's defaults (fields added since then
    keep their defaults; fields since removed are dropped)."""
    from mkln_jax.configs import default

    config = default.get_config()

    def merge(target: ml_collections.ConfigDict, values: dict) -> None:
        for key, value in values.items():
            if key not in target:
                continue
            if isinstance(target[key], ml_collections.ConfigDict) and isinstance(value, dict):
                merge(target[key], value)
            else:
                target[key] = tuple(value) if isinstance(value, list) else value

    with config.unlocked():
        merge(config, saved)
    return config


def copy(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    return copy_lib.deepcopy(config)


def set_field(config: ml_collections.ConfigDict, path: str, text: str) -> None:
    """Sets `path` ("a.b") from its text as the command line would: parsed by the field's
    current type (a float field takes "4"; a tuple takes "(1, 2)" or "1, 2")."""
    *parents, leaf = path.split(".")
    node = config
    try:
        for part in parents:
            node = node[part]
        current = node[leaf]
    except (KeyError, AttributeError, TypeError):
        raise ConfigError(f"{path}: no such config field") from None
    try:
        if isinstance(current, bool):
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError(text)
            value = text.lower() in ("true", "1")
        elif isinstance(current, int):
            value = int(text)
        elif isinstance(current, float):
            value = float(text)
        elif isinstance(current, tuple):
            parsed = ast.literal_eval(text if text.strip().startswith("(") else f"({text},)")
            value = tuple(parsed) if isinstance(parsed, (tuple, list)) else (parsed,)
        else:
            value = text
    except (ValueError, SyntaxError):
        kind = type(current).__name__
        raise ConfigError(f"{path}={text!r}: not a valid {kind}") from None
    with config.unlocked():
        node[leaf] = value


def cache_dir(config: ml_collections.ConfigDict) -> pathlib.Path:
    return (
        pathlib.Path(config.cache_dir).expanduser()
        if config.cache_dir
        else (fetch.default_cache_dir())
    )


def for_devices(config: ml_collections.ConfigDict, devices: int) -> ml_collections.ConfigDict:
    """`config` for a run on `devices` devices: with train.reference_devices = N > 0, each
    stage's global batch and learning rate scaled by devices / N (the one place that rule
    lives); otherwise `config` itself. A batch that does not scale to whole examples per
    device is a ConfigError."""
    reference = config.train.reference_devices
    if not reference or devices == reference:
        return config
    scaled = copy(config)
    with scaled.unlocked():
        for stage in ("teacher", "student"):
            section = scaled[stage]
            if (section.batch_size * devices) % reference:
                raise ConfigError(
                    f"{stage}.batch_size={section.batch_size} is for {reference} devices and does "
                    f"not scale to {devices}. Fix: a device count that it divides, or "
                    "train.reference_devices=0 (batch sizes as given)"
                )
            section.batch_size = section.batch_size * devices // reference
            section.learning_rate = section.learning_rate * devices / reference
    return scaled


ACCELERATORS = ("gpu", "tpu", "cuda", "rocm")


def compute_dtype(config: ml_collections.ConfigDict) -> str:
    """train.compute_dtype, "auto" resolved: bfloat16 on GPUs and TPUs (their matrix units'
    type; parameters, optimiser state and statistics stay float32), float32 on CPUs."""
    dtype = config.train.compute_dtype
    if dtype != "auto":
        return dtype
    import jax

    return "bfloat16" if jax.default_backend() in ACCELERATORS else "float32"


def read_workers(config: ml_collections.ConfigDict) -> int:
    """data.read_workers, -1 resolved: none on a CPU host (the devices are its cores), else
    half the host's cores up to 8 (an accelerator host's cores only decode and augment)."""
    if config.data.read_workers >= 0:
        return config.data.read_workers
    import os

    import jax

    if jax.default_backend() not in ACCELERATORS:
        return 0
    return max(1, min(8, len(os.sched_getaffinity(0)) // 2))


def data_dir(config: ml_collections.ConfigDict) -> pathlib.Path:
    if config.data.data_dir:
        return pathlib.Path(config.data.data_dir).expanduser()
    return cache_dir(config) / "tfds"


@dataclasses.dataclass(frozen=True)
class TeacherSource:
    """Where a teacher comes from (one entry of distill.teachers):
    "teacher"                 this run's teacher stage (best validation checkpoint);
    "run:<workdir>/<stage>"   another run's finished stage (its config is read from there);
    "weights:<model>:<path>"  a 2-class detector's weights (`mkln convert-weights` folder, a
                              PyTorch state dict or .safetensors: RGB stream; or a
                              DeepfakeBench Xception / F3Net checkpoint: deepfakebench.py)."""

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
