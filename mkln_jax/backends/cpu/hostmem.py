"""Host allocator tuning for XLA:CPU.

XLA:CPU allocates every large buffer of a step from the C heap and frees it at the end of the
step; glibc returns large blocks and the heap's top to the kernel, so every step faults its
buffers' pages in again (an EfficientNet-B0 step: 630,000 minor faults and 1.0 s of kernel
time, as much as the computation). Keeping freed memory in the process (no mmap for large
blocks, no trimming, one arena) removes them and doubles that step's rate, at the cost of a
resident size that keeps its peak (docs/performance_log.md, section 1).

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


def is_tuned() -> bool:
    """Whether tune() changed the allocator in this process."""
    return bool(_state["tuned"])


def release() -> bool:
    """Hand the heap's free memory back to the kernel now (glibc's malloc_trim), for a process
    that runs several large programs one after another (a benchmark over sizes): tuned, the
    heap otherwise keeps every peak. True if glibc released something."""
    try:
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False


def available_bytes() -> int | None:
    """The kernel's estimate of memory available to new allocations (Linux), else None."""
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


def resident_bytes() -> int:
    """This process's resident size (Linux), else 0."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0
