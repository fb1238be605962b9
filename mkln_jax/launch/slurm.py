"""Train on a Slurm GPU cluster: one task per node, all GPUs of the node in that task;
jax.distributed reads the job's layout from Slurm's environment. Slurm sends SIGTERM two minutes
before the time limit (or on preemption), the run checkpoints and exits, and `--requeue` starts
it again from that checkpoint.

    mkln launch slurm --nodes=4 --gpus_per_node=8 --config=configs/demo.py \
        --workdir=/shared/runs/demo [--platform=cuda12] [--partition=gpu] [--config.a.b=v] \
        [--dry_run]

The job first installs the platform's JAX (`make setup PLATFORM=cuda12`: JAX's CUDA plugin at the
locked version) into the checkout's .venv, unless `--no_setup` (a sweep sets up once in its own
job and makes every point depend on it, so no two jobs ever install into one .venv).
"""

from __future__ import annotations

import argparse
import pathlib
import sys

from mkln_jax.launch.common import OVERRIDE_HELP, execute, mkln_command, parse_args, quoted

PLATFORMS = ("cuda12", "cuda13", "cpu")


def setup_command(platform: str) -> str:
    return f"make setup PLATFORM={platform}"


def sbatch_script(args: argparse.Namespace) -> str:
    train = mkln_command("train", args.config, args.workdir, args.overrides, ".venv/bin/mkln")
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name={args.job_name}",
        f"#SBATCH --nodes={args.nodes}",
        "#SBATCH --ntasks-per-node=1",
        f"#SBATCH --gpus-per-node={args.gpus_per_node}",
        f"#SBATCH --cpus-per-task={args.cpus_per_task}",
        f"#SBATCH --time={args.time}",
        "#SBATCH --signal=TERM@120",
        "#SBATCH --requeue",
        f"#SBATCH --output={args.workdir}/slurm-%j.out",
    ]
    if args.partition:
        lines.append(f"#SBATCH --partition={args.partition}")
    if args.dependency:
        lines.append(f"#SBATCH --dependency=afterok:{args.dependency}")
    lines += ["", "set -euo pipefail", f"cd {args.repo}"]
    if not args.no_setup:
        lines.append(setup_command(args.platform))
    lines.append(f"srun {quoted(train)}")
    return "\n".join(lines) + "\n"


def setup_script(platform: str, repo: str, workdir: str, partition: str = "") -> str:
    """A one-node job that installs the platform into the checkout's .venv, once."""
    lines = [
        "#!/bin/bash",
        "#SBATCH --job-name=mkln-setup",
        "#SBATCH --nodes=1",
        "#SBATCH --ntasks=1",
        "#SBATCH --time=01:00:00",
        f"#SBATCH --output={workdir}/slurm-setup-%j.out",
    ]
    if partition:
        lines.append(f"#SBATCH --partition={partition}")
    lines += ["", "set -euo pipefail", f"cd {repo}", setup_command(platform)]
    return "\n".join(lines) + "\n"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=OVERRIDE_HELP)
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--gpus_per_node", type=int, default=8)
    p.add_argument("--cpus_per_task", type=int, default=16)
    p.add_argument("--time", default="24:00:00")
    p.add_argument("--partition", default="")
    p.add_argument("--job_name", default="mkln")
    p.add_argument("--config", required=True)
    p.add_argument("--workdir", required=True, help="shared storage seen by every node")
    p.add_argument("--repo", default=str(pathlib.Path(__file__).resolve().parents[2]))
    p.add_argument("--platform", choices=PLATFORMS, default="cuda12", help="JAX to install")
    p.add_argument("--no_setup", action="store_true", help="the .venv is already set up")
    p.add_argument("--dependency", default="", help="Slurm job id that must succeed first")
    p.add_argument("--dry_run", action="store_true", help="print the script and command only")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parse_args(parser(), argv)
    script = sbatch_script(args)
    path = pathlib.Path(args.workdir) / f"{args.job_name}.sbatch"
    if args.dry_run:
        print(script)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(script)
    return execute([["sbatch", str(path)]], args.dry_run)


if __name__ == "__main__":
    sys.exit(main())
