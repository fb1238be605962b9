"""TensorFlow SavedModel export (the `savedmodel` extra) agrees with the JAX artifact it is made
from, keeps the artifact's platforms, and is written whole or not at all. Runs where TensorFlow
is installed (`make extras`)."""

import json

import numpy as np
import pytest
from cli import mkln

pytestmark = pytest.mark.slow  # trains, and runs `mkln` in a subprocess

pytest.importorskip("tensorflow", reason="TensorFlow is not installed (run `make extras`)")


@pytest.fixture(scope="module")
def run(tmp_path_factory, cache_dir):
    workdir = tmp_path_factory.mktemp("savedmodel_run")
    for action in ("prepare", "train"):
        result = mkln(action, "--config=configs/tiny.py", f"--workdir={workdir}")
        assert result.returncode == 0, result.stderr[-3000:]
    return workdir


def test_export_savedmodel_from_the_command_line_matches_the_artifact(run):
    from mkln_jax import export, savedmodel_export

    result = mkln("export", "--config=configs/tiny.py", f"--workdir={run}", "--savedmodel")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "max |TensorFlow - JAX artifact|" in result.stdout
    artifact_dir = run / "export"
    meta = json.loads((artifact_dir / "metadata.json").read_text())["savedmodel"]
    assert set(meta["platforms"]) == {"cpu", "cuda", "tpu"}
    assert (artifact_dir / "saved_model" / "saved_model.pb").exists()
    assert "saved_model.pb" in meta["sha256"]
    # any batch size, uint8 crops in, P(fake) out, as the artifact gives it
    artifact = export.Artifact(artifact_dir)
    size = artifact.input_size
    for batch in (1, 5):
        images = np.random.default_rng(batch).integers(0, 256, (batch, size, size, 3), np.uint8)
        ours = savedmodel_export.run_savedmodel(artifact_dir / "saved_model", images)
        assert ours.shape == (batch,)
        np.testing.assert_allclose(ours, artifact(images), atol=1e-5)
    # the artifact itself is untouched by the SavedModel's presence
    assert export.Artifact(artifact_dir).metadata["sha256"] == artifact.metadata["sha256"]


def test_a_failed_savedmodel_export_leaves_no_partial_folder_and_the_metadata_as_it_was(
    run, tmp_path, monkeypatch
):
    import shutil

    import tensorflow as tf

    from mkln_jax import savedmodel_export

    copy = tmp_path / "artifact"
    shutil.copytree(run / "export", copy)
    shutil.rmtree(copy / "saved_model", ignore_errors=True)
    before = (copy / "metadata.json").read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(tf.saved_model, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        savedmodel_export.export_savedmodel(copy)
    assert not (copy / "saved_model").exists()
    assert not [p for p in copy.iterdir() if p.name.startswith(".saved_model")]
    assert (copy / "metadata.json").read_bytes() == before
