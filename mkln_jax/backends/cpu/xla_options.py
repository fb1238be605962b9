"""Per-computation XLA options for the CPU backend: which library runs the convolutions and
the matrix products of a train step.

jaxlib's XLA:CPU hands dots, convolutions and reductions to YNNPACK by default; with one kind
left out, XLA runs it with Eigen. Eigen's convolutions are faster for ResNets' dense 3x3
layers and Eigen's dots for Xception's 1x1-convolution products; everything else keeps YNNPACK
(`MODEL_LIBRARIES`; in-process A/Bs in docs/performance_log.md, sections 4-5 and the AVX2 /
Zen 4 sections). The choice is a compile option, not an XLA_FLAGS entry: it applies to one
computation, and a jaxlib that does not know the option raises an error we catch (an unknown
XLA_FLAGS entry aborts the process), in which case nothing is set.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

CONV_LIBRARIES = ("ynnpack", "eigen")
_OPTION = "xla_cpu_experimental_ynn_fusion_type"
# jaxlib 0.12's default list is dots, convolutions and reductions; naming Eigen for either drops
# it from the list. Reductions stay on YNNPACK (all three on Eigen: Xception 13.6 -> 10.1).
_FUSION = {
    "dot": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT",
    "conv": "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION",
    "reduce": "LIBRARY_FUSION_TYPE_REDUCE",
}


@functools.cache
def _understood(option: str, value: str) -> bool:
    """Whether this jaxlib compiles with the option (a tiny computation, once per process)."""
    try:
        jax.jit(lambda x: x + 1).lower(jnp.zeros((2,))).compile(compiler_options={option: value})
    except Exception:  # JaxRuntimeError on jaxlibs without the option or the value
        return False
    return True


def compiler_options(
    conv_library: str, backend: str | None = None, dot_library: str = "ynnpack"
) -> dict[str, str]:
    """Compile options that make XLA:CPU use `conv_library` for convolutions and `dot_library`
    for matrix products.

    Empty where nothing needs setting: both "ynnpack" (the default), a non-CPU backend, or a
    jaxlib that lacks the option.
    """
    for what, library in (("conv_library", conv_library), ("dot_library", dot_library)):
        if library not in CONV_LIBRARIES:
            raise ValueError(f"{what} must be one of {CONV_LIBRARIES}, got {library!r}")
    if (conv_library, dot_library) == ("ynnpack", "ynnpack"):
        return {}
    if (backend or jax.default_backend()) != "cpu":
        return {}
    kept = [
        kind for kind, lib in (("dot", dot_library), ("conv", conv_library)) if lib == "ynnpack"
    ]
    value = ",".join(_FUSION[kind] for kind in (*kept, "reduce"))
    if not _understood(_OPTION, value):
        return {}
    return {_OPTION: value}


# Per-model (convolution, dot) libraries for the train step on XLA:CPU; models not named here
# keep YNNPACK for both. Measurements: docs/performance_log.md.
MODEL_LIBRARIES: dict[str, tuple[str, str]] = {
    "resnet18": ("eigen", "ynnpack"),
    "resnet34": ("eigen", "ynnpack"),
    "resnet50": ("eigen", "ynnpack"),
    "xception": ("ynnpack", "eigen"),
}


def for_model(
    model: str, conv_library: str = "auto", dot_library: str = "auto", backend: str | None = None
) -> dict[str, str]:
    """`compiler_options` for a model's train step: "auto" takes the model's own choices
    (`MODEL_LIBRARIES`); {} off the CPU."""
    if (backend or jax.default_backend()) != "cpu":
        return {}
    own_conv, own_dot = MODEL_LIBRARIES.get(model, ("ynnpack", "ynnpack"))
    if conv_library == "auto":
        conv_library = own_conv
    if dot_library == "auto":
        dot_library = own_dot
    return compiler_options(conv_library, backend, dot_library)
