"""Mesh and shardings: one `data` axis over all devices; host batches become global arrays."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def make_mesh(num_data: int = -1) -> Mesh:
    """A 1-D mesh named `data` over the first `num_data` devices (-1 = all)."""
    devices = jax.devices()
    count = len(devices) if num_data == -1 else num_data
    return Mesh(np.asarray(devices[:count]), ("data",))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec("data"))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def host_to_global(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This process's slice of the batch -> one global array per key, split on `data`."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}
