"""Per-compilation XLA options for the CPU backend: which library runs the convolutions.

jaxlib 0.12's XLA:CPU hands dots, convolutions and reductions to YNNPACK by default
("ynn fusions"); with convolutions left out, XLA runs them with its Eigen kernels. Eigen's are
faster for the dense 3x3 convolutions of ResNets (a ResNet-18 train step, batch 32, 128 px:
63.0 -> 71.9 images/s on the 2-core CPU of docs/performance.md, both compiled in one process
and timed interleaved), and no faster for EfficientNet/Xception, whose depthwise and 1x1
convolutions the zoo computes without convolution ops on CPU (`conv_impl="cpu"`). So each model
names its choice (`ModelSpec.cpu_convolutions`) and the train step is compiled with it.

The choice is a compile option, not an XLA_FLAGS entry: it applies to one computation, and a
jaxlib that does not know the option raises an error we can catch (an unknown XLA_FLAGS entry
aborts the process), in which case nothing is set.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

CONV_LIBRARIES = ("ynnpack", "eigen")
_OPTION = "xla_cpu_experimental_ynn_fusion_type"
# jaxlib 0.12's default list is dots, convolutions and reductions; "eigen" drops convolutions.
_WITHOUT_CONVOLUTIONS = "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"


@functools.cache
def _understood(option: str, value: str) -> bool:
    """Whether this jaxlib compiles with the option (a tiny computation, once per process)."""
    try:
        jax.jit(lambda x: x + 1).lower(jnp.zeros((2,))).compile(compiler_options={option: value})
    except Exception:  # JaxRuntimeError on jaxlibs without the option or the value
        return False
    return True


def compiler_options(conv_library: str, backend: str | None = None) -> dict[str, str]:
    """Compile options that make XLA:CPU use `conv_library` for convolutions.

    Empty where nothing needs setting: "ynnpack" (the default), a non-CPU backend, or a jaxlib
    that lacks the option.
    """
    if conv_library not in CONV_LIBRARIES:
        raise ValueError(f"conv_library must be one of {CONV_LIBRARIES}, got {conv_library!r}")
    if conv_library == "ynnpack" or (backend or jax.default_backend()) != "cpu":
        return {}
    if not _understood(_OPTION, _WITHOUT_CONVOLUTIONS):
        return {}
    return {_OPTION: _WITHOUT_CONVOLUTIONS}
