"""Mesh, partition rules and host -> global arrays.

The mesh has two axes: `data` (batch split, parameters replicated) and `fsdp` (batch split too,
and large parameters and their optimiser moments sharded along their largest divisible
dimension: ZeRO-3 / FSDP style). With `fsdp = 1` this is plain data parallelism. The rule
depends only on a leaf's shape, so a parameter and its Adam moments always get the same
sharding. The same code runs on 1 CPU, 8 fake CPU devices, a GPU host or a TPU pod slice.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

BATCH_AXES = ("data", "fsdp")


def by_process(devices) -> list:
    """Devices ordered by (process, id): each process's devices are consecutive along the batch,
    so its rows of a global batch are one contiguous block (what evaluation's row order and
    `host_to_global` rely on), and an `fsdp` group that divides a host's devices stays inside
    that host. jax's own device order gives this only by default, not by contract."""
    return sorted(devices, key=lambda d: (d.process_index, d.id))


def make_mesh(num_data: int = -1, num_fsdp: int = 1, devices=None) -> Mesh:
    """A (data, fsdp) mesh over the first data * fsdp devices (`by_process` order); num_data =
    -1 takes the rest. `devices`: default jax.devices() (another topology's, to compile for)."""
    devices = by_process(jax.devices() if devices is None else devices)
    if num_data == -1:
        num_data = len(devices) // num_fsdp
    count = num_data * num_fsdp
    if count > len(devices) or count == 0:
        raise ValueError(f"mesh {num_data} x {num_fsdp} needs {count} devices, have {len(devices)}")
    return Mesh(np.asarray(devices[:count]).reshape(num_data, num_fsdp), BATCH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def leaf_spec(shape: tuple[int, ...], fsdp: int, min_size: int) -> PartitionSpec:
    """Shard the largest dimension divisible by `fsdp` of leaves with >= min_size elements."""
    if fsdp == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return PartitionSpec()
    for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
        if shape[dim] % fsdp == 0:
            spec: list[Any] = [None] * len(shape)
            spec[dim] = "fsdp"
            return PartitionSpec(*spec)
    return PartitionSpec()


def state_shardings(tree, mesh: Mesh, min_size: int = 2**14):
    """NamedShardings for every leaf of a (possibly abstract) pytree, by the rule above."""
    fsdp = mesh.shape["fsdp"]
    return jax.tree.map(lambda x: NamedSharding(mesh, leaf_spec(x.shape, fsdp, min_size)), tree)


def without_fsdp(shardings):
    """The same shardings with the `fsdp` axis dropped from every spec."""

    def drop(s: NamedSharding) -> NamedSharding:
        def keep(entry):
            if entry == "fsdp":
                return None
            if isinstance(entry, tuple):
                rest = tuple(a for a in entry if a != "fsdp")
                return rest if len(rest) > 1 else (rest[0] if rest else None)
            return entry

        return NamedSharding(s.mesh, PartitionSpec(*(keep(e) for e in s.spec)))

    return jax.tree.map(drop, shardings)


def gathered_at_use(step_fn, state_shardings, teacher_shardings=None):
    """`step_fn(state, teacher_vars, *rest)` with the trained model's parameters and BatchNorm
    statistics, and the teachers' variables, constrained whole (their `fsdp` split dropped) as
    the step starts. FSDP stores them split and computes with them gathered, so activations
    stay split by batch alone: left to itself, XLA's partitioner split some layers by channel
    to follow a split kernel, moving activations between devices (all-to-alls whose size grows
    with the batch). The gradients' transpose is the reduction back to the split state."""
    if all(s.mesh.shape.get("fsdp", 1) == 1 for s in jax.tree.leaves(state_shardings)):
        return step_fn
    whole = without_fsdp((state_shardings.params, state_shardings.batch_stats))
    teachers_whole = None if teacher_shardings is None else without_fsdp(teacher_shardings)

    def step(state, teacher_vars, *rest):
        params, stats = jax.lax.with_sharding_constraint((state.params, state.batch_stats), whole)
        state = state.replace(params=params, batch_stats=stats)
        if teacher_vars is not None and teachers_whole is not None:
            teacher_vars = jax.lax.with_sharding_constraint(teacher_vars, teachers_whole)
        return step_fn(state, teacher_vars, *rest)

    return step


def variables_gathered(eval_fn, variable_shardings):
    """`eval_fn(params, batch_stats, *rest)` with both constrained whole at the start (see
    `gathered_at_use`); `variable_shardings`: their (params, batch_stats) shardings."""
    if all(s.mesh.shape.get("fsdp", 1) == 1 for s in jax.tree.leaves(variable_shardings)):
        return eval_fn
    whole = without_fsdp(variable_shardings)

    def fn(params, batch_stats, *rest):
        params, batch_stats = jax.lax.with_sharding_constraint((params, batch_stats), whole)
        return eval_fn(params, batch_stats, *rest)

    return fn


def place(tree, shardings):
    """Host values (identical on every process) -> global arrays with the given shardings.

    Works across processes: each process fills only its addressable shards.
    """

    def put(value, sharding):
        value = np.asarray(value)
        return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])

    return jax.tree.map(put, tree, shardings)


def host_to_global(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This process's rows of the batch -> one global array per key, split over data x fsdp."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def to_host(tree):
    """Global arrays -> numpy on every process. Replicated or local values are read where they
    are; values split across processes (a population's per-member metrics) are gathered first."""
    from jax.experimental import multihost_utils

    def get(x):
        if isinstance(x, jax.Array) and not (x.is_fully_addressable or x.is_fully_replicated):
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(jax.device_get(x))

    return jax.tree.map(get, tree)
