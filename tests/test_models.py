import pickle
import zipfile

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import skimage.data
import weight_files
from flax import nnx

from mkln_jax import models
from mkln_jax import step as step_lib
from mkln_jax.backends.cpu import ops as cpu_ops
from mkln_jax.errors import WeightFileError
from mkln_jax.models import convert, layers, torch_state
from mkln_jax.models.efficientnet import EfficientNet

# ImageNet classes: 281-285 are domestic cats; 504 coffee mug, 967 espresso, 968 cup.
CAT_CLASSES = set(range(281, 286))
CUP_CLASSES = {504, 967, 968}


@pytest.mark.parametrize("kernel,stride,size", [(3, 1, 9), (3, 2, 9), (5, 2, 10), (5, 1, 7)])
def test_shifted_depthwise_conv_equals_xla_conv_and_its_gradients(kernel, stride, size):
    rng = np.random.default_rng(kernel * 10 + stride)
    x = jnp.asarray(rng.normal(size=(2, size, size, 6)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(kernel, kernel, 1, 6)), jnp.float32)

    def run(fn):
        return fn(
            x,
            w,
            (stride, stride),
            "SAME",
            feature_group_count=6,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )

    expected = run(jax.lax.conv_general_dilated)
    got = run(cpu_ops.shifted_depthwise_conv)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)

    def loss(fn, xx, ww):
        return jnp.sum(
            jnp.sin(
                fn(
                    xx,
                    ww,
                    (stride, stride),
                    "SAME",
                    feature_group_count=6,
                    dimension_numbers=("NHWC", "HWIO", "NHWC"),
                )
            )
        )

    g_ref = jax.grad(lambda a, b: loss(jax.lax.conv_general_dilated, a, b), (0, 1))(x, w)
    g_new = jax.grad(lambda a, b: loss(cpu_ops.shifted_depthwise_conv, a, b), (0, 1))(x, w)
    for a, b in zip(g_new, g_ref, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("stride,padding", [(1, "VALID"), (2, "SAME"), (2, ((0, 0), (0, 0)))])
def test_pointwise_conv_equals_xla_conv_and_its_gradients(stride, padding):
    rng = np.random.default_rng(stride)
    x = jnp.asarray(rng.normal(size=(3, 9, 9, 5)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(1, 1, 5, 7)), jnp.float32)

    def loss(fn, xx, ww):
        y = fn(xx, ww, (stride, stride), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jnp.sum(jnp.sin(y)), y

    (_, expected), g_ref = jax.value_and_grad(
        lambda a, b: loss(jax.lax.conv_general_dilated, a, b), (0, 1), has_aux=True
    )(x, w)
    (_, got), g_new = jax.value_and_grad(
        lambda a, b: loss(cpu_ops.pointwise_conv, a, b), (0, 1), has_aux=True
    )(x, w)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)
    for a, b in zip(g_new, g_ref, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="1x1"):
        cpu_ops.pointwise_conv(x, jnp.zeros((3, 3, 5, 7)), (1, 1), "SAME")


@pytest.mark.parametrize("size,stride", [(9, 2), (8, 2), (8, 1), (15, 3)])
def test_cpu_max_pool_has_xlas_values_and_gradients(size, stride):
    # Values rounded to 0.1 so that windows hold ties: the first maximum in window order must
    # get the gradient, as XLA's (and PyTorch's) pooling decides.
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, size, size, 5)).round(1))
    weights = jnp.asarray(np.random.default_rng(1).normal(size=(5,)))

    def loss(impl, x):
        y = layers.max_pool(x, 3, stride, 1, impl)
        return jnp.sum(jnp.sin(y) * weights), y

    (_, y_cpu), g_cpu = jax.value_and_grad(lambda x: loss("cpu", x), has_aux=True)(x)
    (_, y_xla), g_xla = jax.value_and_grad(lambda x: loss("xla", x), has_aux=True)(x)
    assert y_cpu.shape == y_xla.shape
    np.testing.assert_array_equal(y_cpu, y_xla)
    np.testing.assert_allclose(g_cpu, g_xla, rtol=1e-6, atol=1e-7)
    assert float(jnp.sum(g_cpu != 0)) > 0


def test_batch_norm_train_pass_equals_flax_batch_norm(monkeypatch):
    """layers.BatchNorm (the zoo's) computes what nnx.BatchNorm does in train mode, outputs and
    running statistics (float32), and its own backward pass gives autodiff's gradients for the
    input, scale and bias, with cotangents on the batch statistics too (float64, to 1e-10)."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(3, 5, 4, 7)) * 3 + 1, jnp.float32)
    ours = layers.batch_norm(7, 1e-3, jnp.float32, nnx.Rngs(0))
    plain = nnx.BatchNorm(7, momentum=0.9, epsilon=1e-3, dtype=jnp.float32, rngs=nnx.Rngs(0))
    scale, bias = (jnp.asarray(rng.normal(size=7), jnp.float32) for _ in range(2))
    for bn in (ours, plain):
        bn.scale[...], bn.bias[...] = scale, bias
        bn.mean[...], bn.var[...] = jnp.full((7,), 0.5), jnp.full((7,), 2.0)
    calls = []
    own = layers.batch_norm_train
    monkeypatch.setattr(layers, "batch_norm_train", lambda *a: calls.append(1) or own(*a))
    np.testing.assert_allclose(
        ours(x, use_running_average=False), plain(x, use_running_average=False), atol=1e-5
    )
    assert calls  # the train-mode pass is ours
    np.testing.assert_allclose(ours.mean[...], plain.mean[...], rtol=1e-6)
    np.testing.assert_allclose(ours.var[...], plain.var[...], rtol=1e-6)
    # Eval mode is flax's own pass: the same outputs from the same running statistics (ours
    # differ from flax's in the last bits: on CPU the batch sums are taken in double).
    ours.mean[...], ours.var[...] = plain.mean[...], plain.var[...]
    np.testing.assert_array_equal(
        ours(x, use_running_average=True), plain(x, use_running_average=True)
    )

    def reference(x, scale, bias):
        mean = jnp.mean(x, (0, 1, 2))
        var = jnp.maximum(jnp.mean(x * x, (0, 1, 2)) - mean * mean, 0.0)
        return (x - mean) * (jax.lax.rsqrt(var + 1e-3) * scale) + bias, mean, var

    with jax.enable_x64(True):
        args = tuple(jnp.asarray(a, jnp.float64) for a in (x, scale, bias))
        cotangents = tuple(
            jnp.asarray(rng.normal(size=shape), jnp.float64) for shape in (x.shape, (7,), (7,))
        )
        for stats in (0.0, 1.0):  # training's case (statistics feed no loss), then in general
            ct = (cotangents[0], *(c * stats for c in cotangents[1:]))
            got = jax.vjp(lambda *a: layers.batch_norm_train(*a, 1e-3), *args)[1](ct)
            want = jax.vjp(reference, *args)[1](ct)
            for a, b in zip(got, want, strict=True):
                np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.slow  # whole models, compiled
@pytest.mark.parametrize("name", ["efficientnet_b0", "xception", "resnet18"])
def test_cpu_formulations_train_like_xla_convolutions(name):
    """A whole train-mode forward and every parameter gradient: the CPU formulations (shifted
    depthwise with its own backward pass, 1x1 as dot) against XLA's convolutions. In float64:
    the two are the same function, so they agree to ~1e-12 there; in float32 a deep ReLU
    network can flip a unit whose input is within rounding of zero and move early-layer
    gradients by ~0.5% (seen in Xception), which would hide a real error of that size."""
    size = 71 if name == "xception" else 64
    results = []
    with jax.enable_x64(True):
        x = jnp.asarray(np.random.default_rng(0).normal(size=(2, size, size, 3)), jnp.float64)
        for impl in ("cpu", "xla"):
            model = models.spec(name).constructor(
                2, dtype=jnp.float64, conv_impl=impl, rngs=nnx.Rngs(params=0)
            )
            graphdef, params, stats = step_lib.split_model(model)
            params, stats = jax.tree.map(lambda v: v.astype(jnp.float64), (params, stats))
            fn = step_lib.ModelFn(graphdef, (0.0,) * 3, (1.0,) * 3, compute_dtype=jnp.float64)

            def loss(p, fn=fn, stats=stats):
                logits, _ = fn.apply(p, stats, x, train=True, call=lambda m, xx, t: m(xx, t))
                return jnp.sum(logits * jnp.asarray([1.0, -2.0])), logits

            (_, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
            assert logits.dtype == jnp.float32  # ModelFn's output cast; computed in float64
            results.append((logits, jax.tree.leaves(grads)))
    (cpu_logits, cpu_grads), (xla_logits, xla_grads) = results
    np.testing.assert_allclose(cpu_logits, xla_logits, rtol=1e-6, atol=1e-6)
    assert len(cpu_grads) == len(xla_grads) > 10
    overall = max(float(np.max(np.abs(g))) for g in xla_grads)
    for a, b in zip(cpu_grads, xla_grads, strict=True):
        assert a.dtype == jnp.float64
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12 * overall)


def _imagenet_top1(name: str, model, image: np.ndarray) -> int:
    spec = models.spec(name)
    x = cv2.resize(image, (224, 224), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    x = (x - np.asarray(spec.mean)) / np.asarray(spec.std)
    return int(jnp.argmax(_jit_apply(model, jnp.asarray(x[None], jnp.float32))[0]))


@pytest.mark.slow  # whole models, compiled
@pytest.mark.parametrize("name", ["efficientnet_lite0", "mobilenet_v2"])
def test_converted_imagenet_weights_recognise_a_cat_and_a_coffee(name, cache_dir):
    model = models.build(name, 1000, pretrained="imagenet", cache_dir=cache_dir)
    assert _imagenet_top1(name, model, skimage.data.chelsea()) in CAT_CLASSES
    assert _imagenet_top1(name, model, skimage.data.coffee()) in CUP_CLASSES


# Published parameter counts with the 1000-class ImageNet head. Sources: torchvision's model
# documentation (ResNet-18/34/50, MobileNetV2, EfficientNet-B0..B4: acc / params tables), timm's
# legacy_xception (= Cadene pretrainedmodels) model card, and TensorFlow's EfficientNet-Lite0
# (4.65 M; torch package of the same weights: 4,652,008 tensors' elements).
PUBLISHED_PARAMS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "mobilenet_v2": 3_504_872,
    "efficientnet_b0": 5_288_548,
    "efficientnet_b1": 7_794_184,
    "efficientnet_b2": 9_109_994,
    "efficientnet_b3": 12_233_232,
    "efficientnet_b4": 19_341_616,
    "xception": 22_855_952,
    "efficientnet_lite0": 4_652_008,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_parameter_counts_match_the_published_ones(name):
    model = nnx.eval_shape(lambda: models.build(name, 1000))
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert count == PUBLISHED_PARAMS[name]


@pytest.mark.slow  # whole models, compiled
def test_weight_load_round_trips_and_names_missing_and_extra_tensors():
    source = EfficientNet(1000, variant="efficientnet_lite0", rngs=nnx.Rngs(1))
    state = weight_files.torch_layout(source)
    target = EfficientNet(1000, variant="efficientnet_lite0", rngs=nnx.Rngs(2))
    before = np.asarray(target.stem_conv.kernel.get_value()).copy()

    broken = dict(state)
    del broken["_blocks.3._bn1.running_var"]
    broken["_blocks.99._depthwise_conv.weight"] = np.zeros((1,), np.float32)
    with pytest.raises(convert.WeightMismatchError) as err:
        convert.load_torch_state_dict(target, broken)
    assert "_blocks.3._bn1.running_var" in str(err.value)
    assert "_blocks.99._depthwise_conv.weight" in str(err.value)
    np.testing.assert_array_equal(target.stem_conv.kernel.get_value(), before)  # nothing written

    misshaped = dict(state)
    misshaped["_conv_head.weight"] = np.zeros((1280, 321, 1, 1), np.float32)
    with pytest.raises(convert.WeightMismatchError, match=r"_conv_head\.weight"):
        convert.load_torch_state_dict(target, misshaped)

    convert.load_torch_state_dict(target, {f"module.{k}": v for k, v in state.items()})
    x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 32, 32, 3)), jnp.float32)
    np.testing.assert_allclose(_jit_apply(target, x), _jit_apply(source, x), atol=1e-5)


def _jit_apply(model, x):
    """One compiled forward pass (eager NNX dispatches op by op, slow for deep nets)."""
    graphdef, state = nnx.split(model)
    return jax.jit(lambda st, v: nnx.merge(graphdef, st)(v))(state, x)


# B2..B4 share B0/B1's name table (only widths and depths differ) and are covered by the
# parameter counts and `make parity`; leaving them out here saves a minute of eager init.
ROUND_TRIP = sorted(
    set(models.REGISTRY) - {"small_cnn", "efficientnet_b2", "efficientnet_b3", "efficientnet_b4"}
)


@pytest.mark.slow  # whole models, compiled
@pytest.mark.parametrize("name", ROUND_TRIP)
def test_every_zoo_model_round_trips_through_its_pytorch_layout(name):
    """Every variable is reached by exactly one PyTorch name and comes back unchanged."""
    source = nnx.eval_shape(lambda: models.build(name, 10, seed=1))
    layout = list(convert.entries(source, include_head=True))
    variables = [
        v for v in jax.tree.leaves(nnx.state(source), is_leaf=lambda x: isinstance(x, nnx.Variable))
    ]
    assert len({id(v) for _, v, _ in layout}) == len(layout) == len(variables)
    source = models.build(name, 10, seed=1)
    target = models.build(name, 10, seed=2)
    convert.load_torch_state_dict(target, weight_files.torch_layout(source))
    for a, b in zip(
        jax.tree.leaves(nnx.state(target)), jax.tree.leaves(nnx.state(source)), strict=True
    ):
        np.testing.assert_array_equal(a, b)


def test_rgb_weights_adapt_to_a_twelve_channel_stem():
    rgb = models.build("resnet18", 10, seed=1)
    bands = models.build("resnet18", 10, seed=2, in_channels=12)
    state = weight_files.torch_layout(rgb)
    convert.load_torch_state_dict(bands, state)
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
    # Four copies of the image through the adapted stem respond like the RGB stem to one.
    np.testing.assert_allclose(
        bands(jnp.asarray(np.tile(x, (1, 1, 1, 4)))), rgb(jnp.asarray(x)), atol=1e-4
    )


@pytest.mark.slow  # whole models, compiled
def test_convert_weights_writes_a_checkpoint_that_configs_can_name(tmp_path):
    source = models.build("mobilenet_v2", 1000, seed=3)
    pth = tmp_path / "mobilenet.pth"
    weight_files.write(pth, weight_files.torch_layout(source))
    out = convert.convert_weights(pth, "mobilenet_v2", tmp_path / "converted")
    detector = models.build("mobilenet_v2", 2, pretrained=str(out))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 32, 32, 3)), jnp.float32)
    np.testing.assert_allclose(detector.features(x), source.features(x), atol=1e-5)
    # A broken state dict writes nothing.
    broken = weight_files.torch_layout(source)
    del broken["features.3.conv.1.0.weight"]
    bad = tmp_path / "broken.pth"
    weight_files.write(bad, broken)
    with pytest.raises(convert.WeightMismatchError, match=r"features\.3\.conv\.1\.0\.weight"):
        convert.convert_weights(bad, "mobilenet_v2", tmp_path / "never")
    assert not (tmp_path / "never").exists()
    assert not (tmp_path / "never.partial").exists()


def test_zip_format_state_dict_is_read_without_torch(tmp_path):
    tensors = {
        "a.weight": np.arange(24, dtype=np.float32).reshape(2, 3, 4),
        "b.bias": np.array([1.5, -2.0], np.float32),
    }
    path = tmp_path / "tiny.pth"
    weight_files.write(path, tensors)
    loaded = torch_state.load_state_dict(path)
    assert set(loaded) == set(tensors)
    for name, array in tensors.items():
        np.testing.assert_array_equal(loaded[name], array)


def test_state_dict_reader_refuses_arbitrary_code(tmp_path):
    path = tmp_path / "evil.pth"

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"x": Evil()}, protocol=2))
    with pytest.raises(WeightFileError, match="refusing"):
        torch_state.load_state_dict(path)
