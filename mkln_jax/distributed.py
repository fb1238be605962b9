"""Joining the processes of a multi-host run (`jax.distributed.initialize`), on every cluster kind.

- explicit: `--coordinator=host:port --num_processes=N --process_id=i` (any cluster, and the
  two-process CPU tests);
- slurm: inside an `srun` step of more than one task. Every GPU Slurm gave the node is used,
  whether the job runs one task per node (the task sees all of them) or one task per GPU
  (each task sees its own): we pass `local_device_ids` ourselves, because jax's own Slurm
  detection assumes one task per GPU and would restrict a one-task-per-node job to GPU 0;
- tpu: a Cloud TPU VM (plain `gcloud` VMs, where jax finds the slice through the metadata
  server, and GKE), recognised exactly as jax recognises one (`running_in_cloud_tpu_vm`, set
  when libtpu and TPU chips are present); jax's own TPU cluster detection then does the rest;
- otherwise a single process, and nothing is done.

`initialize` must run before anything touches a device; `describe` gives the one line printed
at the start of a run (how the processes joined, how many, devices each, the mesh), and
`check_devices` refuses a process that sees fewer devices than the scheduler gave it.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping

import jax

from mkln_jax.errors import MklnError


class ClusterError(MklnError, RuntimeError):
    """A process that cannot join its run, or joined seeing fewer devices than it was given."""


@dataclasses.dataclass(frozen=True)
class Plan:
    """How this process joins. `kind`: "single", "explicit", "slurm" or "tpu"; `detail`: the
    evidence, in words; `local_device_ids`: the GPUs this process drives (None: all it sees);
    `expected_devices`: how many devices the scheduler gave this process (None: not said)."""

    kind: str
    detail: str = ""
    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    local_device_ids: tuple[int, ...] | None = None
    expected_devices: int | None = None


_JOINED: Plan = Plan("single")


def _on_cloud_tpu_vm() -> bool:
    """jax's own answer (set when jax is imported on a VM with libtpu and TPU chips)."""
    from jax._src import cloud_tpu_init

    return bool(getattr(cloud_tpu_init, "running_in_cloud_tpu_vm", False))


def _expand_counts(spec: str) -> list[int]:
    """Slurm's per-node counts, "8(x2),4" -> [8, 8, 4]."""
    counts = []
    for part in spec.split(","):
        match = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", part)
        if not match:
            return []
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    return counts


def _first_host(nodelist: str) -> str:
    """The first host of a Slurm node list: "gpu[003-007,012],cpu1" -> "gpu003"."""
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist)
    if not match:
        raise ClusterError(f"cannot read the Slurm node list {nodelist!r}")
    prefix, ranges = match.group(1), match.group(2)
    if not ranges:
        return prefix
    return prefix + re.split(r"[,-]", ranges)[0]


def _slurm_plan(env: Mapping[str, str]) -> Plan:
    job, ntasks = env["SLURM_JOB_ID"], int(env["SLURM_NTASKS"])
    process_id, local_id = int(env["SLURM_PROCID"]), int(env["SLURM_LOCALID"])
    node = int(env.get("SLURM_NODEID", "0"))
    per_node = _expand_counts(env.get("SLURM_STEP_TASKS_PER_NODE", "")) or _expand_counts(
        env.get("SLURM_TASKS_PER_NODE", "")
    )
    tasks_here = (
        per_node[node] if node < len(per_node) else int(env.get("SLURM_NTASKS_PER_NODE", "1"))
    )
    # jax's rule for the port, so a job that mixes our processes with plain jax ones agrees.
    port = env.get("JAX_COORDINATOR_PORT") or str(int(job) % 2**12 + (65535 - 2**12 + 1))
    coordinator = f"{_first_host(env['SLURM_STEP_NODELIST'])}:{port}"
    visible = [v for v in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    gpus_here = int(env["SLURM_GPUS_ON_NODE"]) if env.get("SLURM_GPUS_ON_NODE") else len(visible)
    ids, expected = None, None
    if gpus_here:
        if gpus_here % tasks_here:
            raise ClusterError(
                f"Slurm gave node {node} {gpus_here} GPUs for {tasks_here} tasks, which does not "
                "divide evenly. Fix: --ntasks-per-node=1, or one task per GPU."
            )
        expected = gpus_here // tasks_here
        if visible and len(visible) == expected:
            ids = tuple(range(expected))  # Slurm bound this task to its own GPUs already
        else:
            ids = tuple(range(local_id * expected, (local_id + 1) * expected))
    detail = f"job {job}, {len(per_node) or '?'} node(s), {tasks_here} task(s) on node {node}" + (
        f", {gpus_here} GPUs on the node" if gpus_here else ""
    )
    return Plan("slurm", detail, coordinator, ntasks, process_id, ids, expected)


def plan(
    coordinator: str = "",
    num_processes: int = 0,
    process_id: int = -1,
    env: Mapping[str, str] | None = None,
    on_tpu_vm: bool | None = None,
) -> Plan:
    """How this process should join, from the flags and the environment (read, not changed)."""
    env = os.environ if env is None else env
    if coordinator:
        if num_processes < 1 or not 0 <= process_id < num_processes:
            raise ClusterError(
                f"--coordinator needs --num_processes >= 1 and 0 <= --process_id < num_processes "
                f"(got {num_processes}, {process_id})"
            )
        return Plan(
            "explicit", f"--coordinator={coordinator}", coordinator, num_processes, process_id
        )
    slurm_step = all(
        name in env
        for name in (
            "SLURM_JOB_ID",
            "SLURM_STEP_NODELIST",
            "SLURM_NTASKS",
            "SLURM_PROCID",
            "SLURM_LOCALID",
        )
    )
    if slurm_step and int(env["SLURM_NTASKS"]) > 1:
        return _slurm_plan(env)
    if on_tpu_vm is None:
        on_tpu_vm = _on_cloud_tpu_vm()
    if on_tpu_vm:
        return Plan("tpu", "Cloud TPU VM (jax finds the slice's workers)")
    if "TPU_WORKER_HOSTNAMES" in env or "MEGASCALE_COORDINATOR_ADDRESS" in env:
        return Plan("tpu", "TPU worker variables set (GKE)")
    return Plan("single")


def initialize(coordinator: str = "", num_processes: int = 0, process_id: int = -1) -> Plan:
    """Joins the run's processes as `plan` says; returns the plan (kind "single": nothing done)."""
    global _JOINED
    joined = plan(coordinator, num_processes, process_id)
    if joined.kind == "single":
        _JOINED = joined
        return joined
    # CPU devices of different processes talk through gloo (the default has no collectives).
    if os.environ.get("JAX_PLATFORMS", "").startswith("cpu"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if joined.kind == "tpu":
        jax.distributed.initialize()
    else:
        jax.distributed.initialize(
            coordinator_address=joined.coordinator,
            num_processes=joined.num_processes,
            process_id=joined.process_id,
            local_device_ids=list(joined.local_device_ids) if joined.local_device_ids else None,
            # Everything is given: jax's own detection would restrict a Slurm task to GPU
            # [SLURM_LOCALID] where we leave it all its devices (local_device_ids None).
            cluster_detection_method="deactivate",
        )
    _JOINED = joined
    check_devices(joined)
    return joined


def joined() -> Plan:
    return _JOINED


def check_devices(joined: Plan, seen: int | None = None) -> None:
    """Refuses a process that sees fewer devices than its scheduler gave it (before compiling)."""
    if joined.expected_devices is None:
        return
    seen = len(jax.local_devices()) if seen is None else seen
    if seen < joined.expected_devices:
        raise ClusterError(
            f"process {joined.process_id} sees {seen} device(s) but {joined.kind} gave it "
            f"{joined.expected_devices} ({joined.detail}). Fix: check CUDA_VISIBLE_DEVICES and "
            "--gpus-per-node / --ntasks-per-node, so that each task sees its own GPUs."
        )


def _ids(ids: tuple[int, ...] | None) -> str:
    if ids is None:
        return "all visible"
    if len(ids) > 2 and list(ids) == list(range(ids[0], ids[-1] + 1)):
        return f"{ids[0]}-{ids[-1]}"
    return ",".join(map(str, ids))


def describe(mesh=None) -> str:
    """One line: how the processes joined, processes, devices per process, the mesh."""
    j = _JOINED
    how = "single process" if j.kind == "single" else f"joined by {j.kind} ({j.detail})"
    local = jax.local_devices()
    line = (
        f"process {jax.process_index()}/{jax.process_count()} {how}: {len(local)} "
        f"{local[0].platform} device(s) here (ids {_ids(j.local_device_ids)}), "
        f"{jax.device_count()} in all"
    )
    if mesh is not None:
        line += ", mesh " + " x ".join(f"{k} {v}" for k, v in mesh.shape.items())
    return line
