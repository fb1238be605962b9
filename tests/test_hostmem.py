"""The host allocator tuning: XLA:CPU steps stop page-faulting their buffers in every call."""

import os
import subprocess
import sys

import pytest

PROBE = """
import resource
import mkln_jax  # tunes the allocator on import
from mkln_jax import hostmem
import jax, jax.numpy as jnp

f = jax.jit(lambda x: jnp.tanh(x * 2.0) + jnp.sin(x)[::-1])  # 64 MiB buffers
x = jnp.ones((4096, 4096), jnp.float32)
faults = []
for _ in range(40):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(x).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(hostmem.tune(), *faults)
"""


def _probe(mode: str) -> tuple[bool, list[int]]:
    env = {**os.environ, "MKLN_MALLOC": mode, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True
    )
    applied, *faults = out.stdout.split()
    return applied == "True", [int(n) for n in faults]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")
def test_tuned_allocator_reuses_pages_the_system_one_faults_them_in_again():
    tuned, tuned_faults = _probe("auto")
    system, system_faults = _probe("system")
    assert tuned and not system
    # 64 MiB per buffer is 16,384 pages: glibc maps and unmaps it in every call unless tuned.
    assert min(system_faults[20:]) > 10_000, system_faults
    # Tuned, the heap grows to its peak over the first calls (buffers are freed by PJRT's
    # threads, a little after the call returns, so how many calls that takes varies), then
    # every page is reused: at most two late calls may still fault.
    assert sum(tuned_faults[20:]) < 2 * 16_384, tuned_faults


def test_bad_mode_is_refused(monkeypatch):
    from mkln_jax import hostmem

    monkeypatch.setenv("MKLN_MALLOC", "fast")
    monkeypatch.setitem(hostmem._state, "tuned", None)
    with pytest.raises(ValueError, match="MKLN_MALLOC must be"):
        hostmem.tune()
