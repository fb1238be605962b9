"""The host allocator tuning: XLA:CPU steps stop page-faulting their buffers in every call."""

import os
import subprocess
import sys

import pytest

PROBE = """
import resource, sys
import mkln_jax  # tunes the allocator on import
from mkln_jax import hostmem
import jax, jax.numpy as jnp

f = jax.jit(lambda x: jnp.tanh(x * 2.0) + jnp.sin(x)[::-1])  # 64 MiB buffers
x = jnp.ones((4096, 4096), jnp.float32)
for _ in range(20):  # the heap grows to its peak over the first calls
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(x).block_until_ready()
    if resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before < 1000:
        break
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    f(x).block_until_ready()
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5
print(hostmem.tune(), int(faults))
"""


def _probe(mode: str) -> tuple[bool, int]:
    env = {**os.environ, "MKLN_MALLOC": mode, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True
    )
    applied, faults = out.stdout.split()
    return applied == "True", int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")
def test_tuned_allocator_reuses_pages_the_system_one_faults_them_in_again():
    tuned, tuned_faults = _probe("auto")
    system, system_faults = _probe("system")
    assert tuned and not system
    # 64 MiB per buffer is 16,384 pages: glibc maps and unmaps it on every call unless tuned.
    assert system_faults > 10_000, system_faults
    assert tuned_faults < 1_000, tuned_faults


def test_bad_mode_is_refused(monkeypatch):
    from mkln_jax import hostmem

    monkeypatch.setenv("MKLN_MALLOC", "fast")
    monkeypatch.setitem(hostmem._state, "tuned", None)
    with pytest.raises(ValueError, match="MKLN_MALLOC must be"):
        hostmem.tune()
