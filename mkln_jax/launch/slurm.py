"""Train on a Slurm GPU cluster: by default one task per node driving all of the node's GPUs
(one input pipeline per host; `--tasks_per_node=8` runs one task per GPU instead, jax's own
model). Either way every GPU the job was given is in the mesh: `mkln_jax/distributed.py` reads
Slurm's variables and tells jax which GPUs each task drives.

    mkln launch slurm --nodes=4 --gpus_per_node=8 --config=configs/demo.py \
        --workdir=/shared/runs/demo [--tasks_per_node=1] [--platform=cuda12] [--partition=gpu] \
        [--config.a.b=v] [--dry_run]

Time limits and preemption: Slurm signals the batch script (USR1) two minutes before the time
limit; the script sends SIGTERM to the tasks, which checkpoint at the next step and exit 143,
then it requeues the job (`scontrol requeue`), which resumes from that checkpoint. A preempted
job (SIGTERM to every task) checkpoints the same way and is requeued by Slurm (`--requeue`).
The workdir lock records the job id and restart count, so the requeued job takes over its own
earlier lock on whatever node it lands.

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
        f"#SBATCH --ntasks-per-node={args.tasks_per_node}",
        f"#SBATCH --gpus-per-node={args.gpus_per_node}",
        f"#SBATCH --cpus-per-task={max(args.cpus_per_task // args.tasks_per_node, 1)}",
        f"#SBATCH --time={args.time}",
        "#SBATCH --signal=B:USR1@120",
        "#SBATCH --requeue",
        "#SBATCH --open-mode=append",
        f"#SBATCH --output={args.workdir}/slurm-%j.out",
    ]
    if args.partition:
        lines.append(f"#SBATCH --partition={args.partition}")
    if args.dependency:
        lines.append(f"#SBATCH --dependency=afterok:{args.dependency}")
    lines += ["", "set -euo pipefail", f"cd {args.repo}"]
    if not args.no_setup:
        lines.append(setup_command(args.platform))
    lines += [
        'echo "mkln: job $SLURM_JOB_ID, restart ${SLURM_RESTART_COUNT:-0}"',
        f"srun --kill-on-bad-exit=1 {quoted(train)} &",
        "step=$!",
        "requeue=0",
        "# USR1: the time limit is two minutes away. The tasks checkpoint on SIGTERM and exit.",
        'trap \'requeue=1; echo "mkln: time limit near: checkpointing"; '
        "kill -TERM $step 2>/dev/null || true' USR1",
        "# TERM (preemption) reaches the tasks from Slurm itself; this shell waits for them.",
        "trap 'echo \"mkln: SIGTERM: the tasks checkpoint and exit\"' TERM",
        "code=0",
        "while :; do",
        "    wait $step && code=0 || code=$?",
        "    kill -0 $step 2>/dev/null || break  # srun ended; $code is its status",
        "done",
        "if [ $requeue = 1 ] && [ $code = 143 ]; then",
        '    echo "mkln: requeueing job $SLURM_JOB_ID; it resumes from the checkpoint"',
        "    scontrol requeue $SLURM_JOB_ID",
        "    exit 0",
        "fi",
        "exit $code",
    ]
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
    p.add_argument(
        "--tasks_per_node",
        type=int,
        default=1,
        help="1: one task drives all GPUs of its node (default); gpus_per_node: one per GPU",
    )
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
    if args.tasks_per_node < 1 or args.gpus_per_node % args.tasks_per_node:
        print(
            f"error: --tasks_per_node={args.tasks_per_node} must divide --gpus_per_node="
            f"{args.gpus_per_node} (1, or one task per GPU)",
            file=sys.stderr,
        )
        return 2
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
