"""`mkln convert-weights`: a PyTorch state dict into our layout."""

from __future__ import annotations

import sys

from absl import flags

from mkln_jax.cli import common

SUMMARY = "convert a PyTorch state dict (.pth / .safetensors) of a zoo model to our layout"
USAGE = "mkln convert-weights SRC.pth|SRC.safetensors --model=NAME --out=DIR"
EXAMPLE = "mkln convert-weights efficientnet_b4.pth --model=efficientnet_b4 --out=weights/b4"
TAKES_CONFIG = False


def define_flags() -> list[str]:
    if "model" not in common.FLAGS:
        flags.DEFINE_string("model", "", "Zoo model name (see `mkln models`).")
        flags.DEFINE_string("out", "", "Output folder (must not exist).")
    return ["model", "out"]


def main(config, args: list[str]) -> int:
    from mkln_jax import models
    from mkln_jax.models import convert

    FLAGS = common.FLAGS
    if len(args) != 1 or not FLAGS.model or not FLAGS.out:
        print(f"usage: {USAGE}", file=sys.stderr)
        return 2
    try:
        models.spec(FLAGS.model)
        out = convert.convert_weights(args[0], FLAGS.model, FLAGS.out)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"converted {args[0]} ({FLAGS.model}) to {out}")
    return 0
