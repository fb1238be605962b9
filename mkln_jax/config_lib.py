"""Config checks that run before anything compiles or touches data."""

from __future__ import annotations

import pathlib

import jax
import ml_collections

from mkln_jax import fetch, models
from mkln_jax.input_pipeline import forgeries


class ConfigError(ValueError):
    pass


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
    for method in methods:
        if method not in forgeries.METHODS:
            errors.append(f"data.methods: unknown method {method!r}; known: {forgeries.METHODS}")
    for method in config.data.train_methods:
        if method not in methods:
            errors.append(f"data.train_methods: {method!r} is not in data.methods {methods}")
    if not config.data.train_methods:
        errors.append("data.train_methods is empty: nothing fake to train on")
    if config.data.image_size < 16:
        errors.append(f"data.image_size must be >= 16, got {config.data.image_size}")
    _positive_int(config.data.frames_per_clip, "data.frames_per_clip", errors)
    _positive_int(config.data.clip_frames, "data.clip_frames", errors)
    if config.data.margin < 1.0:
        errors.append(f"data.margin must be >= 1.0, got {config.data.margin}")
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
        if isinstance(section.batch_size, int) and devices_used > 0:
            if section.batch_size % devices_used:
                errors.append(
                    f"{stage}.batch_size={section.batch_size} is not divisible by the "
                    f"{devices_used} devices of the mesh"
                )
        if section.learning_rate <= 0:
            errors.append(f"{stage}.learning_rate must be > 0, got {section.learning_rate}")
    if config.train.compute_dtype not in models.DTYPES:
        errors.append(
            f"train.compute_dtype must be one of {tuple(models.DTYPES)}, got "
            f"{config.train.compute_dtype!r}"
        )
    if config.distill.temperature <= 0:
        errors.append(f"distill.temperature must be > 0, got {config.distill.temperature}")
    if not 0.0 <= config.distill.alpha <= 1.0:
        errors.append(f"distill.alpha must be in [0, 1], got {config.distill.alpha}")
    for key in ("prob", "band_drop_prob"):
        if not 0.0 <= config.freq_aug[key] <= 1.0:
            errors.append(f"freq_aug.{key} must be in [0, 1], got {config.freq_aug[key]}")
    if not 0.0 <= config.freq_aug.jitter <= 1.0:
        errors.append(f"freq_aug.jitter must be in [0, 1], got {config.freq_aug.jitter}")
    if config.eval.split not in ("train", "val", "test"):
        errors.append(f"eval.split must be train, val or test, got {config.eval.split!r}")
    _positive_int(config.eval.batch_size, "eval.batch_size", errors)
    _positive_int(config.train.eval_every, "train.eval_every", errors)
    _positive_int(config.train.log_every, "train.log_every", errors)
    if errors:
        raise ConfigError("invalid config:\n  " + "\n  ".join(errors))


def cache_dir(config: ml_collections.ConfigDict) -> pathlib.Path:
    return (
        pathlib.Path(config.cache_dir).expanduser()
        if config.cache_dir
        else (fetch.default_cache_dir())
    )


def data_dir(config: ml_collections.ConfigDict) -> pathlib.Path:
    if config.data.data_dir:
        return pathlib.Path(config.data.data_dir).expanduser()
    return cache_dir(config) / "tfds"
