"""`mkln predict` crops faces as `prepare` did for the model's training data: the same
detector, landmarks, alignment, margin and size, recorded in the artifact (issue: inference
that matches training)."""

import types

import cv2
import dataset_trees
import numpy as np
import pytest

from mkln_jax import predict
from mkln_jax.input_pipeline import video
from mkln_jax.input_pipeline.build import catalog, preprocess

PIPELINES = {
    "haar": {"detector": "haar", "shape_predictor": "", "align": True},
    "dlib+landmarks": {"detector": "dlib", "shape_predictor": "dlib68", "align": True},
}


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_predict_crops_equal_the_prepared_ones(name, tmp_path, cache_dir):
    recorded = PIPELINES[name]
    if recorded["detector"] == "dlib":
        pytest.importorskip("dlib", reason="the dlib pipeline needs the faces extra (make extras)")
    path = tmp_path / "a.mp4"
    dataset_trees.write_video(path, dataset_trees.clip(dataset_trees.face_frames(cache_dir), "a"))
    settings = preprocess.Settings(
        num_frames=5,
        crop_size=64,
        margin=1.3,
        detector=recorded["detector"],
        shape_predictor=recorded["shape_predictor"],
    )
    entry = catalog.Entry("folder", "test", 0, "real", "real/a", str(path))
    prepared = preprocess.process_entry(entry, settings)
    assert prepared.status == "ok", prepared.reason
    stored = [
        cv2.cvtColor(cv2.imdecode(np.frombuffer(c, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        for c in prepared.crops
    ]
    if recorded["detector"] == "dlib":
        assert any(m is not None for m in prepared.landmarks)  # aligned on landmarks

    artifact = types.SimpleNamespace(
        input_size=64,
        metadata={"num_frames": 5, "face_pipeline": {**recorded, "margin": 1.3}},
    )
    clip = video.read_sampled(path, 5)
    crops, kept, _, _ = predict.face_crops(
        clip.frames, clip.indices, *predict.face_pipeline(artifact)
    )
    assert kept == prepared.frame_indices
    for ours, theirs in zip(crops, stored, strict=True):
        assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= 1


def test_a_pipeline_that_needs_a_missing_extra_is_refused(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_dlib(name, *args, **kwargs):
        if name == "dlib":
            raise ImportError("No module named 'dlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_dlib)
    monkeypatch.setattr(predict, "_PIPELINES", {})
    artifact = types.SimpleNamespace(
        input_size=64,
        metadata={"num_frames": 5, "face_pipeline": {**PIPELINES["dlib+landmarks"], "margin": 1.3}},
    )
    with pytest.raises(predict.PredictError) as err:
        predict.face_pipeline(artifact)
    assert "faces` extra" in str(err.value) and "\n" not in str(err.value)
