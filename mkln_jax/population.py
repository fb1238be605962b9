"""A population of students trained as one program: K settings of the step's traced
hyper-parameters (step.HParams), their train states stacked on a leading member axis.

`population.members` in the config lists the settings (`"distill.temperature=4"`, several
fields joined by `;`), `population.seeds` the model seeds to cross them with. Only fields that
feed `step.HParams` may differ between members: a field that changes the compiled program
(model, stream, `freq_aug.block`, ...) needs separate runs (`mkln launch sweep` makes them).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mkln_jax import config_lib, experiment, fileio, frequency, sharding
from mkln_jax import step as step_lib

# Config fields that reach the step only through step.HParams (experiment.hparams maps them):
# members may differ in these and still share one compiled step.
TRACED_FIELDS = (
    "distill.temperature",
    "distill.alpha",
    "distill.temperature_end",
    "distill.alpha_end",
    "distill.teacher_weights",
    "distill.feature_weight",
    "mutual.weight",
    *(f"freq_aug.{name}" for name in frequency.AUGMENT_DEFAULTS),
)
AUGMENT_FIELDS = tuple(f"freq_aug.{name}" for name in frequency.AUGMENT_DEFAULTS)


@dataclasses.dataclass(frozen=True)
class Member:
    """One member: its overrides (field -> value as given), model seed and derived config."""

    index: int
    overrides: tuple[tuple[str, str], ...]
    seed: int
    config: ml_collections.ConfigDict

    @property
    def name(self) -> str:
        """A folder-safe name, e.g. "distill.temperature-4_seed-1"."""
        parts = [f"{field}-{value}" for field, value in self.overrides]
        parts.append(f"seed-{self.seed}")
        return re.sub(r"[^A-Za-z0-9._=+-]", "-", "_".join(parts))

    @property
    def settings(self) -> dict[str, str]:
        return {**dict(self.overrides), "seed": str(self.seed)}


def enabled(config) -> bool:
    return bool(config.population.members) or bool(config.population.seeds)


def parse_member(spec: str) -> tuple[tuple[str, str], ...]:
    """ "distill.temperature=4;distill.alpha=0.5" -> (("distill.temperature", "4"), ...)."""
    pairs = []
    for part in (p.strip() for p in spec.split(";")):
        if not part:
            continue
        if "=" not in part:
            raise config_lib.ConfigError(
                f"population.members: {spec!r}: expected field=value[;field=value]"
            )
        field, value = (x.strip() for x in part.split("=", 1))
        if field not in TRACED_FIELDS:
            raise config_lib.ConfigError(
                f"population.members: {field!r} cannot differ inside one population (it is not "
                f"one of the step's traced fields: {', '.join(TRACED_FIELDS)}). Fix: sweep it "
                "with separate runs (mkln launch sweep)."
            )
        pairs.append((field, value))
    return tuple(pairs)


def members(config) -> list[Member]:
    """The population's members: every setting of population.members crossed with every seed
    of population.seeds (config.seed when none), in that order."""
    specs = list(config.population.members) or [""]
    seeds = [int(s) for s in config.population.seeds] or [int(config.seed)]
    out = []
    for spec in specs:
        overrides = parse_member(spec)
        for seed in seeds:
            member_config = config_lib.copy(config)
            with member_config.unlocked():
                for field, value in overrides:
                    config_lib.set_field(member_config, field, value)
                member_config.seed = seed  # the model's init; data order stays config.seed
                member_config.population.members = ()
                member_config.population.seeds = ()
            out.append(Member(len(out), overrides, seed, member_config))
    names = [m.name for m in out]
    if len(set(names)) != len(names):
        raise config_lib.ConfigError(f"population: members repeat ({names})")
    return out


def augment_varies(member_list: list[Member]) -> bool:
    """Whether any augmentation setting differs between members (then views are per member)."""
    values = {
        tuple(str(m.config.freq_aug[f.split(".", 1)[1]]) for f in AUGMENT_FIELDS)
        for m in member_list
    }
    return len(values) > 1


def stack(trees: list) -> object:
    """Equal-structured pytrees -> one pytree with a leading member axis."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def stack_host(trees: list) -> object:
    return jax.tree.map(lambda *xs: np.stack(xs), *trees)


def take(tree, index: int):
    """Member `index` of a stacked pytree."""
    return jax.tree.map(lambda x: x[index], tree)


AXIS = "population"


def make_mesh(population_size: int = 1, num_data: int = -1, num_fsdp: int = 1) -> Mesh:
    """A (population, data, fsdp) mesh: members split over `population`, each member's batch
    over data x fsdp (sharding.py's rules, unchanged inside a member). num_data = -1 takes the
    rest of the devices."""
    devices = jax.devices()
    if num_data == -1:
        num_data = len(devices) // (population_size * num_fsdp)
    count = population_size * num_data * num_fsdp
    if count > len(devices) or count == 0:
        raise ValueError(
            f"mesh {population_size} x {num_data} x {num_fsdp} needs {count} devices, "
            f"have {len(devices)}"
        )
    processes = jax.process_count()
    if processes == 1:
        grid = np.asarray(devices[:count]).reshape(population_size, num_data, num_fsdp)
        return Mesh(grid, (AXIS, *sharding.BATCH_AXES))
    # Several processes (hosts): `population` and `fsdp` inside each host, `data` across
    # hosts. Members never talk to each other, so the only cross-host traffic is each member's
    # gradient all-reduce, every host holds a replica of every member (its metrics, checkpoints
    # and validation need no gather of states), and each host reads only its own rows of
    # every batch, as in a single-student run.
    local = len(jax.local_devices())
    inner = population_size * num_fsdp
    if count != len(devices) or local % inner:
        raise ValueError(
            f"with {processes} processes of {local} devices, the population mesh must use "
            f"every device and population.mesh x train.mesh_fsdp ({inner}) must divide {local}"
        )
    ordered = sharding.by_process(devices)
    grid = np.asarray(ordered).reshape(processes, population_size, local // inner, num_fsdp)
    grid = grid.transpose(1, 0, 2, 3).reshape(population_size, num_data, num_fsdp)
    return Mesh(grid, (AXIS, *sharding.BATCH_AXES))


def state_shardings(tree, mesh: Mesh, min_size: int = 2**14):
    """Stacked states: the member axis on `population`, the rest by sharding.leaf_spec."""
    fsdp = mesh.shape["fsdp"]

    def spec(x):
        inner = sharding.leaf_spec(tuple(x.shape[1:]), fsdp, min_size)
        return NamedSharding(mesh, PartitionSpec(AXIS, *inner))

    return jax.tree.map(spec, tree)


def member_sharding(tree, mesh: Mesh):
    """Per-member values (hyper-parameters, metrics): split on `population` only. With
    `tree=None`, one sharding for a whole output."""
    one = NamedSharding(mesh, PartitionSpec(AXIS))
    return one if tree is None else jax.tree.map(lambda _: one, tree)


def member_workdir(workdir, member: Member) -> pathlib.Path:
    """A member's own run folder: its best checkpoint, logs and evaluation, laid out like a
    single run's, so `evaluate` and `export` read it unchanged (`--member`)."""
    return pathlib.Path(workdir) / "members" / member.name


def find_member(workdir, spec: str) -> pathlib.Path:
    """`--member=k` (an index) or a member's folder name -> its run folder."""
    root = pathlib.Path(workdir) / "members"
    names = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    listing = root / "members.json"
    order = json.loads(listing.read_text())["members"] if listing.is_file() else names
    if spec.isdigit() and int(spec) < len(order):
        return root / order[int(spec)]
    if spec in names:
        return root / spec
    raise config_lib.ConfigError(
        f"--member={spec}: no such member under {root} (members: "
        f"{', '.join(f'{i}={n}' for i, n in enumerate(order)) or 'none'}). Fix: give an index "
        "or a name from that list."
    )


def write_listing(workdir, member_list: list[Member]) -> None:
    """members/members.json: the members in order, with their settings."""
    root = pathlib.Path(workdir) / "members"
    root.mkdir(parents=True, exist_ok=True)
    listing = {
        "members": [m.name for m in member_list],
        "settings": [m.settings for m in member_list],
    }
    fileio.atomic_write(root / "members.json", json.dumps(listing, indent=2).encode())


def abstract_states(config, size: int):
    """Graph definition and the abstract stacked TrainState of a student population."""
    graphdef, abstract = experiment.abstract_train_state(config, "student")
    stacked = jax.tree.map(lambda x: jax.ShapeDtypeStruct((size, *x.shape), x.dtype), abstract)
    return graphdef, stacked


def create_states(config, member_list: list[Member], shardings):
    """The members' initial states, stacked and placed: each member's model from its own seed
    (pretrained weights, where configured, are the same for all), and one data key for all
    (config.seed), so every member sees the same augmentation draws."""
    tx = experiment.make_optimizer(config, "student")
    states = []
    for member in member_list:
        model = experiment.build_model(
            member.config, "student", with_weights=bool(config.student.pretrained)
        )
        states.append(jax.device_get(step_lib.init_state(model, tx, config.seed)))
    return sharding.place(stack_host(states), shardings)


def hparams(member_list: list[Member]) -> step_lib.HParams:
    """The members' traced settings, stacked (host values)."""
    return stack_host([experiment.hparams(m.config, "student") for m in member_list])


def jit_eval_step(model: step_lib.ModelFn, mesh, param_shardings, stat_shardings):
    """eval(params, batch_stats, images) -> P(fake) float32[B, K], every member on the same
    images (read and decoded once)."""
    single = step_lib.make_eval_step(model)

    def eval_step(params, batch_stats, images):
        return jax.vmap(single, in_axes=(0, 0, None))(params, batch_stats, images).T

    return jax.jit(
        sharding.variables_gathered(eval_step, (param_shardings, stat_shardings)),
        in_shardings=(param_shardings, stat_shardings, sharding.batch_sharding(mesh)),
        out_shardings=sharding.batch_sharding(mesh),
    )
