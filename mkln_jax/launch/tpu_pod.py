"""Train on a Cloud TPU VM pod slice: copy the checkout to every worker, set up, and start the
same command on all workers at once (jax.distributed finds the pod topology by itself).

    mkln launch tpu_pod --tpu=my-v5e-32 --zone=us-west4-a --config=configs/demo.py \
        --workdir=/mnt/shared/runs/demo [--config.distill.temperature=4] [--dry_run]

The workdir must be storage every worker sees (a Filestore / GCS FUSE mount): orbax writes the
checkpoint from all processes.
"""

from __future__ import annotations

import argparse
import sys

from mkln_jax.launch.common import OVERRIDE_HELP, execute, mkln_command, parse_args, quoted


def commands(args: argparse.Namespace) -> list[list[str]]:
    target = [args.tpu, f"--zone={args.zone}", "--worker=all"]
    if args.project:
        target.append(f"--project={args.project}")
    train = mkln_command("train", args.config, args.workdir, args.overrides, ".venv/bin/mkln")
    remote = f"cd {args.remote_dir} && make setup && {quoted(train)}"
    return [
        [
            "gcloud",
            "compute",
            "tpus",
            "tpu-vm",
            "scp",
            "--recurse",
            ".",
            f"{args.tpu}:{args.remote_dir}",
            f"--zone={args.zone}",
            "--worker=all",
            *([f"--project={args.project}"] if args.project else []),
        ],
        ["gcloud", "compute", "tpus", "tpu-vm", "ssh", *target, f"--command={remote}"],
    ]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=OVERRIDE_HELP)
    p.add_argument("--tpu", required=True, help="TPU VM name")
    p.add_argument("--zone", required=True)
    p.add_argument("--project", default="")
    p.add_argument("--config", required=True)
    p.add_argument("--workdir", required=True, help="shared storage seen by every worker")
    p.add_argument("--remote_dir", default="mkln_jax")
    p.add_argument("--dry_run", action="store_true", help="print the commands only")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parse_args(parser(), argv)
    return execute(commands(args), args.dry_run)


if __name__ == "__main__":
    sys.exit(main())
