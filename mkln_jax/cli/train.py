"""`mkln train`: the configured stages (teacher, then student)."""

from __future__ import annotations

from mkln_jax.cli import common

SUMMARY = "train the teacher, then distil the student (resumes; one run per workdir)"
USAGE = "mkln train --config=CONFIG --workdir=DIR [--config.a.b=v ...]"
EXAMPLE = "mkln train --config=demo --workdir=runs/demo --config.distill.temperature=4"
TAKES_CONFIG = True


def define_flags() -> list[str]:
    return common.workdir()


def main(config, args: list[str]) -> int:
    from mkln_jax import train

    results = train.train_and_evaluate(config, common.FLAGS.workdir)
    for stage, result in results.items():
        if result and all(isinstance(v, dict) for v in result.values()):  # a population
            print(f"[{stage}] best validation checkpoints:")
            for member, best in result.items():
                print(f"  {member}: step {best.get('best_step')}")
        else:
            print(f"[{stage}] best validation: {result}")
    return 0
