"""ONNX export (the `onnx` extra) agrees with the JAX artifact to 1e-4 under onnxruntime, for a
two-stream student (FAD layer) and an EfficientNet-Lite0 teacher (shifted depthwise
convolutions). Runs where jax2onnx and onnxruntime are installed (`make extras`)."""

import numpy as np
import pytest
from cli import mkln

pytestmark = pytest.mark.slow  # trains or runs `mkln` in subprocesses

pytest.importorskip("jax2onnx", reason="jax2onnx is not installed (run `make extras`)")
pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (run `make extras`)")

OVERRIDES = ["--config.student.stream=two_stream"]


@pytest.fixture(scope="module")
def run(tmp_path_factory, cache_dir):
    workdir = tmp_path_factory.mktemp("onnx_run")
    for action in ("prepare", "train"):
        result = mkln(action, "--config=configs/tiny.py", f"--workdir={workdir}", *OVERRIDES)
        assert result.returncode == 0, result.stderr[-3000:]
    return workdir


def test_export_onnx_from_the_command_line_matches_the_artifact(run):
    result = mkln("export", "--config=configs/tiny.py", f"--workdir={run}", "--onnx", *OVERRIDES)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "max |onnxruntime - JAX artifact|" in result.stdout
    assert (run / "export" / "model.onnx").exists()


def test_onnx_of_an_efficientnet_teacher_matches_jax(run, tmp_path):
    from mkln_jax import export, onnx_export
    from mkln_jax.configs import tiny

    config = tiny.get_config()
    out = tmp_path / "teacher"
    export.export_stage(config, str(run), str(out), stage="teacher")
    onnx_export.export_onnx(config, str(run), str(out), stage="teacher")
    images = np.random.default_rng(1).integers(0, 256, (7, 32, 32, 3), dtype=np.uint8)
    assert onnx_export.verify(out, images) < 1e-4
    assert export.Artifact(out).metadata["onnx"]["file"] == "model.onnx"
