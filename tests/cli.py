"""Running the `mkln` command line from tests, as a user would: a subprocess in the repo root."""

import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def mkln(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """`python -m mkln_jax.cli ARGS` with output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "mkln_jax.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ),
    )
