"""Shared pieces of the launchers: the training command line and command execution."""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence

OVERRIDE_HELP = "config overrides, spelled as for mkln: --config.a.b=value (repeatable)"


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """`parser`'s arguments, plus every `--config.a.b=value` (or `--config.a.b value`) as
    `args.overrides` = ["a.b=value", ...]: the one override spelling of `mkln` itself."""
    args, unknown = parser.parse_known_args(argv)
    overrides, i = [], 0
    while i < len(unknown):
        item = unknown[i]
        if item.startswith("--config.") and "=" in item:
            overrides.append(item[len("--config.") :])
        elif item.startswith("--config.") and i + 1 < len(unknown):
            overrides.append(f"{item[len('--config.') :]}={unknown[i + 1]}")
            i += 1
        else:
            hint = (
                " (config overrides are spelled --config.a.b=value)"
                if item
                in (
                    "--set",
                    "--override",
                )
                or item.startswith(("--set=", "--override="))
                else ""
            )
            parser.error(f"unrecognized argument {item}{hint}")
        i += 1
    args.overrides = overrides
    return args


def mkln_command(
    action: str, config: str, workdir: str, overrides: Sequence[str] = (), mkln: str = "mkln"
) -> list[str]:
    """`mkln <action> --config=... --workdir=... --config.a.b=v ...` as an argument list."""
    return [
        mkln,
        action,
        f"--config={config}",
        f"--workdir={workdir}",
        *(f"--config.{o}" for o in overrides),
    ]


def quoted(command: Sequence[str]) -> str:
    return " ".join(shlex.quote(part) for part in command)


def execute(commands: Sequence[Sequence[str]], dry_run: bool) -> int:
    """Prints each command; runs them in order unless dry_run. Returns the first failure code."""
    for command in commands:
        print(("[dry-run] " if dry_run else "+ ") + quoted(command), flush=True)
        if dry_run:
            continue
        code = subprocess.call(list(command))
        if code:
            print(f"command failed with exit code {code}", file=sys.stderr)
            return code
    return 0


def markdown_table(rows: list[dict], cell: Callable[[object], str]) -> list[str]:
    """Lines of a markdown table: the first row's keys as the header, `cell` formats values."""
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row[c]) for c in columns) + " |" for row in rows]
    return lines
