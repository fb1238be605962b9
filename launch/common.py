"""Shared pieces of the launchers: the training command line and command execution."""

from __future__ import annotations

import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence


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
