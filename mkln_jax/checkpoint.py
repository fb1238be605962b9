"""Orbax checkpoints: the latest N for resuming, and the best one by validation AUC.

Saves are asynchronous; orbax writes into a temporary folder and renames it when complete, so a
crash mid-save never leaves a checkpoint that looks finished. Each checkpoint holds the train
state and the config that produced it.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

BEST_METRIC = "val_auc"


class Checkpoints:
    def __init__(self, directory: str | pathlib.Path, keep: int):
        directory = pathlib.Path(directory).absolute()
        item_names = ("state", "config")
        # Both managers may save the same step at once; with several processes their barriers
        # must not share names, hence a key prefix each.
        self.latest = ocp.CheckpointManager(
            directory / "latest",
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep,
                create=True,
                multiprocessing_options=ocp.options.MultiprocessingOptions(
                    barrier_sync_key_prefix="latest"
                ),
            ),
            item_names=item_names,
        )
        self.best = ocp.CheckpointManager(
            directory / "best",
            options=ocp.CheckpointManagerOptions(
                max_to_keep=1,
                best_fn=lambda m: m[BEST_METRIC],
                best_mode="max",
                create=True,
                multiprocessing_options=ocp.options.MultiprocessingOptions(
                    barrier_sync_key_prefix="best"
                ),
            ),
            item_names=item_names,
        )

    @staticmethod
    def _args(state, config: ml_collections.ConfigDict):
        return ocp.args.Composite(
            state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(config.to_dict())
        )

    def save(self, step: int, state, config, metrics: dict[str, float]) -> None:
        """Always into `latest`; into `best` when validation metrics come with the save."""
        self.latest.save(step, args=self._args(state, config))
        if metrics:
            self.best.save(step, args=self._args(state, config), metrics=metrics)

    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    def best_step(self) -> int | None:
        return self.best.best_step()

    def restore(self, which: str, step: int, abstract_state) -> Any:
        manager = self.latest if which == "latest" else self.best
        restored = manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
        )
        return restored.state

    def saved_config(self, step: int) -> dict:
        restored = self.latest.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
        return restored.config

    def wait(self) -> None:
        self.latest.wait_until_finished()
        self.best.wait_until_finished()

    def close(self) -> None:
        self.latest.close()
        self.best.close()


def config_differences(
    saved: dict, config: ml_collections.ConfigDict, ignore: tuple[str, ...] = ()
) -> list[str]:
    """Dotted names of the fields where `config` differs from a checkpoint's saved config,
    except top-level sections in `ignore`."""
    current = json.loads(config.to_json())
    saved = {k: v for k, v in saved.items() if k not in ignore}
    current = {k: v for k, v in current.items() if k not in ignore}

    def walk(a, b, prefix: str):
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b)):
                yield from walk(a.get(key), b.get(key), f"{prefix}{key}.")
        elif a != b:
            yield f"{prefix[:-1]} ({a!r} -> {b!r})"

    return list(walk(saved, current, ""))


def abstract_like(tree, shardings) -> Any:
    """ShapeDtypeStructs of `tree` with `shardings` (one for all, or a matching pytree), the
    target for a sharded restore."""
    if not isinstance(shardings, jax.sharding.Sharding):
        return jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
        )
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=shardings), tree)
