"""Our XLA:CPU FFI kernels (backends/cpu/native): the depthwise and dense convolutions and both
gradients of each equal XLA's convolution, the zoo uses them where they apply, and a build that
cannot happen falls back to the jnp formulation with the reason."""

import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mkln_jax import models
from mkln_jax import step as step_lib
from mkln_jax.backends.cpu import native
from mkln_jax.backends.cpu import ops as cpu_ops
from mkln_jax.models import layers

# Skipped only where there is no C++ compiler at all; a build that fails fails these tests.
pytestmark = pytest.mark.skipif(native._compiler() is None, reason="no C++ compiler here")


def _conv(fn, x, w, stride, padding):
    return fn(
        x,
        w,
        (stride, stride),
        padding,
        feature_group_count=x.shape[-1],
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )


# Channel counts below, at and above the kernel's 64-channel block (70: a block and a tail);
# strides 1-3; SAME (extra pixel after), symmetric and explicit asymmetric padding; odd sizes
# and non-square images; batch 3 so rows split unevenly over the thread pool.
CASES = [
    (3, 1, (9, 9), 6, "SAME"),
    (3, 2, (9, 12), 70, "SAME"),
    (5, 2, (10, 10), 64, "SAME"),
    (5, 1, (7, 11), 130, ((2, 2), (2, 2))),
    (3, 3, (13, 13), 17, ((1, 0), (0, 2))),
    (7, 2, (15, 15), 32, ((3, 3), (3, 3))),
    (3, 1, (64, 64), 128, "SAME"),  # enough rows for every pool thread to take some
]


@pytest.mark.parametrize("kernel,stride,hw,channels,padding", CASES)
def test_native_depthwise_equals_xla_conv_and_its_gradients(kernel, stride, hw, channels, padding):
    rng = np.random.default_rng(kernel * 100 + stride * 10 + channels)
    x = jnp.asarray(rng.normal(size=(3, *hw, channels)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(kernel, kernel, 1, channels)), jnp.float32)

    def loss(fn):
        return jax.jit(
            jax.value_and_grad(
                lambda a, b: jnp.sum(jnp.sin(_conv(fn, a, b, stride, padding))), argnums=(0, 1)
            )
        )

    text = jax.jit(lambda a, b: _conv(cpu_ops.shifted_depthwise_conv, a, b, stride, padding))
    assert "mkln_depthwise_forward" in text.lower(x, w).as_text()  # the kernel is what runs
    (v_ref, g_ref), (v_new, g_new) = (
        loss(jax.lax.conv_general_dilated)(x, w),
        loss(cpu_ops.shifted_depthwise_conv)(x, w),
    )
    np.testing.assert_allclose(
        _conv(cpu_ops.shifted_depthwise_conv, x, w, stride, padding),
        _conv(jax.lax.conv_general_dilated, x, w, stride, padding),
        rtol=1e-5,
        atol=1e-5,
    )
    np.testing.assert_allclose(v_new, v_ref, rtol=1e-5)
    for got, want in zip(g_new, g_ref, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(jnp.max(abs(want))))


@pytest.fixture(autouse=True)
def dense_kernels_at_every_size(monkeypatch):
    """The tests here take the kernels' every path on small maps, whatever the vector width
    (the zoo leaves small maps to XLA on 8-lane CPUs: see the routing test below)."""
    monkeypatch.setattr(cpu_ops, "MIN_PIXELS_WITH_8_LANES", 0)


def test_with_8_lanes_the_zoo_leaves_small_dense_maps_to_xla(monkeypatch):
    """On AVX2 (8 floats a vector) the zoo's kernels take maps of >= 1024 pixels only; with
    AVX-512 every size. This machine's lowering follows the same rule."""
    monkeypatch.setattr(cpu_ops, "MIN_PIXELS_WITH_8_LANES", 1024)
    assert cpu_ops._dense_kernels_pay(1023, 16) and cpu_ops._dense_kernels_pay(1024, 8)
    assert not cpu_ops._dense_kernels_pay(1023, 8)
    w = jnp.ones((3, 3, 16, 16), jnp.float32)
    for hw in (16, 32):
        x = jnp.ones((2, hw, hw, 16), jnp.float32)
        text = jax.jit(lambda a, b: _dense(cpu_ops.dense_conv, a, b, 1, "SAME")).lower(x, w)
        expected = cpu_ops._dense_kernels_pay(hw * hw, native.dense_lanes())
        assert ("mkln_dense_forward" in text.as_text()) == expected
    # The small CNN student keeps every size on the kernels (results independent of threads).
    every = functools.partial(cpu_ops.dense_conv, small_maps_on_kernels=True)
    text = jax.jit(lambda a, b: _dense(every, a, b, 1, "SAME")).lower(jnp.ones((2, 8, 8, 16)), w)
    assert "mkln_dense_forward" in text.as_text()


def _dense(fn, x, w, stride, padding):
    return fn(x, w, (stride, stride), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))


# (kernel, stride, (H, W), in, out, padding), batch 3. Each exercises a path of dense.cc:
# gather forward with channel-block tails (out 80 = 64 + 16; 48 = three vectors) and uneven
# tiles; the reduction cut into two channel blocks (in 128 > 113 per block for 3x3); merged
# kernel rows for few input channels (in 3 and 5, the input gradient then from XLA); tapwise
# small maps (in >= 64 on 4x4 and 3x3 with 5x5 kernels); stride-2/3 input gradients
# (phases, including uneven ones on odd sizes); 1x1; asymmetric and SAME padding.
DENSE_CASES = [
    (3, 1, (9, 7), 16, 80, ((1, 1), (1, 1))),
    (3, 2, (9, 12), 32, 48, "SAME"),
    (3, 1, (10, 10), 128, 64, ((1, 1), (1, 1))),
    (7, 2, (21, 19), 3, 64, ((3, 3), (3, 3))),
    (3, 2, (17, 17), 3, 32, "VALID"),
    (3, 1, (8, 9), 5, 16, ((1, 1), (1, 1))),
    (3, 1, (4, 4), 64, 64, ((1, 1), (1, 1))),
    (5, 1, (3, 3), 96, 32, ((2, 2), (2, 2))),
    (3, 2, (8, 8), 128, 80, ((1, 1), (1, 1))),
    (5, 3, (13, 11), 32, 16, ((1, 2), (2, 0))),
    (1, 1, (6, 6), 48, 32, "VALID"),
    (3, 1, (32, 32), 64, 64, ((1, 1), (1, 1))),  # every pool thread takes work
]


@pytest.mark.parametrize("kernel,stride,hw,cin,cout,padding", DENSE_CASES)
def test_native_dense_conv_equals_xla_conv_and_its_gradients(
    kernel, stride, hw, cin, cout, padding
):
    rng = np.random.default_rng(kernel * 1000 + stride * 100 + cin + cout)
    x = jnp.asarray(rng.normal(size=(3, *hw, cin)), jnp.float32)
    w = rng.normal(size=(kernel, kernel, cin, cout)) / (kernel * np.sqrt(cin))  # outputs ~1
    w = jnp.asarray(w, jnp.float32)

    def loss(fn):
        return jax.jit(
            jax.value_and_grad(
                lambda a, b: jnp.sum(jnp.sin(_dense(fn, a, b, stride, padding))), argnums=(0, 1)
            )
        )

    lowered = loss(cpu_ops.dense_conv).lower(x, w).as_text()
    assert "mkln_dense_forward" in lowered and "mkln_dense_filter_grad" in lowered
    np.testing.assert_allclose(
        _dense(cpu_ops.dense_conv, x, w, stride, padding),
        _dense(jax.lax.conv_general_dilated, x, w, stride, padding),
        rtol=1e-5,
        atol=1e-5,
    )
    (v_ref, g_ref), (v_new, g_new) = (
        loss(jax.lax.conv_general_dilated)(x, w),
        loss(cpu_ops.dense_conv)(x, w),
    )
    np.testing.assert_allclose(v_new, v_ref, rtol=1e-5, atol=1e-6 * x.size)
    for got, want in zip(g_new, g_ref, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(jnp.max(abs(want))))


# Windows 2/3/5 at strides 1-3, with and without padding; channels as one vector (16), a
# register block and a vector after it (80), a block and a scalar tail (70), vectors and a
# tail (35); odd and non-square maps; one case large enough for every pool thread.
POOL_CASES = [
    (3, 2, (13, 11), 70, 1),
    (3, 2, (9, 9), 35, 1),
    (2, 2, (8, 8), 16, 0),
    (3, 1, (10, 11), 80, 1),
    (5, 3, (13, 14), 20, 2),
    (3, 2, (33, 33), 128, 1),
]


@pytest.mark.parametrize("kernel,stride,hw,channels,padding", POOL_CASES)
def test_native_max_pool_equals_xla_and_its_gradient(kernel, stride, hw, channels, padding):
    """Values (ties everywhere: inputs on a 0.5 grid) equal XLA's reduce-window exactly, and
    the gradient goes where XLA's select-and-scatter sends it (the first maximum of each window
    in row-major order)."""
    rng = np.random.default_rng(kernel * 100 + channels)
    x = jnp.asarray(np.round(rng.normal(size=(3, *hw, channels)) * 2) / 2, jnp.float32)
    pads = ((padding, padding), (padding, padding))

    def xla(a):
        return nnx.max_pool(a, (kernel, kernel), strides=(stride, stride), padding=pads)

    def ours(a):
        return layers.max_pool(a, kernel, stride, padding, "cpu")

    assert "mkln_max_pool_forward" in jax.jit(ours).lower(x).as_text()
    y = jax.jit(ours)(x)
    np.testing.assert_array_equal(y, xla(x))
    dy = jnp.asarray(rng.normal(size=y.shape), jnp.float32)
    grad = jax.jit(lambda a, g: jax.vjp(ours, a)[1](g)[0])(x, dy)
    np.testing.assert_allclose(grad, jax.vjp(xla, x)[1](dy)[0], rtol=1e-6, atol=1e-6)


def test_native_max_pool_infinities_and_nans():
    """-inf is an ordinary value, and padding counts as -inf: a window of -inf pools to -inf and
    passes its gradient to its first tap, here padding, as XLA does. A NaN wins its windows
    (XLA's maximum propagates it) and takes their gradient, as PyTorch's max pooling does (XLA's
    select-and-scatter gives it to another tap)."""
    pads = ((1, 1), (1, 1))

    def xla(a):
        return nnx.max_pool(a, (3, 3), strides=(2, 2), padding=pads)

    def ours(a):
        return layers.max_pool(a, 3, 2, 1, "cpu")

    def grad(fn, a, g):
        return jax.vjp(fn, a)[1](g)[0]

    dy = jnp.arange(1, 1 + 9 * 17, dtype=jnp.float32).reshape(1, 3, 3, 17)
    x = np.zeros((1, 5, 5, 17), np.float32)
    x[0, :3, :3] = -np.inf
    x = jnp.asarray(x)
    np.testing.assert_array_equal(jax.jit(ours)(x), xla(x))
    np.testing.assert_array_equal(jax.jit(grad, static_argnums=0)(ours, x, dy), grad(xla, x, dy))
    x = x.at[0, 4, 4, 5].set(jnp.nan)  # the last pixel: window (2, 2) alone covers it
    np.testing.assert_array_equal(jax.jit(ours)(x), xla(x))  # NaN where XLA has it
    dx = jax.jit(grad, static_argnums=0)(ours, x, dy)
    assert dx[0, 4, 4, 5] == dy[0, 2, 2, 5]
    assert float(jnp.sum(dx)) == float(jnp.sum(dy)) - float(jnp.sum(dy[0, 0, 0]))  # (0, 0): padding


# Channels below, at and past one vector (with a tail), and past a 4-vector block; rank 2; fewer
# rows than the kernel's 32 chunks; one row.
BN_SHAPES = [(3, 5, 4, 7), (2, 9, 9, 16), (4, 6, 5, 70), (33, 40), (5, 200), (1, 3)]


@pytest.mark.parametrize("shape", BN_SHAPES)
def test_native_batch_norm_sums_equal_float64(shape):
    """BatchNorm's statistics from the kernels (one pass, sums in double) against float64: the
    batch mean and the fast variance (a constant channel's is exactly 0, never negative), and
    the backward pass's sum(dy) and sum(dy * (x - mean))."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=shape) * 3 + 1
    x[..., 0] = 2.5  # a constant channel
    dy = rng.normal(size=shape)
    x32, dy32 = jnp.asarray(x, jnp.float32), jnp.asarray(dy, jnp.float32)
    mean, var = jax.jit(native.batch_norm_stats)(x32)
    x64 = np.asarray(x32, np.float64).reshape(-1, shape[-1])
    np.testing.assert_allclose(mean, x64.mean(0), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(var, x64.var(0), rtol=1e-6, atol=1e-6)
    assert float(var[0]) == 0.0
    total, weighted = jax.jit(native.batch_norm_grad_stats)(x32, dy32, mean)
    d64 = np.asarray(dy32, np.float64).reshape(-1, shape[-1])
    np.testing.assert_allclose(total, d64.sum(0), rtol=1e-6, atol=1e-5)
    want = (d64 * (x64 - np.asarray(mean, np.float64))).sum(0)
    np.testing.assert_allclose(weighted, want, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize(
    "shape,cin,cout,kernel_expected",
    [
        ((4, 64, 64), 64, 128, True),  # 16384 pixels, >= 64 input channels: the kernels
        ((4, 32, 32), 64, 128, False),  # too few pixels: XLA's dot
        ((4, 64, 64), 32, 128, False),  # too few input channels
        ((4, 64, 64), 64, 30, False),  # not a multiple of any vector width (4, 8 or 16 floats)
    ],
)
def test_pointwise_filter_gradient_on_the_kernels_where_it_pays(shape, cin, cout, kernel_expected):
    """The 1x1 convolutions' filter gradient takes the dense kernels for large, wide layers and
    XLA's dot elsewhere; either way it equals the plain convolution's."""
    rng = np.random.default_rng(cin + cout)
    x = jnp.asarray(rng.normal(size=(*shape, cin)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(1, 1, cin, cout)), jnp.float32)

    def grads(conv):
        return jax.jit(
            jax.grad(lambda a, b: jnp.sum(jnp.cos(_dense(conv, a, b, 1, "VALID"))), (0, 1))
        )

    text = grads(cpu_ops.pointwise_conv).lower(x, w).as_text()
    assert ("mkln_dense_filter_grad" in text) == kernel_expected
    for a, b in zip(
        grads(cpu_ops.pointwise_conv)(x, w), grads(jax.lax.conv_general_dilated)(x, w), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-4 * float(np.max(np.abs(b))))


def test_dense_conv_leaves_what_the_kernels_do_not_cover_to_xla():
    """Output channels not a multiple of the vector width, bfloat16, padding as wide as the
    kernel: XLA's convolution, same values."""
    x = jnp.ones((1, 6, 6, 16), jnp.float32)
    for w, xx, padding in (
        (jnp.ones((3, 3, 16, 10), jnp.float32), x, "SAME"),
        (jnp.ones((3, 3, 16, 16), jnp.bfloat16), x.astype(jnp.bfloat16), "SAME"),
        (jnp.ones((3, 3, 16, 16), jnp.float32), x, ((3, 3), (1, 1))),
    ):
        fn = jax.jit(lambda a, b, p=padding: _dense(cpu_ops.dense_conv, a, b, 1, p))
        assert "mkln_dense" not in fn.lower(xx, w).as_text()
        np.testing.assert_array_equal(
            fn(xx, w), _dense(jax.lax.conv_general_dilated, xx, w, 1, padding)
        )


def test_portable_and_other_dtypes_trace_without_the_ffi_call():
    x = jnp.ones((1, 8, 8, 4), jnp.float32)
    w = jnp.ones((3, 3, 1, 4), jnp.float32)
    with native.portable():
        text = jax.jit(lambda a, b: _conv(cpu_ops.shifted_depthwise_conv, a, b, 1, "SAME"))
        assert "mkln_depthwise" not in text.lower(x, w).as_text()
    bf16 = jax.jit(lambda a, b: _conv(cpu_ops.shifted_depthwise_conv, a, b, 1, "SAME"))
    lowered = bf16.lower(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)).as_text()
    assert "mkln_depthwise" not in lowered
    scale = jnp.ones((4,), jnp.float32)

    def bn(*args):  # a fresh function each time: jit would reuse its first trace
        loss = lambda a, s: jnp.sum(layers.batch_norm_train(a, s, s, 1e-5)[0] ** 2)
        return jax.jit(jax.grad(loss)).lower(*args).as_text()

    assert "mkln_batch_norm_grad_stats" in bn(x, scale)
    with native.portable():
        assert "mkln_batch_norm" not in bn(x, scale)
    assert "mkln_batch_norm" not in bn(x.astype(jnp.bfloat16), scale.astype(jnp.bfloat16))


@pytest.mark.slow  # whole models, compiled
@pytest.mark.parametrize(
    "name,target,train",
    [
        ("efficientnet_b0", "mkln_depthwise_filter_grad", True),
        # Eval-mode BatchNorm: in train mode, batch statistics over 4 images of 2x2 maps
        # magnify float32 rounding to ~2% between any two convolution implementations (XLA's
        # YNNPACK and Eigen differ so too, tests/test_xla_options.py).
        ("resnet18", "mkln_dense_filter_grad", False),
        ("small_cnn", "mkln_dense_filter_grad", True),  # the default student
        ("xception", "mkln_max_pool_input_grad", False),
    ],
)
def test_model_gradients_match_the_formulation_without_kernels(name, target, train):
    """A whole forward and backward through the kernels against the same model without them
    (`portable()`), float32: EfficientNet-B0 (16 depthwise layers, strides 1 and 2, 3x3 and
    5x5), ResNet-18 (the 7x7 stem, 3x3 layers at strides 1 and 2, 2x2 to 16x16 maps), the
    small CNN student (a full-resolution 3-channel stem, SAME padding at stride 2), Xception
    (four max poolings after BatchNorm, 29x29 down to 4x4, and every other kernel too)."""
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 64, 64, 3)), jnp.float32)
    results = []
    for portable in (False, True):
        model = models.build(name, 2)
        graphdef, params, stats = step_lib.split_model(model)
        fn = step_lib.ModelFn(graphdef, (0.0,) * 3, (1.0,) * 3)

        def loss(p, fn=fn, stats=stats):
            logits, _ = fn.apply(p, stats, x, train=train, call=lambda m, xx, t: m(xx, t))
            return jnp.sum(logits * jnp.asarray([1.0, -2.0])), logits

        step = jax.jit(jax.value_and_grad(loss, has_aux=True))
        if portable:
            with native.portable():
                lowered = step.lower(params)
        else:
            lowered = step.lower(params)
        assert (target in lowered.as_text()) != portable
        (_, logits), grads = lowered.compile()(params)
        results.append((logits, jax.tree.leaves(grads)))
    (n_logits, n_grads), (j_logits, j_grads) = results
    np.testing.assert_allclose(n_logits, j_logits, rtol=1e-4, atol=1e-4)
    overall = max(float(np.max(np.abs(g))) for g in j_grads)
    for a, b in zip(n_grads, j_grads, strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-4 * overall)


def test_a_failing_build_names_the_source_and_the_compiler_error(tmp_path, monkeypatch):
    broken = tmp_path / "c++"
    broken.write_text("#!/bin/sh\necho 'no such thing as a compiler here' >&2\nexit 1\n")
    broken.chmod(0o755)
    monkeypatch.setenv("CXX", str(broken))
    failed = r"(?s)depthwise\.cc, .*batchnorm\.cc failed.*no such thing"
    with pytest.raises(RuntimeError, match=failed):
        native.build(tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("*.so*"))  # nothing half-written is left


@pytest.mark.slow
def test_without_the_kernels_a_process_trains_on_the_jnp_formulation(tmp_path):
    """MKLN_NATIVE=0, or a build that fails (a warning with the compiler's reason): the jnp
    formulation, same numbers as the kernels."""
    code = (
        "import jax, jax.numpy as jnp\n"
        "from mkln_jax.backends.cpu import native\n"
        "from mkln_jax.backends.cpu import ops\n"
        "x = jnp.ones((1, 6, 6, 3)); w = jnp.ones((3, 3, 1, 3))\n"
        "f = lambda a, b: ops.shifted_depthwise_conv(a, b, (1, 1), 'SAME',"
        " feature_group_count=3)\n"
        "print(native.depthwise_available(jnp.float32),"
        " 'mkln_depthwise' in jax.jit(f).lower(x, w).as_text(), float(f(x, w).sum()))\n"
    )
    broken = tmp_path / "c++"
    broken.write_text("#!/bin/sh\necho 'compiler on strike' >&2\nexit 1\n")
    broken.chmod(0o755)

    def run(**env):
        env = {**os.environ, "MKLN_NATIVE_CACHE": str(tmp_path / "cache"), **env}
        return subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )

    off = run(MKLN_NATIVE="0")
    assert off.stdout.split() == ["False", "False", "768.0"]  # 3 channels x 16 x 16 taps
    failed = run(CXX=str(broken))
    assert failed.stdout.split() == ["False", "False", "768.0"]
    assert "native CPU kernels unavailable" in failed.stderr
    assert "compiler on strike" in failed.stderr
    on = run()
    assert on.stdout.split() == ["True", "True", "768.0"]
    assert len(list((tmp_path / "cache").glob("kernels-*.so"))) == 1


@pytest.mark.parametrize(
    "conv,x_shape,w_shape",
    [
        (
            lambda a, b: _conv(cpu_ops.shifted_depthwise_conv, a, b, 1, "SAME"),
            (16, 32, 32, 96),
            (3, 3, 1, 96),
        ),
        (
            lambda a, b: _dense(cpu_ops.dense_conv, a, b, 1, "SAME"),
            (16, 16, 16, 64),
            (3, 3, 64, 64),
        ),
        (lambda a, b: layers.batch_norm_train(a, b, 0.5 * b, 1e-5)[0], (16, 32, 32, 96), (96,)),
    ],
    ids=["depthwise", "dense", "batch_norm"],
)
def test_gradients_are_bitwise_reproducible(conv, x_shape, w_shape):
    """Runs repeat exactly: the filter gradients' (and BatchNorm's) partial sums are kept per
    fixed chunk and added in order, whichever thread took which rows."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=x_shape), jnp.float32)
    w = jnp.asarray(rng.normal(size=w_shape), jnp.float32)
    grad = jax.jit(jax.grad(lambda a, b: jnp.sum(jnp.sin(conv(a, b))), argnums=(0, 1)))
    first = jax.device_get(grad(x, w))
    for _ in range(20):
        for a, b in zip(jax.device_get(grad(x, w)), first, strict=True):
            np.testing.assert_array_equal(a, b)


def test_a_malformed_call_is_an_error_not_a_stray_read():
    """The kernels check their operands' shapes: a kernel whose channels disagree with the
    input's is refused with a message, not read past its end."""
    assert native.depthwise_available(jnp.float32)  # builds and registers
    x = jnp.ones((1, 8, 8, 4), jnp.float32)
    w = jnp.ones((3, 3, 2), jnp.float32)
    call = jax.ffi.ffi_call(
        "mkln_depthwise_forward", jax.ShapeDtypeStruct((1, 8, 8, 4), jnp.float32)
    )
    with pytest.raises(Exception, match="shapes disagree"):
        jax.block_until_ready(call(x, w, stride=np.int64(1), pad_h=np.int64(1), pad_w=np.int64(1)))
    dense = jax.ffi.ffi_call("mkln_dense_forward", jax.ShapeDtypeStruct((1, 8, 8, 20), jnp.float32))
    attrs = {"stride": np.int64(1), "pad_h": np.int64(1), "pad_w": np.int64(1), "flip": np.int64(0)}
    with pytest.raises(Exception, match="shapes disagree"):
        jax.block_until_ready(dense(x, jnp.ones((3, 3, 5, 20), jnp.float32), **attrs))
    with pytest.raises(Exception, match="multiple of the lanes"):  # 20 output channels
        jax.block_until_ready(dense(x, jnp.ones((3, 3, 4, 20), jnp.float32), **attrs))
    pool_grad = jax.ffi.ffi_call(
        "mkln_max_pool_input_grad", jax.ShapeDtypeStruct((1, 8, 8, 4), jnp.float32)
    )
    attrs = {
        "kernel": np.int64(3),
        "stride": np.int64(2),
        "pad_h": np.int64(1),
        "pad_w": np.int64(1),
    }
    dy = jnp.ones((1, 4, 4, 4), jnp.float32)
    with pytest.raises(Exception, match="output and taps shapes disagree"):
        jax.block_until_ready(pool_grad(dy, jnp.zeros((1, 4, 3, 4), jnp.uint8), **attrs))
    with pytest.raises(Exception, match="bad window"):  # a 6th output row: rows 9-11 of 8
        tall = jnp.ones((1, 6, 4, 4), jnp.float32)
        jax.block_until_ready(pool_grad(tall, jnp.zeros((1, 6, 4, 4), jnp.uint8), **attrs))
    sums = jax.ffi.ffi_call("mkln_batch_norm_grad_stats", jax.ShapeDtypeStruct((2, 4), jnp.float32))
    with pytest.raises(Exception, match="want dy shaped as x"):
        jax.block_until_ready(sums(x, jnp.ones((1, 8, 7, 4), jnp.float32), jnp.zeros((4,))))
    stats = jax.ffi.ffi_call("mkln_batch_norm_stats", jax.ShapeDtypeStruct((2, 5), jnp.float32))
    with pytest.raises(Exception, match=r"a \(2, C\) result"):
        jax.block_until_ready(stats(x))


def test_the_trainer_says_its_flop_count_leaves_out_the_kernels():
    from mkln_jax import experiment

    x = jnp.ones((2, 8, 8, 16), jnp.float32)
    w = jnp.ones((3, 3, 16, 16), jnp.float32)
    with_kernels = jax.jit(lambda a, b: _dense(cpu_ops.dense_conv, a, b, 1, "SAME")).lower(x, w)
    without = jax.jit(lambda a, b: _dense(jax.lax.conv_general_dilated, a, b, 1, "SAME"))
    assert "without mkln_jax's CPU kernels" in experiment.compiled_costs(with_kernels.compile())
    assert "without" not in experiment.compiled_costs(without.lower(x, w).compile())
