"""Flags shared by several subcommands; each definer is idempotent, so a command defines only
what it uses (and `mkln <command> --help` lists only those)."""

from __future__ import annotations

import pathlib

from absl import flags

FLAGS = flags.FLAGS


def _once(name: str, define, *args, **kwargs) -> str:
    if name not in FLAGS:
        define(name, *args, **kwargs)
    return name


def workdir() -> list[str]:
    return [
        _once(
            "workdir",
            flags.DEFINE_string,
            "runs/demo",
            "Run folder: checkpoints, logs, evaluation, export.",
        )
    ]


def artifact() -> list[str]:
    return [_once("artifact", flags.DEFINE_string, "", "Export folder (default <workdir>/export).")]


def split() -> list[str]:
    return [_once("split", flags.DEFINE_string, "", "Split to use (default config.eval.split).")]


def distributed() -> list[str]:
    return [
        _once(
            "coordinator",
            flags.DEFINE_string,
            "",
            "host:port of process 0, for multi-host runs (else Slurm / TPU pods are detected, or "
            "a single process runs).",
        ),
        _once(
            "num_processes", flags.DEFINE_integer, 0, "Processes in the run, with --coordinator."
        ),
        _once("process_id", flags.DEFINE_integer, -1, "This process's index, with --coordinator."),
    ]


def allow_unverified() -> list[str]:
    return [
        _once(
            "allow_unverified",
            flags.DEFINE_bool,
            False,
            "Use a best checkpoint that has no integrity record (so cannot be verified) instead "
            "of refusing it; the artifact's metadata records it as unverified.",
        )
    ]


def artifact_dir() -> str:
    return FLAGS.artifact or str(pathlib.Path(FLAGS.workdir) / "export")


def member() -> list[str]:
    return [
        _once(
            "member",
            flags.DEFINE_string,
            "",
            "A member of a population run: its index or name (listed in "
            "<workdir>/members/members.json); the command then works on that member's folder.",
        )
    ]


def select_member(config):
    """With --member: --workdir becomes that member's folder (a single-student run's layout)
    and the member's config (its settings, student stage only) replaces `config`."""
    if not FLAGS.member:
        return config
    from mkln_jax import config_lib, population

    folder = population.find_member(FLAGS.workdir, FLAGS.member)
    found = [m for m in population.members(config) if m.name == folder.name]
    if not found:
        raise config_lib.ConfigError(
            f"--member={FLAGS.member}: {folder.name} is not a member of this config's "
            "population. Fix: pass the --config (and overrides) the run was trained with."
        )
    member_config = found[0].config
    with member_config.unlocked():
        member_config.stages = ("student",)
    FLAGS.workdir = str(folder)
    return member_config
