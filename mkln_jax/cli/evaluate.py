"""`mkln evaluate`: metrics of a finished run, in-dataset, cross-dataset or under perturbation."""

from __future__ import annotations

import pathlib

from absl import flags

from mkln_jax.cli import common

SUMMARY = "evaluate a finished run: AUC/EER/AP/ACC with intervals, or robustness curves"
USAGE = (
    "mkln evaluate --config=CONFIG --workdir=DIR [--split=test] [--protocol=robustness] "
    "[--eval_data=CONFIG --eval_data.data.root=DIR] [--member=K]"
)
EXAMPLE = (
    "mkln evaluate --config=ffpp --workdir=runs/ffpp --eval_data=celebdf "
    "--eval_data.data.root=/data/Celeb-DF-v2"
)
TAKES_CONFIG = True
# A second config whose dataset is tested on (cross-dataset), with its own typed overrides;
# main.py loads it like --config.
SECOND_CONFIG = "eval_data"


def define_flags() -> list[str]:
    if "protocol" not in common.FLAGS:
        flags.DEFINE_enum(
            "protocol",
            "standard",
            ["standard", "robustness"],
            "Metrics with bootstrap intervals, or the perturbation suite (curves + plot).",
        )
    return [*common.workdir(), *common.split(), *common.member(), "protocol"]


def apply_eval_data(config, other) -> None:
    """Evaluate on `other`'s dataset (cross-dataset protocol); the model and its training data
    stay those of `config`."""
    with config.unlocked():
        config.eval.trained_on = config.data.to_dict()  # the model's own training data
        config.data = other.data
    config.data.image_size = config.eval.trained_on["image_size"]


def main(config, args: list[str]) -> int:
    from mkln_jax import config_lib, evaluate, population, workdir

    FLAGS = common.FLAGS
    workdir.require_existing(FLAGS.workdir)
    config = common.select_member(config)
    if SECOND_CONFIG in FLAGS and FLAGS[SECOND_CONFIG].value is not None:
        apply_eval_data(config, FLAGS[SECOND_CONFIG].value)
    if population.enabled(config) and "student" in config.stages:
        if FLAGS.protocol == "robustness":
            raise config_lib.ConfigError(
                "--protocol=robustness scores one model: add --member=K (see "
                f"{pathlib.Path(FLAGS.workdir) / 'members' / 'members.json'})"
            )
        _, markdown = evaluate.population_run(config, FLAGS.workdir, FLAGS.split or None)
    elif FLAGS.protocol == "robustness":
        _, markdown = evaluate.robustness_run(config, FLAGS.workdir, FLAGS.split or None)
    else:
        _, markdown = evaluate.evaluate_run(config, FLAGS.workdir, FLAGS.split or None)
    print(markdown)
    print(f"\nwritten to {pathlib.Path(FLAGS.workdir) / 'eval'}")
    return 0
