"""Running the `mkln` command line from tests, as a user would: a subprocess in the repo root."""

import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def mkln(*args: str, timeout: int = 600, devices: int | None = None) -> subprocess.CompletedProcess:
    """`python -m mkln_jax.cli ARGS` with output captured as text; `devices` fake CPU devices
    instead of conftest's 8 (a test that is not about sharding runs faster on one)."""
    env = dict(os.environ)
    if devices is not None:
        flags = [f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f]
        env["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={devices}"])
    return subprocess.run(
        [sys.executable, "-m", "mkln_jax.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
