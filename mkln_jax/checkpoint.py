"""Orbax checkpoints: the latest N for resuming, and the best one by validation AUC; each one
verified on restore.

Saves are asynchronous; orbax writes into a temporary folder and renames it when complete, so a
crash mid-save never leaves a checkpoint that looks finished. Each checkpoint holds the train
state, the config that produced it, and the fingerprints of every array of the state (a hash of
each array's bits: on the host for arrays a process holds whole, on the devices for arrays
sharded across processes, so a pod's state never travels to one host). A restore recomputes
them: a flipped bit, a truncated or a missing file is an error that names the step, and
resuming falls back to the newest intact step, setting the broken one aside under
`checkpoints/corrupt/`.
"""

from __future__ import annotations

import contextlib
import contextvars
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
# None: a step without its integrity record is refused; a list: allowed, and each such step
# used is recorded there (`allowing_unverified`, the --allow_unverified of evaluate / export).
_UNVERIFIED: contextvars.ContextVar[list | None] = contextvars.ContextVar(
    "mkln_unverified", default=None
)


@contextlib.contextmanager
def allowing_unverified(allowed: bool = True):
    """Within: restoring a step that has no integrity record is allowed (named in one warning
    line and recorded: `unverified_used`), instead of refused."""
    token = _UNVERIFIED.set([] if allowed else None)
    try:
        yield
    finally:
        _UNVERIFIED.reset(token)


def unverified_used() -> list[str]:
    """The steps restored without verification in the current `allowing_unverified` scope."""
    return list(_UNVERIFIED.get() or [])


# The fingerprint of one array, defined once and computed two ways with identical results: in
# numpy on the host for arrays one process holds whole (no compilation: a jitted function over
# a whole train state took 11.6 s to compile on a 2-core CPU), and in one jitted function on
# the devices for arrays sharded across processes (nothing gathers on a host).
_GOLDEN, _SALT, _SALT2 = 0x9E3779B9, 0x7F4A7C15, 0x632BE5AB
_CHUNK = 1 << 22  # words hashed at a time on the host (bounds the temporaries to ~16 MiB each)


def _mix(x):
    """murmur3's 32-bit finaliser, on uint32 arrays of numpy or jax: every input bit flips
    about half the output bits."""
    x = x ^ (x >> 16)
    x = x * x.dtype.type(0x85EBCA6B)
    x = x ^ (x >> 13)
    x = x * x.dtype.type(0xC2B2AE35)
    return x ^ (x >> 16)


def _hash_words(words, index):
    """The two 32-bit sums of hashed (position, word) pairs, given uint32 words and their
    linear indices (numpy or jax)."""
    u32 = words.dtype.type
    position = _mix(index * u32(_GOLDEN) + u32(_SALT))
    first = _mix(words ^ position)
    second = _mix(_mix(words + u32(_SALT2)) ^ (position * u32(3)))
    return first, second


def _host_words(x: np.ndarray) -> np.ndarray:
    """The bits of `x` as a flat uint32 array (as `_device_words`, flattened)."""
    x = np.ascontiguousarray(x)
    if x.dtype == np.bool_:
        return x.reshape(-1).astype(np.uint32)
    unsigned = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint32}[x.dtype.itemsize]
    return x.reshape(-1).view(unsigned).astype(np.uint32, copy=False)


def _host_fingerprint(x: np.ndarray) -> np.ndarray:
    words = _host_words(x)
    first = second = 0
    for start in range(0, words.size, _CHUNK):
        chunk = words[start : start + _CHUNK]
        index = np.arange(start, start + chunk.size, dtype=np.uint64).astype(np.uint32)
        a, b = _hash_words(chunk, index)
        first += int(a.sum(dtype=np.uint64))
        second += int(b.sum(dtype=np.uint64))
    return np.array([first % 2**32, second % 2**32, words.size % 2**32], np.uint32)


def _device_words(x: jax.Array) -> jax.Array:
    """The bits of `x` as uint32 words (elementwise, so any sharding carries over)."""
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    bits = jnp.dtype(x.dtype).itemsize * 8
    unsigned = {8: jnp.uint8, 16: jnp.uint16, 32: jnp.uint32, 64: jnp.uint32}[bits]
    return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)


def _device_fingerprint(x: jax.Array) -> jax.Array:
    words = _device_words(x)
    index = jnp.zeros(words.shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(words.ndim)):
        step = jnp.uint32(stride % 2**32)
        index = index + jax.lax.broadcasted_iota(jnp.uint32, words.shape, axis) * step
        stride *= words.shape[axis]
    first, second = _hash_words(words, index)
    # Sums mod 2^32 are exact, so the order (any sharding) cannot change them.
    return jnp.stack(
        [
            jnp.sum(first, dtype=jnp.uint32),
            jnp.sum(second, dtype=jnp.uint32),
            jnp.uint32(words.size % 2**32),
        ]
    )


_device_fingerprints = jax.jit(lambda leaves: [_device_fingerprint(x) for x in leaves])


def fingerprints(tree) -> dict[str, str]:
    """{leaf path: 96-bit hex fingerprint} of every array in `tree`: a changed, moved or missing
    element changes it except with probability ~2^-64, whatever the sharding."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    values: dict[str, np.ndarray] = {}
    sharded = []
    for path, leaf in leaves:
        name = jax.tree_util.keystr(path)
        if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            sharded.append((name, leaf))
        else:
            values[name] = _host_fingerprint(np.asarray(leaf))
    if sharded:
        results = _device_fingerprints([leaf for _, leaf in sharded])
        for (name, _), value in zip(sharded, results, strict=True):
            # Replicated: every process holds the whole (tiny) result.
            values[name] = np.asarray(value.addressable_data(0))
    return {name: "".join(f"{int(w):08x}" for w in value) for name, value in values.items()}


def _first_line(err: BaseException) -> str:
    """The gist of an orbax / TensorStore error, without its multi-kilobyte spec dump."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text.split(" See full TensorStore details")[0][:200]


class Checkpoints:
    """`latest` (keep N, resume) and `best` (keep 1, by validation AUC) of one stage. With
    `read_only`, nothing is created on disk, and a missing folder reads as no checkpoints."""

    def __init__(
        self, directory: str | pathlib.Path, keep: int, *, read_only: bool = False, key: str = ""
    ):
        self.directory = pathlib.Path(directory).absolute()
        self.read_only = read_only

        def manager(name: str, **options):
            # Both managers may save the same step at once, and so may those of other
            # population members (`key`); with several processes their barriers must not share
            # names, hence a key prefix each.
            return ocp.CheckpointManager(
                self.directory / name,
                options=ocp.CheckpointManagerOptions(
                    create=not read_only,
                    read_only=read_only,
                    multiprocessing_options=ocp.options.MultiprocessingOptions(
                        barrier_sync_key_prefix=f"{key}{name}"
                    ),
                    **options,
                ),
                item_names=_ITEMS,
            )

        # Read-only managers get the settings orbax would force on them (it warns otherwise).
        writes = {"save_interval_steps": 0} if read_only else {}
        self.latest = manager("latest", max_to_keep=None if read_only else keep, **writes)
        self.best = manager(
            "best",
            max_to_keep=None if read_only else 1,
            best_fn=lambda m: m[BEST_METRIC],
            best_mode="max",
            **writes,
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

    def save_best(self, step: int, state, config, metrics: dict[str, float]) -> None:
        """Into `best` only (a population member: the population's `latest` resumes it)."""
        if step not in self.best.all_steps():
            self.best.save(step, args=self._args(state, config), metrics=metrics)

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
        if saved is None:
            used = _UNVERIFIED.get()
            if used is None:
                raise CheckpointError(
                    f"checkpoint {where} has no integrity record (written before checkpoints "
                    "carried fingerprints, or the record was deleted), so it cannot be verified. "
                    "Fix: train it again, or pass --allow_unverified to use it as it is (the "
                    "artifact says so)"
                )
            used.append(str(where))
            print(f"warning: checkpoint {where} used unverified (--allow_unverified)", flush=True)
        else:
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
            return None  # no record: refused unless `allowing_unverified`
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
    except the sections and fields named in `ignore` ("eval", "train.profile_steps")."""
    current = json.loads(config.to_json())

    def walk(a, b, prefix: str):
        if isinstance(a, dict) and isinstance(b, dict):
            # Only fields both know: one added or removed since the run started is not a change
            # of that run (config_lib.from_saved reads old configs the same way).
            for key in sorted(set(a) & set(b)):
                if f"{prefix}{key}" not in ignore:
                    yield from walk(a[key], b[key], f"{prefix}{key}.")
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
