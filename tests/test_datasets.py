"""Real-dataset builders on miniature trees in the official layouts: counts, labels, splits and
video ids exactly; bad files skipped and counted; resumable preprocessing; the loader's
augmentations and Self-Blended Images."""

import dataclasses
import hashlib
import json
import os
import pathlib
import re
import shutil

import cv2
import dataset_trees as trees
import numpy as np
import pytest
from cli import mkln

from mkln_jax.input_pipeline import faces, loader
from mkln_jax.input_pipeline.build import catalog, preprocess
from mkln_jax.input_pipeline.build.datasets import forgery

SETTINGS = preprocess.Settings(num_frames=3, crop_size=48)


@pytest.fixture(scope="module")
def frames(cache_dir):
    return trees.face_frames(cache_dir)


@pytest.fixture(scope="module")
def ffpp_root(tmp_path_factory, frames):
    root = trees.ffpp_tree(tmp_path_factory.mktemp("ffpp"), frames)
    # A fourth pair in train made of bad files: truncated, empty, not a video, no face.
    pairs = [*json.loads((root / "train.json").read_text()), ["007", "008"]]
    (root / "train.json").write_text(json.dumps(pairs))
    reals = root / "original_sequences" / "youtube" / "c23" / "videos"
    good = (reals / "000.mp4").read_bytes()
    (reals / "007.mp4").write_bytes(good[: len(good) // 20])  # truncated
    (reals / "008.mp4").write_bytes(b"")  # empty
    for method in trees.FFPP_METHODS:
        fakes = root / "manipulated_sequences" / method / "c23" / "videos"
        (fakes / "007_008.mp4").write_text("this is not a video")
        trees.write_video(fakes / "008_007.mp4", [np.zeros_like(frames[0])] * trees.FRAMES)
    return root


def _build(builder_cls, source, tmp_path, workers=1, settings=SETTINGS, **kwargs):
    builder = builder_cls(
        source=source,
        settings=settings,
        workers=workers,
        progress=False,
        data_dir=str(tmp_path / "tfds"),
        file_format="array_record",
        **kwargs,
    )
    builder.download_and_prepare()
    return builder


def _records(builder, split):
    source = builder.as_data_source(split=split)
    return [source[i] for i in range(len(source))]


def _text(value):
    return value.decode() if isinstance(value, bytes) else str(value)


def test_ffpp_catalog_follows_the_official_splits(ffpp_root):
    entries = catalog.ffpp(ffpp_root, "c23", trees.FFPP_METHODS)
    ids = {e.split: set() for e in entries}
    for e in entries:
        ids[e.split].add(e.video_id)
    assert ids["val"] == {
        "real/002",
        "real/003",
        "Deepfakes/002_003",
        "Deepfakes/003_002",
        "FaceSwap/002_003",
        "FaceSwap/003_002",
    }
    assert "real/006" not in set().union(*ids.values())  # in no split file
    assert len(ids["train"]) == 12 and len(ids["test"]) == 6
    masked = {e.video_id for e in entries if e.mask}
    assert masked == {e.video_id for e in entries if e.method == "Deepfakes"} - {
        "Deepfakes/007_008",
        "Deepfakes/008_007",
    }
    assert all(e.label == (e.method != "real") for e in entries)


def test_ffpp_accepts_c0_for_raw_and_names_missing_pieces(ffpp_root, tmp_path):
    root = tmp_path / "ff"
    shutil.copytree(ffpp_root, root)
    for parent in [root / "original_sequences" / "youtube"] + [
        root / "manipulated_sequences" / m for m in trees.FFPP_METHODS
    ]:
        (parent / "c23").rename(parent / "c0")
    assert len(catalog.ffpp(root, "raw", trees.FFPP_METHODS)) == 24
    (root / "val.json").unlink()
    with pytest.raises(catalog.LayoutError, match=r"val\.json not found"):
        catalog.ffpp(root, "raw", trees.FFPP_METHODS)
    with pytest.raises(catalog.LayoutError, match="c40"):
        catalog.ffpp(ffpp_root, "c40", trees.FFPP_METHODS)


def test_ffpp_builder_counts_labels_masks_and_skips_bad_files(ffpp_root, tmp_path):
    source = forgery.Source("ffpp", str(ffpp_root), methods=trees.FFPP_METHODS)
    builder = _build(forgery.Ffpp, source, tmp_path, workers=2)
    report = builder.report
    assert report.videos_total == 24 and report.videos_done == 18
    skipped = {
        reason: sorted(pathlib.Path(p).name for p in paths)
        for reason, paths in report.skipped.items()
    }
    assert skipped == {
        "empty file": ["008.mp4"],
        "unreadable": ["007.mp4", "007_008.mp4", "007_008.mp4"],
        "no face": ["008_007.mp4", "008_007.mp4"],
    }
    lines = "\n".join(report.lines())
    assert "skipped (no face): 2" in lines and "faces per sampled frame" in lines
    for split in catalog.SPLITS:
        records = _records(builder, split)
        assert len(records) == 6 * SETTINGS.num_frames  # 2 reals + 2 fakes x 2 methods
        for r in records:
            method, video_id = _text(r["method"]), _text(r["video_id"])
            assert video_id.startswith(f"{method}/")
            assert int(r["label"]) == (method != "real")
            assert r["image"].shape == (48, 48, 3)
            assert bool(r["has_mask"]) == (method == "Deepfakes")
            if method == "Deepfakes":
                assert r["mask"].max() > 0
            assert _text(r["compression"]) == "c23"
    train_ids = {_text(r["video_id"]) for r in _records(builder, "train")}
    assert train_ids == {
        "real/000",
        "real/001",
        "Deepfakes/000_001",
        "Deepfakes/001_000",
        "FaceSwap/000_001",
        "FaceSwap/001_000",
    }


def test_preprocessing_resumes_without_redoing_finished_videos(ffpp_root, tmp_path):
    entries = catalog.ffpp(ffpp_root, "c23", ("Deepfakes",))[:4]
    first, report = preprocess.run(entries, SETTINGS, tmp_path / "work", workers=1, progress=False)
    assert report.videos_resumed == 0
    stamp = {p: p.stat().st_mtime_ns for p in (tmp_path / "work").rglob("*.npz")}
    assert len(stamp) == 4
    again, report = preprocess.run(entries, SETTINGS, tmp_path / "work", workers=1, progress=False)
    assert report.videos_resumed == 4
    assert {p: p.stat().st_mtime_ns for p in stamp} == stamp  # nothing rewritten
    for video_id, result in first.items():
        assert again[video_id].crops == result.crops
        assert again[video_id].frame_indices == result.frame_indices


@pytest.mark.parametrize("nested", [False, True])
def test_celebdf_uses_the_test_list_and_folders_for_labels(tmp_path, frames, nested):
    root = trees.celebdf_tree(tmp_path / "celeb", frames, nested=nested)
    entries = catalog.celebdf(root, "v2")
    test = {e.video_id for e in entries if e.split == "test"}
    assert test == {
        "real/Celeb-real/id0_0000",
        "real/YouTube-real/00000",
        "Celeb-synthesis/id0_id1_0000",
    }
    assert len(entries) == 11
    by_id = {e.video_id: e for e in entries}
    assert by_id["Celeb-synthesis/id2_id10_0000"].label == 1
    assert by_id["real/YouTube-real/00001"].label == 0
    # Validation is held out by identity: no identity in both train and val.
    train = {e.identity for e in entries if e.split == "train"}
    val = {e.identity for e in entries if e.split == "val"}
    assert not train & val


def test_celebdf_label_clash_in_the_test_list_fails_loudly(tmp_path, frames):
    root = trees.celebdf_tree(tmp_path / "celeb", frames)
    listing = root / catalog.CELEBDF_TEST_LIST
    listing.write_text(listing.read_text().replace("1 YouTube-real", "0 YouTube-real"))
    with pytest.raises(catalog.LayoutError, match=r":2: 'YouTube-real/00000.mp4' is listed as '0'"):
        catalog.celebdf(root, "v2")


def test_celebdf_builder_writes_every_split(tmp_path, frames):
    root = trees.celebdf_tree(tmp_path / "celeb", frames)
    source = forgery.Source("celebdf", str(root), version="v2")
    builder = _build(forgery.CelebDf, source, tmp_path)
    counts = {s: len(_records(builder, s)) for s in catalog.SPLITS}
    entries = catalog.celebdf(root, "v2")
    for split in catalog.SPLITS:
        videos = sum(e.split == split for e in entries)
        assert counts[split] == videos * SETTINGS.num_frames


def test_a_celebdf_download_of_only_the_test_list_prepares_its_test_split(
    tmp_path, frames, monkeypatch
):
    import ml_collections

    from mkln_jax.input_pipeline import splits

    root = trees.celebdf_tree(tmp_path / "celeb", frames)
    test_list = (root / "List_of_testing_videos.txt").read_text().splitlines()
    listed = {line.split()[1] for line in test_list if line}
    for video in root.rglob("*.mp4"):  # keep only what the FF++ -> Celeb-DF protocol needs
        if str(video.relative_to(root)) not in listed:
            video.unlink()
    source = forgery.Source("celebdf", str(root), version="v2")
    builder = _build(forgery.CelebDf, source, tmp_path)
    assert builder.empty_splits == ["train", "val"]
    assert sorted(builder.info.splits) == ["test"]
    assert len(_records(builder, "test")) == 3 * SETTINGS.num_frames
    # Training and evaluation open splits by name: the missing one is refused in one line.
    folder = pathlib.Path(builder.data_dir)  # <data_dir>/<builder>/<config>/<version>
    monkeypatch.setattr(splits, "dataset_name", lambda _: f"{folder.parts[-3]}/{folder.parts[-2]}")
    data = ml_collections.ConfigDict({"name": "celebdf"})
    assert len(splits.open_split(data, folder.parents[2], "test")) == 3 * SETTINGS.num_frames
    with pytest.raises(splits.MissingSplitError, match=r"no 'train' split.*written: test\)"):
        splits.open_split(data, folder.parents[2], "train")


def test_folder_of_videos_and_images(tmp_path, frames):
    root = tmp_path / "mine"
    trees.write_video(root / "real" / "a.mp4", trees.clip(frames, "a"))
    trees.write_video(root / "fake" / "swap" / "b.mp4", trees.clip(frames, "b", fake=True))
    (root / "fake" / "swap" / "c").mkdir(parents=True)
    for i, frame in enumerate(trees.clip(frames, "c", fake=True)):
        cv2.imwrite(str(root / "fake" / "swap" / "c" / f"{i:03d}.png"), frame[..., ::-1])
    cv2.imwrite(str(root / "real" / "photo.jpg"), frames[0][..., ::-1])
    entries = {e.video_id: e for e in catalog.folder(root)}
    assert set(entries) == {"real/a", "real/photo", "swap/b", "swap/c"}
    assert len(entries["swap/c"].frames) == trees.FRAMES
    assert entries["real/photo"].frames and entries["swap/b"].label == 1
    result = preprocess.process_entry(entries["swap/c"], SETTINGS)
    assert result.status == "ok" and len(result.crops) == SETTINGS.num_frames
    single = preprocess.process_entry(entries["real/photo"], SETTINGS)
    assert len(single.crops) == 1


def test_every_face_is_stored_as_its_own_track_in_its_videos_split(tmp_path, frames):
    from mkln_jax import metrics

    root = tmp_path / "mine"
    left, right = trees.clip(frames, "a"), trees.clip(frames, "b")
    both = [np.concatenate([x, y], axis=1) for x, y in zip(left, right, strict=True)]
    trees.write_video(root / "real" / "two.mp4", both)
    trees.write_video(root / "fake" / "swap" / "one.mp4", trees.clip(frames, "c", fake=True))
    settings = dataclasses.replace(SETTINGS, every_face=True)
    assert settings.key() != SETTINGS.key()
    source = forgery.Source("folder", str(root))
    builder = _build(forgery.FaceFolder, source, tmp_path, settings=settings)
    records = [r for split in builder.info.splits for r in _records(builder, split)]
    ids = sorted({_text(r["video_id"]) for r in records})
    assert ids == ["real/two#face1", "real/two#face2", "swap/one#face1"]
    entries = {e.video_id: e for e in catalog.folder(root)}
    for r in records:  # every face lies in its video's split (no identity crosses splits)
        video = metrics.video_of(_text(r["video_id"]))
        assert _text(r["video_id"]).startswith(video) and video in entries
    assert len(records) == 3 * SETTINGS.num_frames
    videos, labels, _ = metrics.video_level(
        [_text(r["video_id"]) for r in records],
        [int(r["label"]) for r in records],
        np.linspace(0, 1, len(records)),
    )
    assert videos.tolist() == ["real/two", "swap/one"] and labels.tolist() == [0, 1]


def test_settings_added_later_keep_the_names_of_datasets_prepared_before():
    # The key of Settings() as computed before `every_face` existed.
    old_fields = dataclasses.asdict(SETTINGS)
    del old_fields["every_face"]
    before = hashlib.sha256(json.dumps(old_fields, sort_keys=True).encode()).hexdigest()[:8]
    assert SETTINGS.key() == before


def test_folder_takes_every_kind_predict_takes_and_names_the_rest(tmp_path, frames):
    root = tmp_path / "mine"
    trees.write_video(root / "real" / "a.mp4", trees.clip(frames, "a"))
    (root / "real" / "b.mpg").write_bytes((root / "real" / "a.mp4").read_bytes())
    (root / "real" / "c.3gp").write_bytes((root / "real" / "a.mp4").read_bytes())
    cv2.imwrite(str(root / "real" / "d.tif"), frames[0][..., ::-1])
    (root / "fake" / "swap").mkdir(parents=True)
    (root / "fake" / "swap" / "e.gif").write_bytes(b"GIF89a")
    (root / "fake" / "swap" / "clip_without_extension").write_bytes(b"\x00" * 64)
    (root / "fake" / "swap" / "notes.txt").write_text("hello")
    taken = {e.video_id for e in catalog.folder(root)}
    assert taken == {"real/a", "real/b", "real/c", "real/d", "swap/e"}
    not_taken = {p.name for p in catalog.folder_not_taken(root)}
    assert not_taken == {"clip_without_extension", "notes.txt"}


def test_a_file_repaired_between_runs_is_processed_again(tmp_path, frames):
    root = tmp_path / "mine"
    good = trees.write_video(root / "real" / "a.mp4", trees.clip(frames, "a"))
    data = good.read_bytes()
    good.write_bytes(data[: len(data) // 20])  # truncated: unreadable on the first run
    (entry,) = catalog.folder(root)
    results, _ = preprocess.run([entry], SETTINGS, tmp_path / "work", workers=1, progress=False)
    assert results[entry.video_id].status == "skipped"
    good.write_bytes(data)  # the user repairs it
    results, report = preprocess.run(
        [entry], SETTINGS, tmp_path / "work", workers=1, progress=False
    )
    assert report.videos_resumed == 0
    assert results[entry.video_id].status == "ok"


def test_deepfakebench_import_keeps_frames_and_landmarks(tmp_path, frames):
    root = tmp_path / "dfb"
    index = {"FaceForensics++": {}}
    videos = (
        ("FF-real", "train", "000"),
        ("FF-DF", "train", "000_001"),
        ("FF-real", "val", "002"),
        ("FF-DF", "val", "002_003"),
        ("FF-real", "test", "004"),
        ("FF-DF", "test", "004_005"),
    )
    for label_name, split, name in videos:
        paths = []
        for k in range(4):
            frame = root / "FaceForensics++" / label_name / "c23" / "frames" / name / f"{k:03d}.png"
            frame.parent.mkdir(parents=True, exist_ok=True)
            crop = cv2.resize(frames[k][:, 60:204], (96, 96))
            cv2.imwrite(str(frame), crop[..., ::-1])
            marks = pathlib.Path(str(frame).replace("/frames/", "/landmarks/")).with_suffix(".npy")
            marks.parent.mkdir(parents=True, exist_ok=True)
            np.save(marks, np.tile(np.float32([[30, 40]]), (81, 1)) + k)
            paths.append(str(frame.relative_to(root)))
        level = index["FaceForensics++"].setdefault(label_name, {}).setdefault(split, {})
        level.setdefault("c23", {})[name] = {"label": label_name, "frames": paths}
    (root / "FF-DF.json").write_text(json.dumps(index))
    entries = catalog.deepfakebench(root / "FF-DF.json", root)
    assert {e.video_id for e in entries if e.split == "test"} == {
        "real/FF-real/004",
        "Deepfakes/004_005",
    }
    source = forgery.Source("deepfakebench", str(root), index_json=str(root / "FF-DF.json"))
    builder = _build(forgery.DeepfakebenchImport, source, tmp_path)
    records = _records(builder, "train")
    assert len(records) == 2 * SETTINGS.num_frames
    for r in records:
        assert bool(r["has_landmarks"])
        k = int(r["frame_index"])
        np.testing.assert_allclose(r["landmarks"][0], (np.float32([30, 40]) + k) * 48 / 96)


def test_five_point_alignment_puts_landmarks_on_the_template():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (200, 200, 3), dtype=np.uint8)
    angle = np.deg2rad(20)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    landmarks = (faces.ARCFACE_TEMPLATE - 0.5) @ rotation.T * 90 + 100
    crop, moved = faces.align_crop(image, landmarks.astype(np.float32), 1.3, 64)
    assert crop.shape == (64, 64, 3)
    np.testing.assert_allclose(moved, (0.5 + (faces.ARCFACE_TEMPLATE - 0.5) / 1.3) * 64, atol=1e-3)


def test_tracking_follows_the_first_face_not_a_larger_newcomer():
    a, b = faces.Box(10, 10, 40, 40), faces.Box(100, 100, 60, 60)
    near_a = faces.Box(14, 12, 40, 40)
    chosen = faces.track([[faces.Face(a)], [], [faces.Face(b), faces.Face(near_a)]])
    assert chosen[0].box == a and chosen[1] is None and chosen[2].box == near_a
    assert faces.track([[faces.Face(a), faces.Face(b)]])[0].box == b  # largest first


def test_sbi_stream_is_balanced_and_augmentations_are_deterministic():
    rng = np.random.default_rng(0)
    reals = [
        {"image": rng.integers(0, 255, (32, 32, 3), dtype=np.uint8), "label": 0} for _ in range(6)
    ]
    aug = loader.HostAugment(
        hflip=True, resize_prob=0.5, jpeg_prob=0.5, blur_prob=0.5, colour_prob=0.5, sbi=True
    )
    ds = loader.train_batches(reals, np.arange(6), global_batch_size=4, seed=3, augment=aug)
    batches = [ds[i] for i in range(3)]
    labels = np.concatenate([b["label"] for b in batches])
    assert labels.sum() == 6 and len(labels) == 12  # one SBI twin per real
    again = [ds[i] for i in range(3)]
    for a, b in zip(batches, again, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
    image = reals[0]["image"]
    off = loader.HostAugment(hflip=False)
    np.testing.assert_array_equal(loader.augment_image(image, off, np.random.default_rng(1)), image)
    on = loader.HostAugment(hflip=False, resize_prob=1, jpeg_prob=1, blur_prob=1, colour_prob=1)
    assert np.abs(loader.augment_image(image, on, rng).astype(int) - image).mean() > 1


@pytest.mark.slow
def test_prepare_ffpp_from_the_command_line_then_train_on_it(ffpp_root, tmp_path):
    common = [
        "--config=configs/tiny.py",
        "--config.data.name=ffpp",
        f"--config.data.root={ffpp_root}",
        "--config.data.num_frames=3",
        "--config.data.methods=('Deepfakes','FaceSwap')",
        "--config.data.train_methods=('Deepfakes',)",
        f"--config.data.data_dir={tmp_path / 'tfds'}",
        "--config.data.workers=2",
    ]

    result = mkln("prepare", "ffpp", *common)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "skipped (no face): 2" in result.stdout
    # the ArrayRecord writing phase reports itself (a new line, stderr being a pipe)
    assert re.search(r"^write train (\d+)/\1 frames \| .* \| ETA", result.stderr, re.M)
    assert "train videos: Deepfakes 4, FaceSwap 4, real 4" in result.stdout
    again = mkln("prepare", "ffpp", *common)
    assert "dataset already prepared" in again.stdout
    run = mkln(
        "train",
        *common,
        "--config.stages=('teacher',)",
        f"--workdir={tmp_path / 'run'}",
        "--config.teacher.pretrained=",
        devices=1,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "[teacher] step 4 validation" in run.stdout
    # Cross-dataset: the FF++-trained model tested on the (tiny) demo data, then compared.
    workdir = f"--workdir={tmp_path / 'run'}"
    stages = "--config.stages=('teacher',)"
    # prepare takes the run's --workdir like the other commands (scripts pass it to all).
    assert mkln("prepare", "--config=configs/tiny.py", workdir).returncode == 0
    # Both datasets in one call: the run's own (its settings) and the demo data (cross-dataset).
    both = "--eval_datasets=ffpp,configs/tiny.py"
    cross = mkln("evaluate", *common, stages, workdir, both, devices=1)
    assert cross.returncode == 0, cross.stderr[-3000:]
    report = json.loads((tmp_path / "run" / "eval" / "mkln_demo_test.json").read_text())
    metrics = report["teacher"]["metrics"]
    assert "seen methods" not in metrics and {"self_blend", "face_swap"} <= set(metrics)
    assert "NOT seen in training" in cross.stdout
    own = json.loads((tmp_path / "run" / "eval" / "test.json").read_text())["teacher"]
    assert "seen methods" in own["metrics"]
    summary = json.loads((tmp_path / "run" / "eval" / "summary_test.json").read_text())
    assert [r["dataset"] for r in summary] == ["ffpp", "mkln_demo (cross-dataset)", "mean of 2"]
    assert summary[2]["frame_auc"] == pytest.approx(
        (own["metrics"]["all"]["frame"]["auc"] + metrics["all"]["frame"]["auc"]) / 2
    )
    assert "| mean of 2 | teacher |" in cross.stdout
    assert re.search(r"^\[evaluate\] teacher test (\d+)/\1 frames", cross.stderr, re.M)
    table = mkln("compare", str(tmp_path / "run"), str(tmp_path / "nowhere"))
    assert table.returncode == 2 and "nowhere/eval/test.json not found" in table.stderr
    table = mkln("compare", str(tmp_path / "run"), f"--out={tmp_path / 'cmp.md'}")
    assert table.returncode == 0 and "| teacher |" in table.stdout
    # The unseen method's column names it with its AUC and interval (a tiny run may reach 1.0).
    assert re.search(r"\| FaceSwap [01]\.\d{4} \[", (tmp_path / "cmp.md").read_text())
    missing = mkln(
        "prepare",
        "celebdf",
        *common[:1],
        f"--config.data.root={tmp_path}/none",
        "--config.data.methods=('Celeb-synthesis',)",
        "--config.data.train_methods=('Celeb-synthesis',)",
    )
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert "List_of_testing_videos.txt not found" in missing.stderr


def test_large_splits_are_ordered_in_memory_not_through_tensorflow():
    from tensorflow_datasets.core import shuffle

    before = shuffle.MAX_MEM_BUFFER_SIZE
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    with forgery.in_memory_writer(0.5):
        assert shuffle.MAX_MEM_BUFFER_SIZE >= total // 2 > before  # TFDS's own limit: 1 GB
    assert shuffle.MAX_MEM_BUFFER_SIZE == before
