"""Train on a Cloud TPU VM pod slice: ship the checkout to every worker, install JAX for TPU,
and start the same command on all workers at once (jax.distributed finds the pod topology by
itself).

    mkln launch tpu_pod --tpu=my-v5e-32 --zone=us-west4-a --config=configs/demo.py \
        --workdir=/mnt/shared/runs/demo [--config.distill.temperature=4] [--dry_run]

What ships is the checkout's tracked files as they are now (`git archive` of `git stash
create`, so uncommitted edits travel too), never `.venv/`, `runs/` or caches: each worker
builds its own `.venv` (mkln_jax/launch/setup_host.sh: TPU VM images ship Python 3.10, so where
no Python 3.11+ is found, uv installs 3.12 first; then `make setup PLATFORM=tpu`, libtpu at the
locked jax version). `--no_setup` skips that on workers already set up. Every worker runs the
same `mkln train`; `mkln_jax/distributed.py` recognises the TPU VM as jax does and joins the
slice. The workdir must be storage every worker sees (docs/scaling.md: where data, workdir and
caches live on a pod).
"""

from __future__ import annotations

import argparse
import subprocess
import sys

from mkln_jax.launch.common import OVERRIDE_HELP, execute, mkln_command, parse_args, quoted

ARCHIVE = "mkln_jax-src.tar.gz"


def source_tree() -> str:
    """The commit to ship: HEAD plus any uncommitted edits of tracked files."""
    stash = subprocess.run(["git", "stash", "create"], capture_output=True, text=True)
    return stash.stdout.strip() or "HEAD"


def commands(args: argparse.Namespace, tree: str = "HEAD") -> list[list[str]]:
    target = [args.tpu, f"--zone={args.zone}", "--worker=all"]
    if args.project:
        target.append(f"--project={args.project}")
    train = mkln_command("train", args.config, args.workdir, args.overrides, ".venv/bin/mkln")
    setup = "" if args.no_setup else "bash mkln_jax/launch/setup_host.sh tpu && "
    unpack = (
        f"mkdir -p {args.remote_dir} && tar -xzf {ARCHIVE} -C {args.remote_dir} && "
        f"cd {args.remote_dir} && {setup}{quoted(train)}"
    )
    project = [f"--project={args.project}"] if args.project else []
    return [
        ["git", "archive", "--format=tar.gz", f"--output={args.archive}", tree],
        [
            "gcloud",
            "compute",
            "tpus",
            "tpu-vm",
            "scp",
            args.archive,
            f"{args.tpu}:{ARCHIVE}",
            f"--zone={args.zone}",
            "--worker=all",
            *project,
        ],
        ["gcloud", "compute", "tpus", "tpu-vm", "ssh", *target, f"--command={unpack}"],
    ]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=OVERRIDE_HELP)
    p.add_argument("--tpu", required=True, help="TPU VM name")
    p.add_argument("--zone", required=True)
    p.add_argument("--project", default="")
    p.add_argument("--config", required=True)
    p.add_argument("--workdir", required=True, help="shared storage seen by every worker")
    p.add_argument("--remote_dir", default="mkln_jax")
    p.add_argument("--no_setup", action="store_true", help="the workers' .venv is set up")
    p.add_argument("--archive", default=f"/tmp/{ARCHIVE}", help="where the archive is built")
    p.add_argument("--dry_run", action="store_true", help="print the commands only")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parse_args(parser(), argv)
    return execute(commands(args, "HEAD" if args.dry_run else source_tree()), args.dry_run)


if __name__ == "__main__":
    sys.exit(main())
