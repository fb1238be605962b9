"""Numerical parity with the published PyTorch definitions (timm / torchvision).

The reference runs in a separate Python that has torch (torch wheels here exist for Python 3.11
only, and this project may run on 3.12): it writes state dicts, inputs and logits to files; we
read the state dicts with our torch-free reader, convert, and compare logits. Skipped, with the
reason, unless MKLN_TORCH_PYTHON names that Python (`make parity` sets it up).
"""

import os
import pathlib
import subprocess

import jax
import numpy as np
import pytest
from flax import nnx

from mkln_jax import models
from mkln_jax.models import convert, state_dicts

TORCH_PYTHON = os.environ.get("MKLN_TORCH_PYTHON", "")
SCRIPT = pathlib.Path(__file__).parent / "torch_reference" / "make_reference.py"
NAMES = [
    "resnet18",
    "resnet34",
    "resnet50",
    "mobilenet_v2",
    "efficientnet_b0",
    "efficientnet_b1",
    "efficientnet_b2",
    "efficientnet_b3",
    "efficientnet_b4",
    "xception",
    "timm_mobilenetv2_100",
    "timm_tf_efficientnet_lite0",
    "timm_resnet50",
]
ZOO_MODEL = {  # timm's names for zoo models whose reference is another library
    "timm_mobilenetv2_100": "mobilenet_v2",
    "timm_tf_efficientnet_lite0": "efficientnet_lite0",
    "timm_resnet50": "resnet50",
}

pytestmark = pytest.mark.skipif(
    not TORCH_PYTHON,
    reason="PyTorch parity needs MKLN_TORCH_PYTHON (a Python with torch, torchvision, timm); "
    "run `make parity`",
)


@pytest.fixture(scope="module")
def reference_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("torch_reference")
    subprocess.run([TORCH_PYTHON, str(SCRIPT), str(out)], check=True, timeout=900)
    return out


@pytest.mark.parametrize("name", NAMES)
def test_logits_match_the_pytorch_reference(name, reference_dir):
    path = next(p for p in reference_dir.glob(f"{name}.*") if p.suffix in (".pth", ".safetensors"))
    state_dict = state_dicts.read(path)
    images = np.load(reference_dir / f"{name}_input.npy")
    expected = np.load(reference_dir / f"{name}_logits.npy")
    model = models.build(ZOO_MODEL.get(name, name), 1000)
    convert.load_torch_state_dict(model, state_dict, str(path))
    graphdef, state = nnx.split(model)
    logits = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))(state, images)
    # float32 on both sides; the tolerance is relative to the logits' scale (random deep nets
    # can produce logits far from 1).
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(np.asarray(logits), expected, rtol=1e-4, atol=1e-4 * scale)
