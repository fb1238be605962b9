"""`mkln compare`: finished runs side by side."""

from __future__ import annotations

import sys

from absl import flags

from mkln_jax.cli import common

SUMMARY = "put the evaluations of several runs side by side (markdown)"
USAGE = "mkln compare WORKDIR [WORKDIR ...] [--split=test] [--out=FILE.md]"
EXAMPLE = "mkln compare runs/baseline runs/kd --out=compare.md"
TAKES_CONFIG = False


def define_flags() -> list[str]:
    if "out" not in common.FLAGS:
        flags.DEFINE_string("out", "", "Also write the table to this markdown file.")
    return [*common.split(), "out"]


def main(config, args: list[str]) -> int:
    from mkln_jax import evaluate

    if not args:
        print(f"usage: {USAGE}", file=sys.stderr)
        return 2
    try:
        print(evaluate.compare_runs(args, common.FLAGS.split or "test", common.FLAGS.out))
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
