"""`mkln models`: the model zoo as a table."""

from __future__ import annotations

SUMMARY = "list the model zoo: parameters, reference, where ImageNet weights come from"
USAGE = "mkln models"
EXAMPLE = "mkln models"
TAKES_CONFIG = False


def define_flags() -> list[str]:
    return []


def main(config, args: list[str]) -> int:
    from mkln_jax.models import summary

    print(summary.markdown_table(summary.model_table()))
    return 0
