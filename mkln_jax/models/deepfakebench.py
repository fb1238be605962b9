"""DeepfakeBench's released detector checkpoints as our 2-class detectors.

DeepfakeBench (github.com/SCLBD/DeepfakeBench, weights in its v1.0.1 release) saves each
detector's whole `state_dict()`: the backbone under `backbone.`, its own extra modules beside.
Read through the same restricted reader as any `.pth` (no code runs), then:

- **Xception** (`xception_best.pth`, XceptionDetector, backbone mode "original"): Cadene's names
  under `backbone.`, head `backbone.last_linear` (`last_linear.1` when built with dropout) ->
  the zoo's `xception`, RGB stream. `backbone.adjust_channel.*`, built but unused in mode
  "original", is dropped.
- **F3Net** (`f3net_best.pth`, F3netDetector): that Xception with a 12-channel stem behind its
  FAD head -> our frequency stream on `xception` with DeepfakeBench's band masks
  (`frequency.fad_masks(..., "deepfakebench")`, checked equal to the file's `base` masks) and
  its learnable filters; the file's DCT matrix is checked against ours. Input size = the FAD's.

Not mapped (refused naming the reason):
- **EfficientNet-B4** (`effnb4_best.pth`): efficientnet_pytorch's `efficientnet-b4`, whose
  TensorFlow-style padding is fixed for 380-pixel inputs and whose BatchNorm eps is 1e-3; the
  zoo's `efficientnet_b4` is timm's (symmetric padding, eps 1e-5), so its logits would differ.
- Xception in modes "adjust_channel" / "shallow_xception" and every other detector (their
  backbones or heads have no zoo counterpart).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mkln_jax import frequency
from mkln_jax.models.convert import WeightMismatchError

MAPPED = ("xception", "f3net")


@dataclasses.dataclass
class Detector:
    """A DeepfakeBench checkpoint in our terms."""

    kind: str  # "xception" | "f3net"
    model: str  # zoo backbone
    stream: str  # "rgb" | "frequency"
    backbone: dict[str, np.ndarray]  # Cadene / timm names, as convert.load_torch_state_dict takes
    image_size: int = 0  # the FAD's size (frequency stream)
    fad_filters: np.ndarray | None = None  # float32[4, N, N], our FAD's `filters`


def kind_of(state_dict: dict) -> str:
    """Which DeepfakeBench detector a state dict is ('' if none): after `module.` is stripped."""
    names = set(_strip_module(state_dict))
    if "backbone.efficientnet._conv_stem.weight" in names:
        return "efficientnetb4"
    if "backbone.block1.rep.0.conv1.weight" in names:
        return "f3net" if any(n.startswith("FAD_head.") for n in names) else "xception"
    return ""


def _strip_module(state_dict: dict) -> dict:
    if state_dict and all(k.startswith("module.") for k in state_dict):
        return {k[len("module.") :]: v for k, v in state_dict.items()}
    return state_dict


def _xception_backbone(state_dict: dict, source: str) -> dict[str, np.ndarray]:
    out = {}
    for name, value in state_dict.items():
        if not name.startswith("backbone.") or name.startswith("backbone.adjust_channel."):
            continue
        name = name[len("backbone.") :]
        for head in ("last_linear.1.", "last_linear."):
            if name.startswith(head):
                name = "fc." + name[len(head) :]
                break
        out[name] = np.asarray(value)
    head = out.get("fc.weight")
    if head is None or head.shape[-1] != 2048:
        raise WeightMismatchError(
            f"{source}: a DeepfakeBench Xception whose head is not on the 2048 pooled features "
            "(mode 'adjust_channel' or 'shallow_xception'); only mode 'original' maps"
        )
    return out


def convert(state_dict: dict, source: str) -> Detector:
    """A DeepfakeBench detector checkpoint in our terms, or WeightMismatchError saying why not."""
    state_dict = _strip_module(state_dict)
    kind = kind_of(state_dict)
    if kind == "efficientnetb4":
        raise WeightMismatchError(
            f"{source}: DeepfakeBench's EfficientNet-B4 detector does not map: its backbone "
            "(efficientnet_pytorch 'efficientnet-b4') pads for 380-pixel inputs TensorFlow's way "
            "with BatchNorm eps 1e-3, and the zoo's efficientnet_b4 is timm's; its Xception "
            "and F3Net checkpoints map"
        )
    if kind == "xception":
        return Detector(kind, "xception", "rgb", _xception_backbone(state_dict, source))
    if kind != "f3net":
        raise WeightMismatchError(f"{source}: not a DeepfakeBench Xception or F3Net checkpoint")
    backbone = _xception_backbone(state_dict, source)
    try:
        learned = np.stack(
            [np.asarray(state_dict[f"FAD_head.filters.{k}.learnable"]) for k in range(4)]
        ).astype(np.float32)
        bases = np.stack([np.asarray(state_dict[f"FAD_head.filters.{k}.base"]) for k in range(4)])
    except KeyError as e:
        raise WeightMismatchError(f"{source}: F3Net checkpoint without {e.args[0]}") from None
    size = learned.shape[-1]
    if learned.shape != (4, size, size) or bases.shape != learned.shape:
        raise WeightMismatchError(f"{source}: FAD filters of shape {learned.shape}, not [4, N, N]")
    if not np.array_equal(bases, frequency.fad_masks(size, "deepfakebench")):
        raise WeightMismatchError(f"{source}: its FAD band masks are not DeepfakeBench's")
    dct = state_dict.get("FAD_head._DCT_all")
    if dct is not None and not np.allclose(
        np.asarray(dct, np.float64), frequency.dct_matrix(size), atol=1e-5
    ):
        raise WeightMismatchError(f"{source}: its FAD DCT matrix is not the orthonormal DCT-II")
    return Detector(kind, "xception", "frequency", backbone, size, learned)
