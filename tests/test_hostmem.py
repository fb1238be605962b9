"""The host allocator tuning: XLA:CPU steps stop page-faulting their buffers in every call."""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # trains or runs `mkln` in subprocesses

PROBE = """
import resource
from mkln_jax.backends.cpu import hostmem
hostmem.tune()  # as `mkln` does at its entry, before JAX starts
import jax, jax.numpy as jnp

f = jax.jit(lambda x: jnp.tanh(x * 2.0) + jnp.sin(x)[::-1])  # 64 MiB buffers
x = jnp.ones((4096, 4096), jnp.float32)
def resident_pages():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1])

faults, growth = [], []
for _ in range(40):
    before, resident = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, resident_pages()
    f(x).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    growth.append(resident_pages() - resident)
print(hostmem.tune(), " ".join(map(str, faults)), " ".join(map(str, growth)), sep="|")
"""


def _probe(mode: str) -> tuple[bool, list[int], list[int]]:
    env = {**os.environ, "MKLN_MALLOC": mode, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True
    )
    applied, faults, growth = out.stdout.strip().split("|")
    return applied == "True", [int(n) for n in faults.split()], [int(n) for n in growth.split()]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")
def test_tuned_allocator_reuses_pages_the_system_one_faults_them_in_again():
    tuned, tuned_faults, tuned_growth = _probe("auto")
    system, system_faults, system_growth = _probe("system")
    assert tuned and not system
    late = slice(10, None)
    # 64 MiB per buffer is 16,384 pages: glibc maps and unmaps it in every call unless tuned, so
    # every late call faults its pages in again while the resident set stays where it was.
    assert min(system_faults[late]) > 10_000, system_faults
    assert sum(system_faults[late]) > 10 * sum(system_growth[late]) + 100_000, system_growth
    # Tuned, freed pages stay in the process: a call faults only where the heap grows to a new
    # high-water mark (how high depends on how soon PJRT's threads free the previous call's
    # buffers, so the number of growing calls varies from run to run), never to take back
    # pages it already had. Every late fault must show up as resident growth.
    slack = 1_024  # the interpreter's own small allocations
    assert sum(tuned_faults[late]) <= sum(tuned_growth[late]) + slack, (tuned_faults, tuned_growth)


def test_bad_mode_is_refused(monkeypatch):
    from mkln_jax.backends.cpu import hostmem

    monkeypatch.setenv("MKLN_MALLOC", "fast")
    monkeypatch.setitem(hostmem._state, "tuned", None)
    with pytest.raises(ValueError, match="MKLN_MALLOC must be"):
        hostmem.tune()


def test_importing_the_package_leaves_the_allocator_alone():
    probe = "import mkln_jax, mkln_jax.train; from mkln_jax.backends.cpu import hostmem; "
    probe += "print(hostmem._state['tuned'])"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "None", out.stderr[-2000:]
