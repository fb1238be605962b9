"""Stand-in for Slurm's `srun` inside a stand-in batch job: starts SLURM_NNODES x
SLURM_NTASKS_PER_NODE local processes with the variables Slurm gives each task, forwards
TERM / INT / USR1 / USR2 to them, and exits with the highest exit status (killing the rest when
one fails, as `--kill-on-bad-exit=1`).

A GPU node's runtime shows a task the GPUs jax is told to drive: all of the node's for one task
per node, its own for one task per GPU. CPU devices stand in for them
(`--xla_force_host_platform_device_count`); STANDIN_DEVICES_PER_TASK overrides the count, to
rehearse a task that sees fewer GPUs than it was given.
"""

import os
import signal
import subprocess
import sys
import time


def main() -> int:
    args = sys.argv[1:]
    while args and args[0].startswith("--"):  # srun's own options, before the command
        args = args[1:]
    command = args
    nodes = int(os.environ["SLURM_NNODES"])
    per_node = int(os.environ["SLURM_NTASKS_PER_NODE"])
    gpus = int(os.environ.get("SLURM_GPUS_ON_NODE", "0"))
    devices = int(os.environ.get("STANDIN_DEVICES_PER_TASK") or max(gpus // per_node, 1))
    tasks = []
    for node in range(nodes):
        for local in range(per_node):
            env = dict(
                os.environ,
                SLURM_PROCID=str(node * per_node + local),
                SLURM_LOCALID=str(local),
                SLURM_NODEID=str(node),
                SLURM_STEP_ID="0",
                SLURM_STEP_NODELIST=os.environ["SLURM_JOB_NODELIST"],
                SLURM_STEP_NUM_NODES=str(nodes),
                SLURM_STEP_NUM_TASKS=os.environ["SLURM_NTASKS"],
                SLURM_STEP_TASKS_PER_NODE=os.environ["SLURM_TASKS_PER_NODE"],
                XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
                JAX_PLATFORMS="cpu",
            )
            tasks.append(subprocess.Popen(command, env=env))

    def forward(signum, frame):
        del frame
        for task in tasks:
            if task.poll() is None:
                task.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(signum, forward)
    codes = {}
    while len(codes) < len(tasks):
        for i, task in enumerate(tasks):
            if i not in codes and task.poll() is not None:
                codes[i] = task.returncode
                if task.returncode not in (0, 143):  # --kill-on-bad-exit=1
                    forward(signal.SIGKILL, None)
        time.sleep(0.05)
    return max(c if c >= 0 else 128 - c for c in codes.values())


if __name__ == "__main__":
    sys.exit(main())
