"""Reading and damaging orbax checkpoints from tests, as a disk or a careless user might."""

import pathlib

import jax
import numpy as np


def latest_params(workdir: pathlib.Path, stage: str, step: int | None = None) -> list[np.ndarray]:
    """The params of a stage's newest (or given) `latest` checkpoint, read without our code."""
    import orbax.checkpoint as ocp

    latest = workdir / stage / "checkpoints" / "latest"
    step = step or max(int(p.name) for p in latest.iterdir() if p.name.isdigit())
    path = latest / str(step) / "state"
    with ocp.PyTreeCheckpointer() as checkpointer:
        metadata = checkpointer.metadata(path)
        tree = getattr(metadata, "item_metadata", None) or getattr(metadata, "tree", metadata)
        tree = getattr(tree, "tree", tree)
        as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
        restored = checkpointer.restore(path, restore_args=as_numpy)
    return [np.asarray(x) for x in jax.tree.leaves(restored["params"])]


def largest_data_file(step_dir: pathlib.Path) -> pathlib.Path:
    """The biggest array-data file of a checkpoint step (where the weights are)."""
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and "/d/" in str(p)]
    return max(files, key=lambda p: p.stat().st_size)


def flip_bit(path: pathlib.Path) -> None:
    """One bit flipped in the middle of a file, as a bad disk or memory would."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))
