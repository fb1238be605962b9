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


def make_mesh(num_data: int = -1, num_fsdp: int = 1) -> Mesh:
    """A (data, fsdp) mesh over the first data * fsdp devices; num_data = -1 takes the rest."""
    devices = jax.devices()
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
