"""`mkln launch`: the launchers (TPU pods, Slurm, sweeps, ablations), which parse their own
arguments (`mkln launch sweep --help`)."""

from __future__ import annotations

import importlib
import sys

SUMMARY = "run a launcher: tpu_pod, slurm, sweep or ablation (each has --dry_run and --help)"
USAGE = "mkln launch tpu_pod|slurm|sweep|ablation [its arguments]"
EXAMPLE = "mkln launch sweep --config=demo --workdir=runs/sweep --grid=distill.temperature=1,4,8"
TAKES_CONFIG = False
LAUNCHERS = ("tpu_pod", "slurm", "sweep", "ablation")


def run(args: list[str]) -> int:
    """Runs before absl parses anything: the launcher's own argparse gets `args`."""
    if not args or args[0] not in LAUNCHERS:
        given = repr(args[0]) if args else "none"
        print(
            f"error: unknown launcher {given}; give one of {', '.join(LAUNCHERS)}", file=sys.stderr
        )
        return 2
    module = importlib.import_module(f"mkln_jax.launch.{args[0]}")
    return module.main(args[1:])
