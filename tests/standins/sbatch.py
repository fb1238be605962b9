"""Stand-in for Slurm's `sbatch` on one machine (the cluster rehearsals, tests/test_clusters.py).

Reads the script's `#SBATCH` lines, sets the variables Slurm sets in a batch job, and runs the
script in the foreground, its output appended to `--output` (with %j). Signals sent to this
stand-in play Slurm's part: USR1 goes to the batch shell only (`--signal=B:USR1@...`, the time
limit near); TERM goes to every process of the job (preemption). `scontrol requeue` (the
stand-in next to this one) is recorded in $STANDIN_DIR/requeued. The job id and restart count
come from STANDIN_JOB_ID and STANDIN_RESTART_COUNT.
"""

import os
import re
import signal
import subprocess
import sys


def directives(script: str) -> dict[str, str]:
    found = {}
    for line in open(script):
        match = re.match(r"#SBATCH --([\w-]+)(?:=(\S*))?", line.strip())
        if match:
            found[match.group(1)] = match.group(2) or ""
    return found


def main() -> int:
    script = sys.argv[-1]
    opts = directives(script)
    job = os.environ.get("STANDIN_JOB_ID", "4242")
    nodes = int(opts.get("nodes", "1"))
    per_node = int(opts.get("ntasks-per-node", "1"))
    gpus = int(opts.get("gpus-per-node", "0"))
    env = dict(
        os.environ,
        SLURM_JOB_ID=job,
        SLURM_JOBID=job,
        SLURM_JOB_NAME=opts.get("job-name", "sbatch"),
        SLURM_NNODES=str(nodes),
        SLURM_JOB_NUM_NODES=str(nodes),
        # Every stand-in node is this machine; the first host is the coordinator's.
        SLURM_JOB_NODELIST="localhost",
        SLURM_NODELIST="localhost",
        SLURM_NTASKS=str(nodes * per_node),
        SLURM_NPROCS=str(nodes * per_node),
        SLURM_NTASKS_PER_NODE=str(per_node),
        SLURM_TASKS_PER_NODE=f"{per_node}(x{nodes})" if nodes > 1 else str(per_node),
        SLURM_NODEID="0",
        SLURM_SUBMIT_DIR=os.getcwd(),
        SLURM_RESTART_COUNT=os.environ.get("STANDIN_RESTART_COUNT", "0"),
    )
    if gpus:
        env["SLURM_GPUS_ON_NODE"] = str(gpus)
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, range(gpus)))
    output = opts.get("output", "slurm-%j.out").replace("%j", job)
    print(f"Submitted batch job {job}", flush=True)
    with open(output, "a") as log:
        shell = subprocess.Popen(
            ["bash", script], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        signal.signal(signal.SIGUSR1, lambda *_: shell.send_signal(signal.SIGUSR1))
        signal.signal(signal.SIGTERM, lambda *_: os.killpg(shell.pid, signal.SIGTERM))
        return shell.wait()


if __name__ == "__main__":
    sys.exit(main())
