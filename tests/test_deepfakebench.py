"""DeepfakeBench's detector checkpoints, made in the test under its key names (its
XceptionDetector and F3netDetector state dicts), load as our detectors with the same logits."""

import jax
import numpy as np
import pytest
import weight_files
from flax import nnx

from mkln_jax import frequency, models
from mkln_jax.models import convert, deepfakebench, detectors

SIZE = 80  # Xception's unpadded entry convolutions need >= 71 pixels


def deepfakebench_layout(backbone, dropout: bool) -> dict[str, np.ndarray]:
    """How DeepfakeBench saves a detector: everything under `backbone.`, the head
    `last_linear` (a Sequential(Dropout, Linear) with dropout), and the unused adjust_channel."""
    out = {}
    for name, value in weight_files.torch_layout(backbone).items():
        if name.startswith("fc."):
            name = ("last_linear.1." if dropout else "last_linear.") + name[3:]
        out[f"backbone.{name}"] = value
    rng = np.random.default_rng(0)
    out["backbone.adjust_channel.0.weight"] = rng.normal(size=(512, 2048, 1, 1)).astype("f4")
    out["backbone.adjust_channel.1.running_mean"] = np.zeros(512, np.float32)
    return out


def logits(model, x):
    graphdef, state = nnx.split(model)
    return np.asarray(jax.jit(lambda s, v: nnx.merge(graphdef, s)(v))(state, x))


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(1).normal(size=(2, SIZE, SIZE, 3)).astype(np.float32)


@pytest.mark.slow  # whole Xceptions
def test_xception_checkpoint_gives_the_same_logits(tmp_path, images):
    source = models.construct("xception", 2, seed=3)
    path = tmp_path / "xception_best.pth"
    weight_files.write(
        path, {f"module.{k}": v for k, v in deepfakebench_layout(source, True).items()}
    )
    model, description = models.load_detector("xception", str(path), image_size=SIZE)
    assert "DeepfakeBench xception" in description
    np.testing.assert_allclose(logits(model, images), logits(source, images), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_f3net_checkpoint_gives_the_same_logits_with_its_own_band_masks(tmp_path, images):
    backbone = models.construct("xception", 2, seed=4, in_channels=12)
    source = detectors.FrequencyStream(
        backbone, SIZE, dtype=np.float32, bands="deepfakebench", rngs=nnx.Rngs(5)
    )
    state = deepfakebench_layout(backbone, dropout=True)
    filters = np.asarray(source.fad.filters.get_value())
    masks = frequency.fad_masks(SIZE, "deepfakebench")
    dct = frequency.dct_matrix(SIZE).astype(np.float32)
    state["FAD_head._DCT_all"], state["FAD_head._DCT_all_T"] = dct, np.ascontiguousarray(dct.T)
    for k in range(4):
        state[f"FAD_head.filters.{k}.base"] = masks[k]
        state[f"FAD_head.filters.{k}.learnable"] = filters[k]
    path = tmp_path / "f3net_best.pth"
    weight_files.write(path, state)

    model, description = models.load_detector("xception", str(path), image_size=SIZE)
    assert isinstance(model, detectors.FrequencyStream) and "f3net" in description
    expected = logits(source, images)
    np.testing.assert_allclose(logits(model, images), expected, rtol=1e-5, atol=1e-5)
    # the band masks matter: ours would give other logits from the same weights
    model.fad.bands = "ours"
    assert not np.allclose(logits(model, images), expected, atol=1e-5)

    with pytest.raises(convert.WeightMismatchError, match=r"data\.image_size=80"):
        models.load_detector("xception", str(path), image_size=96)
    state["FAD_head.filters.1.base"] = frequency.fad_masks(SIZE)[1]
    weight_files.write(tmp_path / "other.pth", state)
    with pytest.raises(convert.WeightMismatchError, match="not DeepfakeBench's"):
        models.load_detector("xception", str(tmp_path / "other.pth"), image_size=SIZE)


def test_unmapped_detectors_are_refused_saying_why(tmp_path):
    b4 = {
        "backbone.efficientnet._conv_stem.weight": np.zeros((48, 3, 3, 3), np.float32),
        "backbone.last_layer.weight": np.zeros((2, 1792), np.float32),
    }
    assert deepfakebench.kind_of(b4) == "efficientnetb4"
    with pytest.raises(convert.WeightMismatchError, match="does not map") as err:
        deepfakebench.convert(b4, "effnb4_best.pth")
    assert "effnb4_best.pth" in str(err.value) and "\n" not in str(err.value)
    adjust = {
        "backbone.block1.rep.0.conv1.weight": np.zeros((1,), np.float32),
        "backbone.last_linear.weight": np.zeros((2, 512), np.float32),
    }
    with pytest.raises(convert.WeightMismatchError, match="only mode 'original' maps"):
        deepfakebench.convert(adjust, "x.pth")
    assert deepfakebench.kind_of({"conv1.weight": 0}) == ""  # a plain state dict: not theirs


def test_a_deepfakebench_checkpoint_named_with_another_backbone_is_refused(tmp_path):
    state = {
        "backbone.block1.rep.0.conv1.weight": np.zeros((1,), np.float32),
        "backbone.last_linear.weight": np.zeros((2, 2048), np.float32),
    }
    path = tmp_path / "xception_best.pth"
    weight_files.write(path, state)
    with pytest.raises(convert.WeightMismatchError, match="weights:xception:"):
        models.load_detector("resnet18", str(path), image_size=SIZE)
