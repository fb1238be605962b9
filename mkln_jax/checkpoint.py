"""Orbax checkpoints: the latest N for resuming, and the best one by validation AUC; each one
verified on restore.

Saves are asynchronous; orbax writes into a temporary folder and renames it when complete, so a
crash mid-save never leaves a checkpoint that looks finished. Each checkpoint holds the train
state, the config that produced it, and the fingerprints of every array of the state (64 bits of
a hash of each array's bits, computed on the devices, so sharded arrays on a pod never travel to
one host). A restore recomputes them: a flipped bit, a truncated or a missing file is an error
that names the step, and resuming falls back to the newest intact step, setting the broken one
aside under `checkpoints/corrupt/`.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from mkln_jax.errors import CheckpointError

BEST_METRIC = "val_auc"
INTEGRITY_FORMAT = 1
_ITEMS = ("state", "config", "integrity")


def _mix(x: jax.Array) -> jax.Array:
    """murmur3's 32-bit finaliser: every input bit flips about half the output bits."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x85EBCA6B)
    x = x ^ (x >> 13)
    x = x * jnp.uint32(0xC2B2AE35)
    return x ^ (x >> 16)


def _words(x: jax.Array) -> jax.Array:
    """The bits of `x` as uint32 words (elementwise, so any sharding carries over)."""
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    bits = jnp.dtype(x.dtype).itemsize * 8
    unsigned = {8: jnp.uint8, 16: jnp.uint16, 32: jnp.uint32, 64: jnp.uint32}[bits]
    return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)


def _leaf_fingerprint(x: jax.Array) -> jax.Array:
    """Two 32-bit sums of hashed (position, word) pairs: a changed, moved or missing element
    changes them except with probability ~2^-64; sums are exact, so any sharding agrees."""
    words = _words(jnp.asarray(x))
    index = jnp.zeros(words.shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(words.ndim)):
        index = index + jax.lax.broadcasted_iota(jnp.uint32, words.shape, axis) * jnp.uint32(
            stride % 2**32
        )
        stride *= words.shape[axis]
    position = _mix(index * jnp.uint32(0x9E3779B9) + jnp.uint32(0x7F4A7C15))
    first = jnp.sum(_mix(words ^ position), dtype=jnp.uint32)
    second = jnp.sum(_mix(_mix(words + jnp.uint32(0x632BE5AB)) ^ (position * 3)), dtype=jnp.uint32)
    return jnp.stack([first, second, jnp.uint32(words.size % 2**32)])


_fingerprints = jax.jit(lambda tree: jax.tree.map(_leaf_fingerprint, tree))


def fingerprints(tree) -> dict[str, str]:
    """{leaf path: hex fingerprint} of every array in `tree`."""
    values = _fingerprints(tree)
    leaves = jax.tree_util.tree_flatten_with_path(values)[0]
    out = {}
    for path, value in leaves:
        words = np.asarray(
            value.addressable_data(0) if hasattr(value, "addressable_data") else value
        )
        out[jax.tree_util.keystr(path)] = "".join(f"{int(w):08x}" for w in words)
    return out


def _first_line(err: BaseException) -> str:
    """The gist of an orbax / TensorStore error, without its multi-kilobyte spec dump."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text.split(" See full TensorStore details")[0][:200]


class Checkpoints:
    """`latest` (keep N, resume) and `best` (keep 1, by validation AUC) of one stage. With
    `read_only`, nothing is created on disk, and a missing folder reads as no checkpoints."""

    def __init__(self, directory: str | pathlib.Path, keep: int, *, read_only: bool = False):
        self.directory = pathlib.Path(directory).absolute()
        self.read_only = read_only

        def manager(name: str, **options):
            # Both managers may save the same step at once; with several processes their
            # barriers must not share names, hence a key prefix each.
            return ocp.CheckpointManager(
                self.directory / name,
                options=ocp.CheckpointManagerOptions(
                    create=not read_only,
                    read_only=read_only,
                    multiprocessing_options=ocp.options.MultiprocessingOptions(
                        barrier_sync_key_prefix=name
                    ),
                    **options,
                ),
                item_names=_ITEMS,
            )

        self.latest = manager("latest", max_to_keep=keep)
        self.best = manager(
            "best", max_to_keep=1, best_fn=lambda m: m[BEST_METRIC], best_mode="max"
        )

    @staticmethod
    def _args(state, config: ml_collections.ConfigDict):
        integrity = {"format": INTEGRITY_FORMAT, "fingerprints": fingerprints(state)}
        return ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            config=ocp.args.JsonSave(config.to_dict()),
            integrity=ocp.args.JsonSave(integrity),
        )

    def save(self, step: int, state, config, metrics: dict[str, float]) -> None:
        """Always into `latest`; into `best` when validation metrics come with the save (unless
        `best` already holds this step, as after resuming from before a corrupt newest step)."""
        args = self._args(state, config)
        self.latest.save(step, args=args)
        if metrics and step not in self.best.all_steps():
            self.best.save(step, args=args, metrics=metrics)

    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    def best_step(self) -> int | None:
        return self.best.best_step()

    def _manager(self, which: str) -> ocp.CheckpointManager:
        return self.latest if which == "latest" else self.best

    def restore(self, which: str, step: int, abstract_state) -> Any:
        """The state saved at `step`, verified against its fingerprints; CheckpointError (naming
        the step and the reason) if any file is missing, truncated or changed."""
        manager = self._manager(which)
        where = self.directory / which / str(step)
        try:
            restored = manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
            )
        except Exception as err:  # tensorstore / orbax on missing or truncated files
            raise CheckpointError(
                f"checkpoint {where} cannot be read, a file is missing or truncated "
                f"({_first_line(err)})"
            ) from None
        saved = self._integrity(manager, step, where)
        if saved is not None:
            found = fingerprints(restored.state)
            changed = sorted(k for k in saved | found if saved.get(k) != found.get(k))
            if changed:
                raise CheckpointError(
                    f"checkpoint {where} fails its checksums in {len(changed)} array(s) "
                    f"({', '.join(changed[:3])}{', ...' if len(changed) > 3 else ''}): "
                    "the files changed after they were written"
                )
        return restored.state

    @staticmethod
    def _integrity(manager, step: int, where: pathlib.Path) -> dict | None:
        if not (where / "integrity").is_dir():
            return None  # written before checkpoints carried fingerprints
        try:
            saved = manager.restore(
                step, args=ocp.args.Composite(integrity=ocp.args.JsonRestore())
            ).integrity
            if saved.get("format") != INTEGRITY_FORMAT:
                raise ValueError(f"integrity format {saved.get('format')!r}")
            return dict(saved["fingerprints"])
        except Exception as err:
            raise CheckpointError(
                f"checkpoint {where}: its checksums cannot be read ({type(err).__name__})"
            ) from None

    def restore_latest_intact(
        self, abstract_state, check_config: Callable[[dict], None], log=print
    ) -> tuple[int | None, Any]:
        """(step, state) of the newest `latest` checkpoint that verifies, or (None, None) when
        there is none. `check_config(saved config)` runs first and may raise (a changed run is
        refused, never mistaken for a broken checkpoint). Each newer step that fails is named
        with the reason and moved to `checkpoints/corrupt/`, so the run can save it again."""
        steps = sorted(self.latest.all_steps(), reverse=True)
        problems = []
        for step in steps:
            try:
                saved = self.saved_config(step)
            except CheckpointError as err:
                problems.append(str(err))
                log(f"skipping checkpoint step {step}: {err}")
                continue
            check_config(saved)
            try:
                state = self.restore("latest", step, abstract_state)
            except CheckpointError as err:
                problems.append(str(err))
                log(f"skipping checkpoint step {step}: {err}")
                continue
            for broken in steps[: steps.index(step)]:
                log(f"moved the unusable step {broken} to {self.set_aside('latest', broken)}")
            return step, state
        if steps:
            raise CheckpointError(
                f"no intact checkpoint under {self.directory / 'latest'} ({len(steps)} tried; "
                f"{problems[0]}). Fix: move that folder away to train from the start."
            )
        return None, None

    def set_aside(self, which: str, step: int) -> pathlib.Path:
        """Moves a broken step out of orbax's view, to `checkpoints/corrupt/`; returns where."""
        source = self.directory / which / str(step)
        target = self.directory / "corrupt" / f"{which}_{step}_{time.strftime('%Y%m%dT%H%M%S')}"
        if jax.process_index() == 0:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(source, target)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"mkln_set_aside_{which}_{step}")
        self._manager(which).reload()
        return target

    def saved_config(self, step: int, which: str = "latest") -> dict:
        where = self.directory / which / str(step)
        try:
            restored = self._manager(which).restore(
                step, args=ocp.args.Composite(config=ocp.args.JsonRestore())
            )
        except Exception as err:
            raise CheckpointError(
                f"checkpoint {where}: its config cannot be read ({type(err).__name__})"
            ) from None
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
