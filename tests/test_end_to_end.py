"""The whole path on the tiny config: prepare -> teacher -> student -> evaluate -> export ->
predict, through the `mkln` command line, plus the artifact's guarantees."""

import json
import pathlib
import shutil

import cli
import numpy as np
import pytest

pytestmark = pytest.mark.slow  # trains or runs `mkln` in subprocesses


def mkln(*args, **kwargs):
    """`mkln` on one CPU device, as `make demo` runs it (sharding has its own tests, in
    test_step.py and test_scale.py; eight fake devices made the demo run 1.4x slower)."""
    kwargs.setdefault("devices", 1)
    return cli.mkln(*args, **kwargs)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, cache_dir):
    workdir = tmp_path_factory.mktemp("run")
    result = mkln("demo", "--config=configs/tiny.py", f"--workdir={workdir}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return workdir, result.stdout


def test_demo_runs_every_stage_and_prints_the_results_table(demo_run):
    workdir, out = demo_run
    for marker in (
        "=== prepare ===",
        "[teacher] step",
        "[student] step",
        "frame AUC",
        "NOT seen in training",
        "verdict:",
        "=== wall times ===",
    ):
        assert marker in out
    results = json.loads((workdir / "eval" / "test.json").read_text())
    assert set(results) == {"teacher", "student"}
    metrics = results["student"]["metrics"]
    assert {"all", "seen methods", "self_blend", "upsampler", "face_swap"} <= set(metrics)
    assert 0.0 <= metrics["all"]["frame"]["auc"] <= 1.0
    rows = [json.loads(line) for line in (workdir / "student" / "logs" / "metrics.jsonl").open()]
    timed = [r for r in rows if "train/images_per_second" in r]
    assert timed and all(0.0 <= r["train/device_idle_share"] <= 1.0 for r in timed)
    assert list((workdir / "student" / "logs" / "tensorboard").glob("events.out.tfevents.*"))


def test_training_again_resumes_and_skips_finished_stages(demo_run):
    workdir, _ = demo_run
    result = mkln("train", "--config=configs/tiny.py", f"--workdir={workdir}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "[teacher] already trained" in result.stdout
    assert "[student] already trained" in result.stdout


def test_resuming_with_a_different_config_is_refused(demo_run):
    workdir, _ = demo_run
    result = mkln(
        "train", "--config=configs/tiny.py", f"--workdir={workdir}", "--config.distill.alpha=0.5"
    )
    assert result.returncode == 2
    assert "different config" in result.stderr and "distill.alpha" in result.stderr
    assert "Traceback" not in result.stderr


def test_exported_artifact_matches_the_training_code_path(demo_run):
    import jax

    from mkln_jax import config_lib, experiment, export, scoring, sharding
    from mkln_jax.configs import tiny
    from mkln_jax.input_pipeline import splits

    workdir, _ = demo_run
    config = tiny.get_config()
    artifact = export.Artifact(workdir / "export")
    source = splits.open_split(config.data, config_lib.data_dir(config), "test")
    mesh = sharding.make_mesh(1)
    model, frozen, _ = experiment.load_best(config, workdir, "student", mesh)
    margins = scoring.predict_margins(model, frozen, source, mesh, 16)
    # the artifact holds the calibrated model: logits divided by its temperature
    temperature = artifact.metadata["calibration"]["temperature"]
    expected = 1.0 / (1.0 + np.exp(-margins.astype(np.float64) / temperature))
    images = np.stack([source[i]["image"] for i in range(len(source))])
    for batch in (1, 5, len(images)):  # the batch dimension is symbolic
        np.testing.assert_allclose(artifact(images[:batch]), expected[:batch], atol=1e-5)
    assert artifact.metadata["model"] == config.student.model
    assert artifact.metadata["input_size"] == config.data.image_size
    assert jax.device_count() == 8
    # lowered for GPU and TPU hosts too, whatever machine exported it
    assert tuple(artifact.exported.platforms) == ("cpu", "cuda", "tpu")
    assert artifact.metadata["platforms"] == ["cpu", "cuda", "tpu"]
    assert (
        artifact.metadata["face_crop"]["detector"] == artifact.metadata["face_pipeline"]["detector"]
    )


def test_mutual_student_from_another_runs_teachers_trains_evaluates_and_exports(demo_run, tmp_path):
    """Two teachers taken from a finished run, a two-stream RGB peer and a frequency peer, 8x8
    block augmentation with every operation on, consistent teaching and a schedule."""
    source, _ = demo_run
    workdir = tmp_path / "mutual"
    overrides = [
        "--config.stages=('student',)",
        f"--config.distill.teachers=('run:{source}/teacher','run:{source}/student')",
        "--config.distill.teacher_weights=(2.0,1.0)",
        "--config.distill.teacher_input=view",
        "--config.distill.schedule=cosine",
        "--config.distill.temperature_end=2.0",
        "--config.mutual.enabled=True",
        "--config.mutual.deploy=ensemble",
        # A depthwise peer: trained through our CPU kernels, exported without them (portable).
        "--config.mutual.peer_model=mobilenet_v2",
        "--config.student.stream=two_stream",
        "--config.freq_aug.block=8",
        "--config.freq_aug.noise_prob=0.5",
        "--config.freq_aug.mix_prob=0.5",
        "--config.eval.deepfakebench_report=True",
    ]
    for action in ("train", "evaluate", "export"):
        result = mkln(
            action, "--config=configs/tiny.py", f"--workdir={workdir}", *overrides, devices=1
        )
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
        if action == "train":
            assert f"run:{source}/teacher, best step" in result.stdout
            assert "peer2_mutual" in result.stdout
    results = json.loads((workdir / "eval" / "test.json").read_text())
    assert set(results) == {"student"}
    dfb = results["student"]["deepfakebench_compatible_top3_test_auc"]
    assert dfb["evaluations"] == 2 and dfb["mean_top3"] == pytest.approx(np.mean(dfb["top3"]))
    assert "picked on the TEST set" in (workdir / "eval" / "test.md").read_text()
    # DeepfakeBench's definitions beside ours: the same AUC, its own EER and ACC
    theirs = results["student"]["deepfakebench_definitions"]["all"]
    ours = results["student"]["metrics"]["all"]["frame"]
    assert theirs["auc"] == pytest.approx(ours["auc"]) and 0 <= theirs["eer"] <= 1
    assert "DeepfakeBench's definitions" in (workdir / "eval" / "test.md").read_text()
    meta = json.loads((workdir / "export" / "metadata.json").read_text())
    assert "mutual, deploy ensemble" in meta["architecture"]
    assert "two_stream" in meta["architecture"]
    assert "mobilenet_v2" in meta["architecture"]


def test_robustness_report_with_plot_from_one_command(demo_run):
    workdir, _ = demo_run
    result = mkln(
        "evaluate", "--config=configs/tiny.py", f"--workdir={workdir}", "--protocol=robustness"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "[robustness] 36/36 contrast severity 5" in result.stdout  # progress with a count
    report = json.loads((workdir / "eval" / "robustness_test.json").read_text())
    assert set(report["curves"]) == {
        "gaussian_noise",
        "gaussian_blur",
        "jpeg",
        "downscale",
        "brightness",
        "contrast",
    }
    clean = {rows[0]["frame_auc"] for rows in report["curves"].values()}
    assert len(clean) == 1  # severity 0 is the same clean score for every perturbation
    standard = json.loads((workdir / "eval" / "test.json").read_text())["student"]["metrics"]
    assert clean.pop() == pytest.approx(standard["all"]["frame"]["auc"], abs=1e-6)
    assert (workdir / "eval" / "robustness_test.png").stat().st_size > 10_000
    lo, hi = standard["all"]["frame"]["auc_ci"]
    assert lo <= standard["all"]["frame"]["auc"] <= hi


def test_tampered_or_mismatched_artifacts_are_refused(demo_run, tmp_path):
    from mkln_jax import export

    workdir, _ = demo_run
    copy = tmp_path / "artifact"
    shutil.copytree(workdir / "export", copy)
    weights = copy / export.WEIGHTS
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(export.ArtifactError, match="checksum mismatch"):
        export.Artifact(copy)
    meta = json.loads((workdir / "export" / export.METADATA).read_text())
    meta["format_version"] = 99
    shutil.copy(workdir / "export" / export.WEIGHTS, weights)
    (copy / export.METADATA).write_text(json.dumps(meta))
    with pytest.raises(export.ArtifactError, match="format version 99"):
        export.Artifact(copy)


def test_predict_gives_one_line_reasons_for_unusable_inputs(demo_run, tmp_path):
    workdir, _ = demo_run
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    blank = tmp_path / "blank.png"
    import cv2

    cv2.imwrite(str(blank), np.full((64, 64, 3), 127, np.uint8))
    import dataset_trees

    faceless = dataset_trees.write_video(
        tmp_path / "faceless.mp4", [np.zeros((144, 256, 3), np.uint8)] * 6
    )
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(faceless.read_bytes()[:300])
    result = mkln(
        "predict",
        str(text),
        str(empty),
        str(blank),
        str(tmp_path / "missing.mp4"),
        str(faceless),
        str(truncated),
        f"--artifact={workdir / 'export'}",
        timeout=120,
    )
    assert result.returncode == 2  # nothing was scored
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("skipped:")]
    assert len(lines) == 6
    assert any("empty" in line for line in lines)
    assert sum("no face" in line for line in lines) == 2  # the blank image, the faceless video
    assert any("not found" in line for line in lines)
    assert any(
        "truncated.mp4: unreadable" in line or "truncated.mp4: no decodable" in line
        for line in lines
    )


def test_predict_a_folder_writes_scores_and_strips(demo_run, tmp_path, cache_dir):
    import csv

    import cv2
    import dataset_trees

    workdir, _ = demo_run
    frames = dataset_trees.face_frames(cache_dir)
    folder = tmp_path / "inputs"
    dataset_trees.write_video(folder / "a.mp4", dataset_trees.clip(frames, "a"))
    dataset_trees.write_video(folder / "sub" / "b.mp4", dataset_trees.clip(frames, "b"))
    (folder / "notes.txt").write_text("ignored: not a video or image")
    result = mkln(
        "predict",
        str(folder),
        f"--artifact={workdir / 'export'}",
        "--num_frames=4",
        f"--report={tmp_path / 'scores.csv'}",
        f"--strip={tmp_path / 'strips'}",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("verdict:") == 2 and "crops/s" in result.stdout
    rows = list(csv.DictReader(open(tmp_path / "scores.csv")))
    assert len(rows) == 8 and {pathlib.Path(r["path"]).name for r in rows} == {"a.mp4", "b.mp4"}
    assert all(0.0 <= float(r["p_fake"]) <= 1.0 for r in rows)
    assert sorted(p.name for p in (tmp_path / "strips").iterdir()) == [
        "a.mp4.strip.png",
        "sub__b.mp4.strip.png",
    ]
    assert "not taken: " in result.stderr and "notes.txt" in result.stderr
    strip = cv2.imread(str(tmp_path / "strips" / "a.mp4.strip.png"))
    assert strip is not None and strip.shape[1] > 4 * 100  # four frames side by side


# --- untrusted inputs, outputs that never destroy inputs (issue 24) --------------------------


def _copy_run(demo_run, tmp_path) -> pathlib.Path:
    workdir, _ = demo_run
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy, ignore=shutil.ignore_patterns(".mkln.lock"))
    return copy


def test_a_corrupt_newest_checkpoint_is_skipped_and_training_ends_as_if_uninterrupted(
    demo_run, tmp_path
):
    from checkpoint_files import flip_bit, largest_data_file, latest_params

    workdir, _ = demo_run
    copy = _copy_run(demo_run, tmp_path)
    latest = copy / "student" / "checkpoints" / "latest"
    newest = max(int(p.name) for p in latest.iterdir() if p.name.isdigit())
    flip_bit(largest_data_file(latest / str(newest)))
    result = mkln("train", "--config=configs/tiny.py", f"--workdir={copy}")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert f"[student] skipping checkpoint step {newest}: checkpoint" in result.stdout
    assert "[student] resumed from step" in result.stdout
    assert list((copy / "student" / "checkpoints" / "corrupt").iterdir())
    for a, b in zip(latest_params(copy, "student"), latest_params(workdir, "student"), strict=True):
        np.testing.assert_array_equal(a, b)


def test_export_refuses_a_corrupt_best_checkpoint_naming_its_step(demo_run, tmp_path):
    from checkpoint_files import flip_bit, largest_data_file

    copy = _copy_run(demo_run, tmp_path)
    (best,) = [p for p in (copy / "student" / "checkpoints" / "best").iterdir() if p.name.isdigit()]
    flip_bit(largest_data_file(best))
    result = mkln(
        "export", "--config=configs/tiny.py", f"--workdir={copy}", f"--artifact={tmp_path / 'a'}"
    )
    assert result.returncode == 2
    assert f"best/{best.name}" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "a" / "metadata.json").exists()
    # Without its integrity record the flipped bit would pass unseen: the step is unverified,
    # refused, and used only when asked, the artifact saying so.
    shutil.rmtree(best / "integrity")
    args = ["--config=configs/tiny.py", f"--workdir={copy}", f"--artifact={tmp_path / 'a'}"]
    refused = mkln("export", *args)
    assert refused.returncode == 2 and "has no integrity record" in refused.stderr
    assert not (tmp_path / "a" / "metadata.json").exists()
    allowed = mkln("export", *args, "--allow_unverified")
    assert allowed.returncode == 0, allowed.stderr[-2000:]
    assert f"warning: checkpoint {best} used unverified" in allowed.stdout
    metadata = json.loads((tmp_path / "a" / "metadata.json").read_text())
    assert metadata["checkpoint_verified"] is False


def test_read_only_commands_on_a_missing_workdir_create_nothing(tmp_path):
    for command in ("evaluate", "export"):
        result = mkln(command, "--config=configs/tiny.py", f"--workdir={tmp_path / 'none'}")
        assert result.returncode == 2 and "does not exist" in result.stderr
    assert not (tmp_path / "none").exists()


def test_a_second_train_on_a_held_workdir_is_refused_in_one_line(demo_run, tmp_path):
    import os
    import subprocess

    copy = _copy_run(demo_run, tmp_path)
    holder = subprocess.Popen(["sleep", "60"])
    try:
        lock = {"pid": holder.pid, "host": os.uname().nodename, "started": "now"}
        (copy / ".mkln.lock").write_text(json.dumps(lock))
        result = mkln("train", "--config=configs/tiny.py", f"--workdir={copy}")
    finally:
        holder.kill()
    assert result.returncode == 2
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("error:")]
    assert f"pid {holder.pid}" in line and "Traceback" not in result.stderr


def test_predict_refuses_an_output_that_is_an_input_before_scoring(demo_run, tmp_path, cache_dir):
    import dataset_trees

    workdir, _ = demo_run
    frames = dataset_trees.face_frames(cache_dir)
    clip = dataset_trees.write_video(tmp_path / "x.mp4", dataset_trees.clip(frames, "a"))
    before = clip.read_bytes()
    result = mkln("predict", str(clip), f"--artifact={workdir / 'export'}", f"--report={clip}")
    assert result.returncode == 2 and "is also an input" in result.stderr
    assert "verdict" not in result.stdout  # refused before any scoring
    assert clip.read_bytes() == before


def test_predict_names_strips_by_path_and_reports_partial_failure(demo_run, tmp_path, cache_dir):
    import os

    import cv2
    import dataset_trees

    workdir, _ = demo_run
    frames = dataset_trees.face_frames(cache_dir)
    video = dataset_trees.write_video(tmp_path / "a" / "x.mp4", dataset_trees.clip(frames, "a"))
    image = tmp_path / "b" / "x.png"
    image.parent.mkdir()
    cv2.imwrite(str(image), cv2.cvtColor(frames[0], cv2.COLOR_RGB2BGR))
    fifo = tmp_path / "pipe.mp4"
    os.mkfifo(fifo)
    result = mkln(
        "predict",
        str(video),
        str(image),
        str(fifo),
        f"--artifact={workdir / 'export'}",
        f"--strip={tmp_path / 'strips'}",
        f"--report={tmp_path / 'scores.json'}",
        "--num_frames=4",
        timeout=120,  # a FIFO that is opened would hang here
    )
    assert result.returncode == 1, result.stderr  # one of three skipped
    assert "skipped: " in result.stderr and "is a FIFO" in result.stderr
    assert sorted(p.name for p in (tmp_path / "strips").iterdir()) == [
        "a__x.mp4.strip.png",
        "b__x.png.strip.png",
    ]
    report = json.loads((tmp_path / "scores.json").read_text())
    assert len(report) == 2


def test_export_calibrates_on_validation_and_reports_calibration(demo_run):
    workdir, _ = demo_run
    meta = json.loads((workdir / "export" / "metadata.json").read_text())
    calibration = meta["calibration"]
    assert calibration["threshold_rule"] == "eer" and calibration["fitted_on"] == "val"
    assert meta["threshold"] == calibration["threshold"] and 0 < meta["threshold"] < 1
    assert calibration["temperature"] > 0
    # the temperature minimises validation log loss, and T = 1 was among its candidates
    assert calibration["val_calibrated"]["log_loss"] <= calibration["val_raw"]["log_loss"] + 1e-6
    report = json.loads((workdir / "eval" / "test.json").read_text())["student"]["calibration"]
    assert set(report) >= {"temperature", "raw", "calibrated"}
    assert report["temperature"] == pytest.approx(calibration["temperature"])
    assert (workdir / "eval" / "reliability_test_student.png").stat().st_size > 1000


def test_video_aggregation_choices_in_evaluate_and_predict(demo_run, tmp_path, cache_dir):
    import io

    import cv2
    import dataset_trees

    from mkln_jax import predict

    workdir, _ = demo_run
    report = json.loads((workdir / "eval" / "test.json").read_text())["student"]
    by_rule = report["video_auc_by_aggregation"]
    assert set(by_rule) == {"mean", "max", "confident"}
    assert by_rule["mean"]["all"] == pytest.approx(report["metrics"]["all"]["video"]["auc"])
    video = tmp_path / "a.mp4"
    dataset_trees.write_video(video, dataset_trees.clip(dataset_trees.face_frames(cache_dir), "a"))
    artifact = f"--artifact={workdir / 'export'}"
    out = tmp_path / "max.json"
    strips = tmp_path / "strips"
    args = ["--aggregate=max", f"--report={out}", "--explain", f"--strip={strips}"]
    result = mkln("predict", str(video), artifact, "--num_frames=3", *args)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "max P(fake)" in result.stdout
    row = json.loads(out.read_text())[0]
    frames = [r["p_fake"] for r in row["frames"] if r["p_fake"] is not None]
    assert row["p_fake"] == pytest.approx(max(frames))
    # --explain adds a row of saliency maps under the frames (header 26 + two rows of 160 px)
    strip = cv2.imread(str(next(strips.glob("*.png"))))
    assert strip.shape[0] == 26 + 2 * 160
    err = io.StringIO()
    refused = predict.run([str(video)], str(workdir / "export"), err=err, explain=True)
    assert refused == 2 and "add --strip" in err.getvalue()


def test_saliency_maps_follow_the_weights(demo_run):
    from mkln_jax import export

    workdir, _ = demo_run
    artifact = export.Artifact(workdir / "export")
    size = artifact.input_size
    crops = np.random.default_rng(0).integers(0, 256, (3, size, size, 3), dtype=np.uint8)
    maps = artifact.explain(crops)
    assert maps.shape == (3, size, size) and np.isfinite(maps).all()
    assert maps.min() >= 0 and np.allclose(maps.max(axis=(1, 2)), 1.0)
    rng = np.random.default_rng(1)
    artifact.weights = {
        k: v + 0.1 * rng.normal(size=v.shape).astype(v.dtype) if v.dtype.kind == "f" else v
        for k, v in artifact.weights.items()
    }
    assert not np.allclose(artifact.explain(crops), maps, atol=1e-3)


def test_predict_explains_an_empty_folder(demo_run, tmp_path):
    workdir, _ = demo_run
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no media here")
    result = mkln("predict", str(tmp_path / "empty"), f"--artifact={workdir / 'export'}")
    assert result.returncode == 2
    assert "no videos or images found" in result.stderr and "readme.txt" in result.stderr


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"threshold": 1.01}, "threshold must be"),
        ({"input_size": -3}, "input_size must be"),
        ({"calibration": {"temperature": -1.0}}, "temperature must be"),
        ({"calibration": "hot"}, "temperature must be"),
        ({"sha256": {"../../etc/passwd": "0", "model.jaxexport": "0"}}, "checksums for"),
    ],
)
def test_artifact_metadata_is_validated(demo_run, tmp_path, change, match):
    from mkln_jax import export

    workdir, _ = demo_run
    copy = tmp_path / "artifact"
    shutil.copytree(workdir / "export", copy)
    meta = json.loads((copy / export.METADATA).read_text())
    meta.update(change)
    (copy / export.METADATA).write_text(json.dumps(meta))
    with pytest.raises(export.ArtifactError, match=match):
        export.Artifact(copy)


def test_weights_alone_evaluate_and_teach(demo_run, tmp_path):
    """A detector from a weight file (no run of ours): `eval.weights` scores it, and a
    `weights:` teacher distils it into a student."""
    import weight_files

    from mkln_jax import models
    from mkln_jax.models import safetensors_file

    source = models.construct("resnet18", 2, seed=7)
    path = tmp_path / "resnet18_detector.safetensors"
    safetensors_file.save(path, weight_files.torch_layout(source))
    spec = f"weights:resnet18:{path}"
    out = tmp_path / "scored"
    result = mkln(
        "evaluate", "--config=configs/tiny.py", f"--workdir={out}", f"--config.eval.weights={spec}"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "eval" / "test.json").read_text())
    assert set(report) == {"weights"} and str(path) in report["weights"]["model"]
    assert "seen methods" not in report["weights"]["metrics"]  # unknown training data
    assert "weights as given" in result.stdout
    missing = mkln(
        "evaluate",
        "--config=configs/tiny.py",
        f"--workdir={out}",
        f"--config.eval.weights=weights:resnet18:{tmp_path / 'none.pth'}",
    )
    assert missing.returncode != 0 and "none.pth not found" in missing.stderr

    # the same file as a `weights:` teacher (what `train` loads, without a training run)
    import jax
    from flax import nnx

    from mkln_jax import experiment
    from mkln_jax.configs import tiny

    config = tiny.get_config()
    config.distill.teachers = (spec,)
    _, frozen, described = experiment.load_teachers(config, tmp_path, experiment.make_mesh(config))
    assert described == [f"resnet18 weights from {path}"]
    ours = jax.tree.leaves(jax.device_get(frozen[0].params))
    theirs = jax.tree.leaves(nnx.state(source, nnx.Param))
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_array_equal(a, b)


def test_evaluation_without_a_validation_split_skips_calibration_in_one_line(tmp_path, capsys):
    from mkln_jax import evaluate
    from mkln_jax.configs import tiny

    config = tiny.get_config()
    config.data.data_dir = str(tmp_path / "nothing prepared here")
    assert evaluate._calibration(config, tmp_path, "student", None, None, None, "test") is None
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("[evaluate] student: no calibration (")
