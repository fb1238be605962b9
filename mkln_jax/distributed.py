"""Joining the processes of a multi-host run (`jax.distributed.initialize`).

- explicit: `--coordinator=host:port --num_processes=N --process_id=i` (any cluster, and the
  two-process CPU tests);
- automatic: on Slurm (more than one task) and on Cloud TPU VM pods, where jax reads the
  topology from the environment;
- otherwise a single process, and nothing is done.
Must run before anything touches a device.
"""

from __future__ import annotations

import os

import jax


def _auto_detected() -> str:
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in os.environ:
        return "slurm"
    if "TPU_WORKER_HOSTNAMES" in os.environ or "MEGASCALE_COORDINATOR_ADDRESS" in os.environ:
        return "tpu"
    return ""


def initialize(coordinator: str = "", num_processes: int = 0, process_id: int = -1) -> str:
    """Joins the run's processes; returns how ("explicit", "slurm", "tpu" or "" for single)."""
    how = "explicit" if coordinator else _auto_detected()
    if not how:
        return ""
    # CPU devices of different processes talk through gloo (the default has no collectives).
    if os.environ.get("JAX_PLATFORMS", "").startswith("cpu"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if how == "explicit":
        if num_processes < 1 or not 0 <= process_id < num_processes:
            raise ValueError(
                f"--coordinator needs --num_processes >= 1 and 0 <= --process_id < num_processes "
                f"(got {num_processes}, {process_id})"
            )
        jax.distributed.initialize(
            coordinator_address=coordinator, num_processes=num_processes, process_id=process_id
        )
    else:
        jax.distributed.initialize()
    return how
