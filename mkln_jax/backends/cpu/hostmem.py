"""Host allocator tuning for XLA:CPU.

XLA:CPU allocates every large buffer of a step from the C heap and frees it at the end of the
step. glibc's malloc serves blocks of more than 32 MiB with mmap and gives them back with munmap,
and returns the free top of each heap to the kernel, so each step touches its buffers' pages for
the first time again: measured on the 2-core CPU of docs/performance.md, an EfficientNet-B0 train
step (batch 32, 128 px) took 630,000 minor page faults and 1.0 s of kernel time per step, as much
as the computation itself. Keeping freed memory in the process (no mmap for large blocks, no
trimming, one arena so XLA's worker threads share it) removes all of them and doubles the step
rate; the cost is a higher resident size (the heap keeps its peak, and how high that peak is
varies from run to run with how soon PJRT's threads free one step's buffers while the next is
dispatched). tcmalloc or jemalloc with decay off, loaded with LD_PRELOAD, do the same with
less memory (docs/performance.md).

`tune()` is called by the `mkln` entry point (and the benchmarks) before any JAX computation
creates XLA's threads, never on import: a library user calls it explicitly. It acts only where
JAX will run on the CPU (no accelerator plugin installed, or JAX_PLATFORMS=cpu) and glibc is the
C library; MKLN_MALLOC=system turns it off.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import os
import sys

# mallopt parameters from glibc's malloc.h.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8

_ACCELERATOR_DISTRIBUTIONS = ("jax-cuda12-plugin", "jax-cuda13-plugin", "jax-rocm", "libtpu")

_state: dict[str, object] = {"tuned": None}


def cpu_only() -> bool:
    """True when JAX will run on the host CPU, decided without initialising a backend."""
    platforms = os.environ.get("JAX_PLATFORMS", "").strip().lower()
    if platforms:
        return platforms.split(",")[0] == "cpu"
    names = {d.metadata["Name"].lower() for d in importlib.metadata.distributions()}
    return not any(n.startswith(prefix) for n in names for prefix in _ACCELERATOR_DISTRIBUTIONS)


def tune() -> bool:
    """Keep freed heap memory in the process (see the module docstring). True if applied."""
    if _state["tuned"] is not None:
        return bool(_state["tuned"])
    applied = False
    mode = os.environ.get("MKLN_MALLOC", "auto").lower()
    if mode not in ("auto", "system"):
        raise ValueError(f"MKLN_MALLOC must be 'auto' or 'system', got {mode!r}")
    if mode == "auto" and sys.platform.startswith("linux") and cpu_only():
        try:
            libc = ctypes.CDLL("libc.so.6")
            mallopt = libc.mallopt
        except (OSError, AttributeError):  # musl or another C library: leave it alone
            mallopt = None
        if mallopt is not None:
            # -1 is SIZE_MAX once glibc converts it: never trim.
            applied = all(
                mallopt(param, value) == 1
                for param, value in ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1))
            )
    _state["tuned"] = applied
    return applied
