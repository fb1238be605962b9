"""A config's train step compiled ahead of time from abstract, sharded arguments: no weights, no
data, no devices of the target needed (a TPU topology's devices work too). What it is for:
reading the compiled program before renting the hardware, i.e. its memory per device, its
FLOPs and bytes, and every collective with its size (`collectives`). `mkln train
--compile_only`, `bench/pod_cost.py` and the HLO test (tests/test_collectives.py) use it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mkln_jax import config_lib, experiment, fetch, models, sharding
from mkln_jax import step as step_lib
from mkln_jax.errors import MklnError


def _abstract(tree, shardings):
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )


def _abstract_teacher(config, source: config_lib.TeacherSource):
    """(ModelFn, abstract Frozen) of one teacher source, without reading any weights."""
    if source.kind == "weights":
        model = nnx.eval_shape(
            lambda: models.build(
                source.model, experiment.NUM_CLASSES, dtype=config_lib.compute_dtype(config)
            )
        )
        graphdef, params, stats = step_lib.split_model(model)
        spec = models.spec(source.model)
        dtype = models.DTYPES[config_lib.compute_dtype(config)]
        return step_lib.ModelFn(graphdef, spec.mean, spec.std, dtype), step_lib.Frozen(
            params, stats
        )
    cfg = experiment.source_config(config, source)
    graphdef, abstract = experiment.abstract_train_state(cfg, source.stage)
    fn = experiment.model_fn(cfg, source.stage, graphdef)
    return fn, step_lib.Frozen(abstract.params, abstract.batch_stats)


def lower_train_step(config, stage: str, mesh, batch_size: int | None = None):
    """The stage's single-run train step (as `mkln train` jits it), lowered for `mesh` with
    abstract arguments. `batch_size`: the global batch (default: the config's)."""
    graphdef, abstract = experiment.abstract_train_state(config, stage)
    state_shardings = experiment.shardings_of(config, abstract, mesh)
    repl = sharding.replicated(mesh)
    teachers, frozen, teacher_shardings = (), None, repl
    if stage == "student" and config.distill.teachers:
        pairs = [_abstract_teacher(config, s) for s in experiment.teacher_sources(config)]
        teachers = tuple(fn for fn, _ in pairs)
        frozen = tuple(f for _, f in pairs)
        teacher_shardings = experiment.shardings_of(config, frozen, mesh)
    fn = step_lib.make_train_step(
        experiment.model_fn(config, stage, graphdef),
        experiment.make_optimizer(config, stage),
        teachers=teachers,
        method=experiment.method(config, stage),
    )
    hparams = experiment.hparams(config, stage)
    if teachers:
        hparams = dataclasses.replace(hparams, teacher_weights=np.ones((len(teachers),), "f4"))
    scalar_shardings = jax.tree.map(lambda _: repl, hparams)
    size = config.data.image_size
    batch_size = batch_size or config[stage].batch_size
    if batch_size % mesh.devices.size:
        raise config_lib.ConfigError(
            f"{stage}.batch_size={batch_size} does not split over {mesh.devices.size} devices. "
            f"Fix: a multiple of {mesh.devices.size} (--config.{stage}.batch_size=...)"
        )
    batch_shardings = sharding.batch_sharding(mesh)
    batch = {
        "image": jax.ShapeDtypeStruct(
            (batch_size, size, size, 3), jnp.uint8, sharding=batch_shardings
        ),
        "label": jax.ShapeDtypeStruct((batch_size,), jnp.int32, sharding=batch_shardings),
    }
    jitted = jax.jit(
        sharding.gathered_at_use(fn, state_shardings, frozen and teacher_shardings),
        in_shardings=(state_shardings, teacher_shardings, batch_shardings, scalar_shardings),
        out_shardings=(state_shardings, repl),
        donate_argnums=0,
    )
    with experiment.mesh_context(mesh):
        return jitted.lower(
            _abstract(abstract, state_shardings),
            None if frozen is None else _abstract(frozen, teacher_shardings),
            batch,
            _abstract(hparams, scalar_shardings),
        )


COLLECTIVES = (
    "all-reduce",
    "all-gather",
    "reduce-scatter",
    "all-to-all",
    "collective-permute",
    "collective-broadcast",
    "ragged-all-to-all",
)
_BYTES = {
    "pred": 1,
    "s8": 1,
    "u8": 1,
    "bf16": 2,
    "f16": 2,
    "s16": 2,
    "u16": 2,
    "f32": 4,
    "s32": 4,
    "u32": 4,
    "f64": 8,
    "s64": 8,
    "u64": 8,
}
_INSTRUCTION = re.compile(
    r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(\(?[^=]*?\)?)\s+("
    + "|".join(COLLECTIVES)
    + r")(?:-start)?\("
)
_ARRAY = re.compile(r"(\w+)\[([\d,]*)\]")


@dataclasses.dataclass(frozen=True)
class Collective:
    """One collective of a compiled program: its op, result arrays (dtype, shape) and the
    number of devices in each of its groups (0: not read)."""

    op: str
    arrays: tuple[tuple[str, tuple[int, ...]], ...]
    group: int = 0
    op_name: str = ""  # the jax operation it came from (HLO metadata)

    @property
    def batchnorm(self) -> bool:
        """A reduction of per-channel sums (BatchNorm's batch statistics, forward, or its
        backward pass's two sums), not of gradients: 1-D arrays from a `reduce_sum`."""
        return (
            self.op == "all-reduce"
            and "reduce_sum" in self.op_name
            and all(len(shape) == 1 for _, shape in self.arrays)
        )

    @property
    def bytes(self) -> int:
        return sum(_BYTES.get(d, 4) * int(np.prod(s, dtype=np.int64)) for d, s in self.arrays)

    def bytes_sent(self, devices: int) -> float:
        """Bytes each device sends, by the ring algorithms' counts: an all-reduce of S bytes
        over n devices sends 2 S (n - 1) / n; an all-gather of an S-byte result or an
        all-to-all of S bytes, S (n - 1) / n; a reduce-scatter to an S-byte result, S (n - 1)."""
        n = self.group or devices
        if n <= 1:
            return 0.0
        size = float(self.bytes)
        if self.op == "all-reduce":
            return 2 * size * (n - 1) / n
        if self.op == "reduce-scatter":
            return size * (n - 1)
        if self.op in ("collective-permute", "collective-broadcast"):
            return size
        return size * (n - 1) / n

    def __str__(self) -> str:
        shapes = ", ".join(f"{d}[{','.join(map(str, s))}]" for d, s in self.arrays)
        return f"{self.op} {shapes}" + (f" over {self.group}" if self.group else "")


def _group_size(line: str) -> int:
    """Devices per group, from `replica_groups=` in its three spellings: explicit lists
    {{0,1},{2,3}}, iota [G,n]<=[N], and named mesh axes mesh['data'=4,'fsdp'=2] {'fsdp'}."""
    match = re.search(r"replica_groups=\{\{([\d,]*)\}", line)
    if match:
        return len(match.group(1).split(","))
    match = re.search(r"replica_groups=\[(\d+),(\d+)\]<=", line)
    if match:
        return int(match.group(2))
    match = re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", line)
    if match:
        sizes = dict(re.findall(r"'?(\w+)'?=(\d+)", match.group(1)))
        names = re.findall(r"'?(\w+)'?", match.group(2))
        return int(np.prod([int(sizes[n]) for n in names if n in sizes] or [0]))
    return 0


def collectives(hlo_text: str) -> list[Collective]:
    """Every collective of an HLO module's text (asynchronous pairs counted once, at -start)."""
    found = []
    for line in hlo_text.splitlines():
        line = re.sub(r"/\*.*?\*/", "", line)  # XLA:TPU marks long tuples /*index=5*/
        match = _INSTRUCTION.match(line)
        if not match:
            continue
        arrays = tuple(
            (dtype, tuple(int(d) for d in dims.split(",") if d))
            for dtype, dims in _ARRAY.findall(match.group(1))
            if dtype in _BYTES
        )
        if match.group(2) in ("all-gather", "collective-permute") and "-start" in line:
            # an async start's result is (operand, result[, contexts]): keep the result
            arrays = arrays[1:2] or arrays
        name = re.search(r'op_name="([^"]*)"', line)
        found.append(
            Collective(match.group(2), arrays, _group_size(line), name.group(1) if name else "")
        )
    return found


@dataclasses.dataclass(frozen=True)
class Chip:
    """Published per-chip figures (Google Cloud's TPU pages): bf16 peak FLOP/s, HBM bytes and
    bytes/s, and inter-chip interconnect bytes/s (bidirectional; 0 where not published)."""

    name: str
    flops: float
    hbm: float
    hbm_bandwidth: float
    ici_bandwidth: float


CHIPS = {
    "v5e": Chip("TPU v5e", 197e12, 16 * 2**30, 819e9, 400e9),
    "v5p": Chip("TPU v5p", 459e12, 95 * 2**30, 2765e9, 1200e9),
    "v4": Chip("TPU v4", 275e12, 32 * 2**30, 1200e9, 0.0),
}
# v5e and v4 hosts hold 2 x 2 chips in these topologies' slices; v5p hosts 2 x 2 x 1.
CHIPS_PER_HOST = {"v5e": (2, 2, 1), "v4": (2, 2, 1), "v5p": (2, 2, 1)}


def use_libtpu() -> str:
    """Makes libtpu available to compile for TPU topologies here, and returns its path:
    TPU_LIBRARY_PATH or an installed `libtpu` (`make setup PLATFORM=tpu`) if there is one;
    else, in a checkout, the platform lock's libtpu wheel (its pinned sha256 checked),
    downloaded once and unpacked into the cache. MklnError, saying why, where none can be had."""
    from jax._src import cloud_tpu_init

    # Compiling needs no chip: let several processes load libtpu at once (it takes a lock
    # file, /tmp/libtpu_lockfile, meant for processes sharing the chips of a VM).
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    found = cloud_tpu_init.get_tpu_library_path()
    if found:
        return found
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    lock = (
        pathlib.Path(__file__).resolve().parents[1]
        / "requirements"
        / (f"platform-tpu-py{version}.txt")
    )
    text = lock.read_text() if lock.exists() else ""
    pins = [line.split()[0] for line in text.splitlines() if line.startswith("libtpu==")]
    if not pins:
        raise MklnError(
            "no libtpu here. Fix: pip install 'jax[tpu]' (or set TPU_LIBRARY_PATH=.../libtpu.so)"
        )
    pin = pins[0]
    hashes = set(re.findall(r"sha256:([0-9a-f]{64})", text.split(pin, 1)[1].split("==")[0]))
    folder = fetch.default_cache_dir() / "libtpu" / pin.replace("==", "-")
    library = folder / "libtpu" / "libtpu.so"
    if not library.exists():
        with tempfile.TemporaryDirectory() as tmp:
            done = subprocess.run(
                [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", tmp, pin],
                capture_output=True,
                text=True,
            )
            wheels = list(pathlib.Path(tmp).glob("libtpu-*.whl"))
            if done.returncode or not wheels:
                tail = (done.stderr.strip().splitlines() or ["no wheel"])[-1][:200]
                raise MklnError(f"cannot download {pin} ({tail})")
            digest = hashlib.sha256(wheels[0].read_bytes()).hexdigest()
            if digest not in hashes:
                raise MklnError(f"{wheels[0].name} does not match {lock.name}'s sha256")
            partial = folder.with_name(folder.name + ".partial")
            with zipfile.ZipFile(wheels[0]) as wheel:
                members = [m for m in wheel.namelist() if m.startswith("libtpu/")]
                wheel.extractall(partial, members)
            partial.replace(folder)
    os.environ["TPU_LIBRARY_PATH"] = str(library)
    # libtpu looks for a TPU VM's variables at start; there is no VM here, and it only needs
    # some accelerator type to start (the topology is given per call).
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5litepod-16")
    return str(library)


def topology_devices(name: str):
    """The devices of a TPU topology ("v5e:4x4", "v5p:2x2x4"), compiled for by libtpu without
    any TPU here (jax.experimental.topologies; libtpu from TPU_LIBRARY_PATH or the package)."""
    from jax.experimental import topologies

    kind = name.split(":")[0]
    desc = topologies.get_topology_desc(
        platform="tpu",
        topology_name=name,
        chip_config_name="default",
        chips_per_host_bounds=CHIPS_PER_HOST[kind],
        num_slices=1,
    )
    return list(desc.devices)


def cost_report(compiled, devices: int, chip: Chip | None = None) -> dict:
    """A compiled step's per-device costs: memory (XLA's analysis), FLOPs and bytes accessed
    (XLA's cost analysis), collectives with the bytes each device sends, and on a known chip
    whether it fits its HBM and a roofline time (compute or HBM traffic, whichever is longer,
    plus the collectives at half the bidirectional ICI bandwidth, nothing overlapped)."""
    memory = compiled.memory_analysis()
    analysis = compiled.cost_analysis()
    if isinstance(analysis, list):
        analysis = analysis[0] if analysis else {}
    found = collectives(compiled.as_text())
    report = {
        "argument_bytes": int(memory.argument_size_in_bytes),
        "temp_bytes": int(memory.temp_size_in_bytes),
        "output_bytes": int(memory.output_size_in_bytes),
        "alias_bytes": int(memory.alias_size_in_bytes),
        "flops": float(analysis.get("flops", 0.0)),
        "bytes_accessed": float(analysis.get("bytes accessed", 0.0)),
        "collectives": [str(c) for c in found],
        "collective_count": {
            op: sum(c.op == op for c in found)
            for op in COLLECTIVES
            if any(c.op == op for c in found)
        },
        "collective_bytes": float(sum(c.bytes for c in found)),  # the arrays they carry
        "bytes_sent": float(sum(c.bytes_sent(devices) for c in found)),
        "batchnorm_all_reduces": sum(c.batchnorm for c in found),
    }
    report["memory_bytes"] = (
        report["argument_bytes"]
        + report["output_bytes"]
        + report["temp_bytes"]
        - report["alias_bytes"]
    )
    if chip is not None:
        report["fits"] = report["memory_bytes"] <= chip.hbm
        compute = report["flops"] / chip.flops
        traffic = report["bytes_accessed"] / chip.hbm_bandwidth
        comm = report["bytes_sent"] / (chip.ici_bandwidth / 2) if chip.ici_bandwidth else 0.0
        report["roofline_s"] = max(compute, traffic) + comm
        report["roofline_parts_s"] = {"compute": compute, "hbm": traffic, "ici": comm}
    return report
