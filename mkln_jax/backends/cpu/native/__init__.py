"""Our own XLA:CPU kernels, called through the XLA FFI, NHWC float32: the depthwise convolution
and its two gradients (depthwise.cc), the dense (one-group) convolution and its two gradients
(dense.cc), max pooling and its gradient (pool.cc), and BatchNorm's per-channel sums
(batchnorm.cc).

The library is compiled on first use with the machine's C++ compiler against the headers that
jaxlib ships (`jax.ffi.include_dir()`), for this CPU (-march=native), and cached under
$MKLN_NATIVE_CACHE (default ~/.cache/mkln_jax/native) by a hash of the source, the flags, the
jaxlib version and the CPU's feature flags; a build is written to a temporary file and renamed,
so processes starting together (several hosts on one file system, the multi-process tests)
never load a half-written library. Where no compiler is found, the build fails or MKLN_NATIVE=0
is set, `depthwise_available()` is False and the models use their jnp formulation
(backends/cpu/ops.py), with one warning saying why.

`portable()` turns the kernels off while a model is traced for somewhere other than XLA:CPU
(the ONNX export; jax2onnx cannot convert an FFI call).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import logging
import os
import pathlib
import shutil
import subprocess
import tempfile

import jax
import numpy as np

HERE = pathlib.Path(__file__).parent
SOURCES = tuple(HERE / f"{name}.cc" for name in ("depthwise", "dense", "pool", "batchnorm"))
HEADERS = (HERE / "common.h",)
# FFI target name -> the handler's symbol in the library.
_TARGETS = {
    f"mkln_{kind}_{op}": f"Mkln{kind.capitalize()}{symbol}"
    for kind in ("depthwise", "dense")
    for op, symbol in (
        ("forward", "Forward"),
        ("input_grad", "InputGrad"),
        ("filter_grad", "FilterGrad"),
    )
} | {
    "mkln_max_pool_forward": "MklnMaxPoolForward",
    "mkln_max_pool_input_grad": "MklnMaxPoolInputGrad",
    "mkln_batch_norm_stats": "MklnBatchNormStats",
    "mkln_batch_norm_grad_stats": "MklnBatchNormGradStats",
}
_portable = [0]


@contextlib.contextmanager
def portable():
    """Within: models use their jnp formulations, never an FFI call (for ONNX export)."""
    _portable[0] += 1
    try:
        yield
    finally:
        _portable[0] -= 1


def _cpu_flags() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return ""


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and (path := shutil.which(name)):
            return path
    return None


def build(cache_dir: pathlib.Path | None = None) -> pathlib.Path:
    """Compiles the kernels' sources (or finds them built); returns the shared library's path.

    Raises RuntimeError naming the compiler's complaint when the build fails."""
    compiler = _compiler()
    if compiler is None:
        raise RuntimeError("no C++ compiler found (set CXX, or install g++)")
    flags = ["-O3", "-std=c++17", "-shared", "-fPIC"]
    cpu = _cpu_flags()
    if cpu and os.uname().machine in ("x86_64", "aarch64"):
        flags.append("-march=native" if os.uname().machine == "x86_64" else "-mcpu=native")
    key = hashlib.sha256(
        b"\0".join(
            s.encode()
            for s in (
                *(f.read_text() for f in (*SOURCES, *HEADERS)),
                " ".join(flags),
                compiler,
                jax.__version__,
                cpu,
            )
        )
    ).hexdigest()[:16]
    cache_dir = pathlib.Path(
        cache_dir
        or os.environ.get("MKLN_NATIVE_CACHE")
        or pathlib.Path.home() / ".cache" / "mkln_jax" / "native"
    )
    target = cache_dir / f"kernels-{key}.so"
    if target.exists():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=cache_dir, suffix=".so.tmp", delete=False) as tmp:
        partial = pathlib.Path(tmp.name)
    command = [compiler, *flags, "-isystem", jax.ffi.include_dir(), *map(str, SOURCES)]
    command += ["-o", str(partial)]
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            sources = ", ".join(map(str, SOURCES))
            raise RuntimeError(
                f"building {sources} failed ({' '.join(command)}):\n{result.stderr[-2000:]}"
            )
        os.replace(partial, target)  # atomic: a concurrent process sees all of it or nothing
    finally:
        partial.unlink(missing_ok=True)
    return target


_lanes = [0]


@functools.cache
def _load() -> str | None:
    """Builds, loads and registers the kernels once per process; None, or why not."""
    if os.environ.get("MKLN_NATIVE", "1") == "0":
        return "MKLN_NATIVE=0"
    try:
        library = ctypes.cdll.LoadLibrary(str(build()))
        for name, symbol in _TARGETS.items():
            jax.ffi.register_ffi_target(
                name, jax.ffi.pycapsule(getattr(library, symbol)), platform="cpu"
            )
        _lanes[0] = int(library.MklnDenseLanes())
    except (RuntimeError, OSError, AttributeError) as e:
        logging.warning(
            "mkln_jax: native CPU kernels unavailable, using the jnp formulations "
            "(slower convolutions): %s",
            e,
        )
        return str(e)
    return None


def depthwise_available(dtype) -> bool:
    """Whether a depthwise convolution of this dtype traced now should use the FFI kernels: on
    XLA:CPU, float32, outside `portable()`, and where the library builds and loads."""
    return (
        _portable[0] == 0
        and np.dtype(dtype) == np.float32
        and jax.default_backend() == "cpu"
        and _load() is None
    )


def dense_available(dtype) -> bool:
    """Whether a dense convolution of this dtype traced now should use the FFI kernels (the
    same conditions as `depthwise_available`)."""
    return depthwise_available(dtype)


def max_pool_available(dtype) -> bool:
    """Whether a max pooling of this dtype traced now should use the FFI kernels (the same
    conditions as `depthwise_available`)."""
    return depthwise_available(dtype)


def batch_norm_available(dtype) -> bool:
    """Whether BatchNorm statistics of this dtype traced now should use the FFI kernels (the
    same conditions as `depthwise_available`)."""
    return depthwise_available(dtype)


def dense_lanes() -> int:
    """The channel multiple the dense kernels need (the build's vector width in floats): output
    channels for the forward pass and filter gradient, input channels too for the input
    gradient. 0 where the kernels are unavailable."""
    return _lanes[0] if _load() is None else 0


def _require() -> None:
    if (why := _load()) is not None:
        raise RuntimeError(f"mkln_jax's native CPU kernels are unavailable: {why}")


def _call(name: str, shape, a, b, stride: int, pads, **attrs) -> jax.Array:
    _require()
    return jax.ffi.ffi_call(
        name,
        jax.ShapeDtypeStruct(tuple(shape), np.float32),
        vmap_method="sequential",
    )(
        a,
        b,
        stride=np.int64(stride),
        pad_h=np.int64(pads[0][0]),
        pad_w=np.int64(pads[1][0]),
        **{key: np.int64(value) for key, value in attrs.items()},
    )


def _out_size(size: int, pad: tuple[int, int], kernel: int, stride: int) -> int:
    return (size + pad[0] + pad[1] - kernel) // stride + 1


def depthwise_forward(x: jax.Array, w: jax.Array, stride: int, pads) -> jax.Array:
    """x (N, H, W, C), w (k, k, 1, C) or (k, k, C); pads ((top, bottom), (left, right)),
    each side smaller than k."""
    n, h, wd, c = x.shape
    k = w.shape[0]
    shape = (n, _out_size(h, pads[0], k, stride), _out_size(wd, pads[1], k, stride), c)
    return _call("mkln_depthwise_forward", shape, x, w.reshape(k, k, c), stride, pads)


def depthwise_input_grad(dy: jax.Array, w: jax.Array, x_shape, stride: int, pads) -> jax.Array:
    k, c = w.shape[0], w.shape[-1]
    return _call("mkln_depthwise_input_grad", x_shape, dy, w.reshape(k, k, c), stride, pads)


def depthwise_filter_grad(x: jax.Array, dy: jax.Array, w_shape, stride: int, pads) -> jax.Array:
    k, c = w_shape[0], w_shape[-1]
    return _call("mkln_depthwise_filter_grad", (k, k, c), x, dy, stride, pads).reshape(w_shape)


def dense_forward(x: jax.Array, w: jax.Array, stride: int, pads) -> jax.Array:
    """x (N, H, W, Cin), w (k, k, Cin, Cout); pads ((top, bottom), (left, right)), each side
    smaller than k; Cout a multiple of `dense_lanes()`."""
    n, h, wd, _ = x.shape
    k, co = w.shape[0], w.shape[-1]
    shape = (n, _out_size(h, pads[0], k, stride), _out_size(wd, pads[1], k, stride), co)
    return _call("mkln_dense_forward", shape, x, w, stride, pads, flip=0)


def dense_input_grad(dy: jax.Array, w: jax.Array, x_shape, stride: int, pads) -> jax.Array:
    """dx of `dense_forward`; Cin a multiple of `dense_lanes()` too."""
    wt = w.transpose(0, 1, 3, 2)
    if stride == 1:  # a forward convolution of dy with the flipped kernel (and its fast paths)
        k = w.shape[0]
        flipped = tuple((k - 1 - a, k - 1 - b) for a, b in pads)
        # The kernel flips the taps itself (flip=1): XLA's reversed copy of every kernel cost
        # 16 ms per ResNet-18 step, its plain transpose 5.
        return _call("mkln_dense_forward", x_shape, dy, wt, 1, flipped, flip=1)
    return _call("mkln_dense_input_grad", x_shape, dy, wt, stride, pads)


def dense_filter_grad(x: jax.Array, dy: jax.Array, w_shape, stride: int, pads) -> jax.Array:
    return _call("mkln_dense_filter_grad", tuple(w_shape), x, dy, stride, pads)


def _pool_attrs(kernel: int, stride: int, pads) -> dict:
    return {
        "kernel": np.int64(kernel),
        "stride": np.int64(stride),
        "pad_h": np.int64(pads[0][0]),
        "pad_w": np.int64(pads[1][0]),
    }


def max_pool_forward(x: jax.Array, kernel: int, stride: int, pads) -> tuple[jax.Array, jax.Array]:
    """Max pooling of x (N, H, W, C) over kernel x kernel windows; pads ((top, bottom), (left,
    right)), each side smaller than the kernel, padding never winning. Returns the pooled
    values and, per output, the winning tap (row-major index in the window) as uint8."""
    _require()
    n, h, wd, c = x.shape
    shape = (n, _out_size(h, pads[0], kernel, stride), _out_size(wd, pads[1], kernel, stride), c)
    return jax.ffi.ffi_call(
        "mkln_max_pool_forward",
        (jax.ShapeDtypeStruct(shape, np.float32), jax.ShapeDtypeStruct(shape, np.uint8)),
        vmap_method="sequential",
    )(x, **_pool_attrs(kernel, stride, pads))


def max_pool_input_grad(dy: jax.Array, taps: jax.Array, x_shape, kernel: int, stride: int, pads):
    """dx of `max_pool_forward`: each output's gradient to the input pixel that won it."""
    _require()
    return jax.ffi.ffi_call(
        "mkln_max_pool_input_grad",
        jax.ShapeDtypeStruct(tuple(x_shape), np.float32),
        vmap_method="sequential",
    )(dy, taps, **_pool_attrs(kernel, stride, pads))


def _per_channel_sums(name: str, *operands: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The two (C,) rows of a batchnorm.cc kernel's (2, C) result, C being operands[0]'s last
    axis."""
    _require()
    out = jax.ffi.ffi_call(
        name,
        jax.ShapeDtypeStruct((2, operands[0].shape[-1]), np.float32),
        vmap_method="sequential",
    )(*operands)
    return out[0], out[1]


def batch_norm_stats(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-channel (last axis) mean and variance of x over every other axis, the variance as
    E[x^2] - E[x]^2 clipped at 0 (flax's fast variance), from one pass over x (sums in double)."""
    return _per_channel_sums("mkln_batch_norm_stats", x)


def batch_norm_grad_stats(
    x: jax.Array, dy: jax.Array, mean: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Per-channel sum(dy) and sum(dy * (x - mean)) over every axis but the last, from one
    pass over x and dy."""
    return _per_channel_sums("mkln_batch_norm_grad_stats", x, dy, mean)
