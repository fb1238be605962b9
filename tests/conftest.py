"""Test set-up: 8 fake CPU devices (set before jax is imported), absl flags parsed for grain."""

import os
import pathlib

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest
from absl import flags

flags.FLAGS.mark_as_parsed()

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def cache_dir() -> pathlib.Path:
    """Downloads (pinned wheels) are shared across tests and runs; see mkln_jax/fetch.py."""
    from mkln_jax import fetch

    return fetch.default_cache_dir()
