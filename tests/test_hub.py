"""Weights from the Hugging Face Hub, offline: a local cache laid out as huggingface_hub lays it
out (blobs named by their hash, snapshots/<commit>/<file> linking to them, refs/<branch> holding
the commit), filled by the test with safetensors files under timm's tensor names."""

import hashlib
import os
import pathlib

import jax
import ml_dtypes
import numpy as np
import pytest
import weight_files
from flax import nnx

from mkln_jax import models
from mkln_jax.models import convert, hub, safetensors_file

pytest.importorskip("huggingface_hub")

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def fill_cache(cache: pathlib.Path, repo: str, files: dict[str, bytes], commit=COMMIT, ref="main"):
    """One repository of a Hub cache, as `hf_hub_download` leaves it."""
    root = cache / ("models--" + repo.replace("/", "--"))
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    (root / "refs").mkdir(exist_ok=True)
    snapshot = root / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        digest = hashlib.sha256(data).hexdigest()
        (root / "blobs" / digest).write_bytes(data)
        os.symlink(f"../../blobs/{digest}", snapshot / name)
    (root / "refs" / ref).write_text(commit)


def safetensors_bytes(tmp_path, arrays) -> bytes:
    path = tmp_path / "w.safetensors"
    safetensors_file.save(path, arrays)
    data = path.read_bytes()
    path.unlink()
    return data


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def hub_scheme(model) -> str:
    """The naming scheme of timm's files on the Hub for this model."""
    return "timm" if "timm" in convert.SCHEMES[type(model)] else convert.default_scheme(model)


@pytest.mark.parametrize("name", sorted(n for n, s in models.REGISTRY.items() if s.hub))
def test_every_hub_name_maps_every_variable_once(name):
    """timm's names (the Hub's files) reach every variable of the zoo model exactly once."""
    model = nnx.eval_shape(lambda: models.build(name, 1000))
    layout = list(convert.entries(model, True, hub_scheme(model)))
    variables = jax.tree.leaves(nnx.state(model), is_leaf=lambda x: isinstance(x, nnx.Variable))
    assert len({n for n, _, _ in layout}) == len({id(v) for _, v, _ in layout}) == len(variables)
    assert convert.scheme_of(model, [n for n, _, _ in layout]) == hub_scheme(model)


@pytest.mark.slow  # whole models
@pytest.mark.parametrize("name", ["mobilenet_v2"])  # timm's own table (Lite0's: make parity)
def test_hub_weights_load_offline_from_a_filled_cache(name, tmp_path, offline_cache):
    source = models.build(name, 1000, seed=1)
    repo = models.spec(name).hub
    state = weight_files.torch_layout(source, hub_scheme(source))
    fill_cache(offline_cache, repo, {"model.safetensors": safetensors_bytes(tmp_path, state)})
    target = models.build(name, 2, seed=2, pretrained=f"hf-hub:{repo}")  # a 2-class detector
    ours = nnx.to_pure_dict(nnx.state(target))
    theirs = nnx.to_pure_dict(nnx.state(source))
    head = "classifier"
    for path, value in jax.tree_util.tree_flatten_with_path(theirs)[0]:
        if path[0].key == head:
            continue  # another number of classes: stays fresh
        mine = ours
        for p in path:
            mine = mine[p.key]
        np.testing.assert_array_equal(mine, value)


def test_bfloat16_files_and_pinned_revisions(tmp_path, offline_cache):
    source = models.build("mobilenet_v2", 1000, seed=1)
    state = weight_files.torch_layout(source, "timm", dtype=ml_dtypes.bfloat16)
    repo = "someone/mobilenet"
    other = "fedcba9876543210fedcba9876543210fedcba98"
    fill_cache(offline_cache, repo, {"model.safetensors": safetensors_bytes(tmp_path, state)})
    fill_cache(offline_cache, repo, {"model.safetensors": b"not read"}, commit=other, ref="v2")

    path = hub.resolve(f"hf-hub:{repo}@{COMMIT}")
    assert hub.commit_of(path) == COMMIT
    assert hub.resolve(f"hf-hub:{repo}") == path  # main -> COMMIT
    assert hub.commit_of(hub.resolve(f"hf-hub:{repo}@v2")) == other
    target = models.build("mobilenet_v2", 1000, seed=2, pretrained=f"hf-hub:{repo}@{COMMIT}")
    expected = np.asarray(state["conv_stem.weight"], np.float32).transpose(2, 3, 1, 0)
    np.testing.assert_array_equal(target.stem_conv.kernel.get_value(), expected)


def test_missing_weights_are_refused_in_one_line_naming_the_repository(offline_cache):
    with pytest.raises(hub.HubError) as err:
        models.build("efficientnet_b0", 2, pretrained="hf-hub:timm/efficientnet_b0.ra_in1k")
    message = str(err.value)
    assert "\n" not in message
    assert "timm/efficientnet_b0.ra_in1k" in message and "HF_HUB_OFFLINE" in message
    fill_cache(offline_cache, "a/b", {"model.safetensors": b"x"})
    with pytest.raises(hub.HubError, match="not in the Hub cache"):
        hub.resolve("hf-hub:a/b@" + "f" * 40)  # a revision the cache does not hold
    for bad in ("hf-hub:timm", "hf-hub:a/b@", "hf-hub:/x"):
        assert models.check_pretrained("efficientnet_b0", bad)
    assert models.check_pretrained("efficientnet_b0", "hf-hub:a/b@main") is None


def test_a_corrupt_hub_file_is_refused_naming_it(tmp_path, offline_cache):
    fill_cache(offline_cache, "a/broken", {"model.safetensors": b"\xff" * 16})
    with pytest.raises(Exception, match=r"model\.safetensors"):
        models.build("efficientnet_b0", 2, pretrained="hf-hub:a/broken")
