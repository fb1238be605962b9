"""The train step's XLA:CPU convolution and dot libraries: chosen per model, same numbers
either way."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from mkln_jax import experiment, models
from mkln_jax import step as step_lib
from mkln_jax.backends.cpu import xla_options

EIGEN = xla_options.compiler_options("eigen")
EIGEN_DOTS = xla_options.compiler_options("ynnpack", dot_library="eigen")
needs_option = pytest.mark.skipif(
    not EIGEN, reason="this jaxlib's XLA:CPU has no YNNPACK fusion option to set"
)


def _conv_text(options):
    f = jax.jit(
        lambda x, w: jax.lax.conv_general_dilated(
            x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
    )
    return (
        f.lower(jnp.ones((4, 16, 16, 64)), jnp.ones((3, 3, 64, 64)))
        .compile(compiler_options=options)
        .as_text()
    )


def test_choices_and_where_nothing_is_set():
    assert xla_options.compiler_options("ynnpack") == {}
    assert xla_options.compiler_options("eigen", backend="gpu") == {}
    assert not xla_options._understood("xla_cpu_option_that_does_not_exist", "1")
    with pytest.raises(ValueError, match="conv_library must be one of"):
        xla_options.compiler_options("onednn")
    with pytest.raises(ValueError, match="dot_library must be one of"):
        xla_options.compiler_options("ynnpack", dot_library="mkl")
    assert xla_options.for_model("xception", backend="gpu") == {}
    assert xla_options.MODEL_LIBRARIES["resnet18"] == ("eigen", "ynnpack")
    assert "efficientnet_b0" not in xla_options.MODEL_LIBRARIES


@needs_option
def test_eigen_takes_the_convolution_away_from_ynnpack():
    assert "ynn_fusion" in _conv_text(None)
    assert "ynn_fusion" not in _conv_text(EIGEN)


def _compiled_dot(options):
    f = jax.jit(lambda a, b: a @ b)
    return f.lower(jnp.ones((256, 128)), jnp.ones((128, 64))).compile(compiler_options=options)


@needs_option
def test_eigen_dots_take_the_product_away_from_ynnpack_and_keep_reductions_there():
    assert "ynn_fusion" in _compiled_dot(None).as_text()
    assert "ynn_fusion" not in _compiled_dot(EIGEN_DOTS).as_text()
    assert "ynn_fusion" in _compiled_dot(EIGEN).as_text()  # convolutions only
    both = xla_options.compiler_options("eigen", dot_library="eigen")
    assert "ynn_fusion" not in _compiled_dot(both).as_text()
    reduce = jax.jit(lambda a: jnp.sum(a, axis=0)).lower(jnp.ones((256, 128)))
    assert "ynn_fusion" in reduce.compile(compiler_options=both).as_text()
    rng = np.random.default_rng(0)
    a, b = (jnp.asarray(rng.normal(size=s), jnp.float32) for s in ((256, 128), (128, 64)))
    np.testing.assert_allclose(
        _compiled_dot(EIGEN_DOTS)(a, b), _compiled_dot(None)(a, b), rtol=1e-5, atol=1e-4
    )


@needs_option
def test_xception_takes_eigen_dots_and_the_others_do_not():
    config = ml_collections.ConfigDict(
        {
            "train": {"cpu": {"convolutions": "auto", "dots": "auto"}},
            "student": {"model": "xception"},
        }
    )
    assert experiment.cpu_compiler_options(config, "student") == EIGEN_DOTS
    config.student.model = "efficientnet_b0"
    assert experiment.cpu_compiler_options(config, "student") == {}
    config.student.model = "resnet18"
    assert experiment.cpu_compiler_options(config, "student") == EIGEN
    config.train.cpu.dots = "eigen"  # told otherwise: convolutions and dots on Eigen
    assert experiment.cpu_compiler_options(config, "student") == xla_options.compiler_options(
        "eigen", dot_library="eigen"
    )
    config.student.model = "xception"
    config.train.cpu.dots = "ynnpack"
    assert experiment.cpu_compiler_options(config, "student") == {}


@needs_option
def test_trainer_compiles_resnets_with_eigen_unless_told_otherwise():
    config = ml_collections.ConfigDict(
        {
            "train": {"cpu": {"convolutions": "auto", "dots": "auto"}},
            "student": {"model": "resnet18"},
        }
    )
    assert experiment.cpu_compiler_options(config, "student") == EIGEN
    config.student.model = "efficientnet_b0"
    assert experiment.cpu_compiler_options(config, "student") == {}
    config.train.cpu.convolutions = "eigen"
    assert experiment.cpu_compiler_options(config, "student") == EIGEN


@needs_option
@pytest.mark.parametrize(
    "shape,kernel,stride",
    [
        ((4, 8, 8, 64), (3, 3, 64, 64), 1),
        ((4, 16, 16, 32), (3, 3, 32, 64), 2),
        ((2, 32, 32, 3), (7, 7, 3, 16), 2),
    ],
)
def test_convolution_and_its_gradients_agree_under_both_libraries(shape, kernel, stride):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=shape), jnp.float32)
    w = jnp.asarray(rng.normal(size=kernel) / np.sqrt(np.prod(kernel[:3])), jnp.float32)

    def loss(x, w):
        y = jax.lax.conv_general_dilated(
            x, w, (stride, stride), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        return jnp.sum(jnp.sin(y)), y

    fn = jax.jit(jax.value_and_grad(loss, (0, 1), has_aux=True)).lower(x, w)
    (_, y_ynn), g_ynn = fn.compile()(x, w)
    (_, y_eigen), g_eigen = fn.compile(compiler_options=EIGEN)(x, w)
    np.testing.assert_allclose(y_eigen, y_ynn, rtol=1e-5, atol=1e-5)
    for a, b in zip(g_eigen, g_ynn, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@needs_option
def test_resnet_train_step_under_both_libraries():
    model = models.build("resnet18", 2)
    graphdef, _, _ = step_lib.split_model(model)
    spec = models.spec("resnet18")
    tx = optax.sgd(0.1)
    step = jax.jit(step_lib.make_train_step(step_lib.ModelFn(graphdef, spec.mean, spec.std), tx))
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.integers(0, 256, (8, 64, 64, 3), dtype=np.uint8),
        "label": np.int32([0, 1] * 4),
    }
    state = step_lib.init_state(model, tx, 0)
    lowered = step.lower(state, None, batch, {})
    outs = [lowered.compile(compiler_options=o)(state, None, batch, {}) for o in (None, EIGEN)]
    (ynn_state, ynn_metrics), (eigen_state, eigen_metrics) = outs
    np.testing.assert_allclose(eigen_metrics["loss"], ynn_metrics["loss"], rtol=1e-5)
    # The SGD update is -0.1 * gradient. Rounding differences grow through 20 train-mode
    # BatchNorm + ReLU layers at this small batch (the late layers see 2x2 images), so the
    # whole update is compared loosely here; each convolution is compared tightly above.
    before = jax.tree.leaves(state.params)
    deltas = [
        np.concatenate(
            [np.ravel(np.asarray(a) - np.asarray(b)) for a, b in zip(leaves, before, strict=True)]
        )
        for leaves in (jax.tree.leaves(ynn_state.params), jax.tree.leaves(eigen_state.params))
    ]
    assert np.linalg.norm(deltas[0]) > 0
    assert np.linalg.norm(deltas[1] - deltas[0]) < 1e-2 * np.linalg.norm(deltas[0])
