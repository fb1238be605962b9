"""`mkln evaluate`: metrics of a finished run, in-dataset, cross-dataset or under perturbation."""

from __future__ import annotations

import pathlib

from absl import flags

from mkln_jax.cli import common

SUMMARY = "evaluate a finished run: AUC/EER/AP/ACC with intervals, or robustness curves"
USAGE = (
    "mkln evaluate --config=CONFIG --workdir=DIR [--split=test] [--protocol=robustness] "
    "[--eval_data=CONFIG --eval_data.data.root=DIR] [--eval_datasets=CONFIG[=ROOT],...] "
    "[--member=K] [--config.eval.weights=weights:MODEL:PATH]"
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
    if "eval_datasets" not in common.FLAGS:
        flags.DEFINE_list(
            "eval_datasets",
            [],
            "Several test datasets in one call, each CONFIG[=DATA_ROOT] (a shipped config's "
            "name or a file): one report per dataset and a summary table. The run's own dataset "
            "(same data.name) is evaluated with the run's data settings.",
        )
    return [
        *common.workdir(),
        *common.split(),
        *common.member(),
        *common.allow_unverified(),
        "protocol",
        "eval_datasets",
    ]


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
    if config.eval.weights:  # weights alone: the workdir only receives the report
        config_lib.validate(config)
        if FLAGS.protocol == "robustness" or population.enabled(config):
            raise config_lib.ConfigError(
                "eval.weights scores the given weights with the standard protocol only; drop "
                "--protocol=robustness and the population"
            )
        pathlib.Path(FLAGS.workdir).mkdir(parents=True, exist_ok=True)
    else:
        workdir.require_existing(FLAGS.workdir)
    config = common.select_member(config)
    if FLAGS.eval_datasets:
        if SECOND_CONFIG in FLAGS and FLAGS[SECOND_CONFIG].value is not None:
            raise config_lib.ConfigError("give --eval_data or --eval_datasets, not both")
        return _several_datasets(config, FLAGS.eval_datasets)
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


def _several_datasets(config, entries: list[str]) -> int:
    """`--eval_datasets`: each dataset's report as one `mkln evaluate` writes it, then one
    summary table (a row per dataset and stage, and their mean)."""
    from mkln_jax import config_lib, evaluate, population

    FLAGS = common.FLAGS
    if FLAGS.protocol == "robustness" or population.enabled(config):
        raise config_lib.ConfigError(
            "--eval_datasets runs the standard protocol on one model per stage; for robustness "
            "or a population, evaluate each dataset on its own"
        )
    runs = []
    for entry in entries:
        name, _, root = entry.partition("=")
        other = config_lib.load(name)
        if root:
            other.data.root = root
        cfg = config_lib.copy(config)
        if other.data.name == config.data.name:  # the run's own data, its own settings
            if root:
                cfg.data.root = root
        else:
            apply_eval_data(cfg, other)
        results, markdown = evaluate.evaluate_run(cfg, FLAGS.workdir, FLAGS.split or None)
        print(f"## {evaluate.dataset_label(cfg)}\n\n{markdown}\n")
        runs.append((cfg, results))
    _, summary = evaluate.datasets_summary(runs, FLAGS.workdir, FLAGS.split or config.eval.split)
    print(summary)
    print(f"\nwritten to {pathlib.Path(FLAGS.workdir) / 'eval'}")
    return 0
