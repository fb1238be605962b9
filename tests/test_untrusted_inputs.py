"""Inputs and outputs in-process (issue 24): file helpers, a malformed evaluation for
`compare`, and a video that decodes fewer frames than sampled."""

import json
import os

import av
import numpy as np
import pytest

from mkln_jax import evaluate, fileio, predict
from mkln_jax.errors import UnsafeInputError


def test_names_inside_an_artifact_cannot_leave_it(tmp_path):
    (tmp_path / "a").mkdir()
    assert fileio.inside(tmp_path / "a", "weights.npz") == tmp_path / "a" / "weights.npz"
    for name in ("../secret", "/etc/passwd", "x/../../y", "", "a\\b"):
        with pytest.raises(UnsafeInputError):
            fileio.inside(tmp_path / "a", name)
    os.symlink("/etc", tmp_path / "a" / "link")
    with pytest.raises(UnsafeInputError, match="outside"):
        fileio.inside(tmp_path / "a", "link/passwd")


def test_an_output_that_is_an_input_or_a_folder_is_refused(tmp_path):
    video = tmp_path / "x.mp4"
    video.write_bytes(b"data")
    with pytest.raises(UnsafeInputError, match="is also an input"):
        fileio.check_writable_output(tmp_path / "." / "x.mp4", [video], "--report")
    os.link(video, tmp_path / "hard.json")  # another name for the same file
    with pytest.raises(UnsafeInputError, match="is also an input"):
        fileio.check_writable_output(tmp_path / "hard.json", [video], "--report")
    with pytest.raises(UnsafeInputError, match="is a folder"):
        fileio.check_writable_output(tmp_path, [video], "--report")
    assert fileio.check_writable_output(tmp_path / "out" / "r.csv", [video], "--report")


def test_an_atomic_write_that_fails_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old")

    with pytest.raises(TypeError):  # the write itself fails
        fileio.atomic_write(target, 12345)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_compare_refuses_a_malformed_evaluation_in_one_line(tmp_path):
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "test.json").write_text(json.dumps({"student": {"metrics": 5}}))
    with pytest.raises(UnsafeInputError, match=r"not a readable evaluation .* rerun"):
        evaluate.compare_runs([str(tmp_path)])
    (tmp_path / "eval" / "test.json").write_text("{ truncated")
    with pytest.raises(UnsafeInputError, match="not a readable evaluation"):
        evaluate.compare_runs([str(tmp_path)])


def test_a_truncated_video_is_scored_on_the_frames_it_has_and_says_so(tmp_path):
    # H.264 with the index first (faststart): a cut file still states its 40 frames.
    path = tmp_path / "clip.mp4"
    rng = np.random.default_rng(0)
    with av.open(str(path), "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for _ in range(40):
            image = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, "rgb24")))
        container.mux(stream.encode())
    frames, _, note = predict._load_frames(path, 8)
    assert len(frames) == 8 and note == ""
    data = path.read_bytes()
    cut = tmp_path / "cut.mp4"
    for fraction in (0.3, 0.5, 0.7):  # where the cut leaves the header but loses frames
        cut.write_bytes(data[: int(len(data) * fraction)])
        try:
            frames, _, note = predict._load_frames(cut, 8)
        except predict.PredictError:
            continue
        if len(frames) < 8:
            assert note.startswith(f"decoded {len(frames)} of the 8 frames sampled")
            return
    pytest.skip("no cut of this file decoded some but not all frames")


def test_a_symlink_loop_among_the_inputs_is_one_skipped_input(tmp_path):
    good = tmp_path / "face.png"
    good.write_bytes(b"not read here")
    loop_a, loop_b = tmp_path / "a.mp4", tmp_path / "b.mp4"
    loop_a.symlink_to(loop_b)
    loop_b.symlink_to(loop_a)
    inputs, not_taken = predict.expand([str(loop_a), str(good), str(tmp_path)])
    assert inputs == [loop_a, good] and not_taken == [loop_a, loop_b]  # the folder's loop
    assert set(predict.strip_names(inputs).values()) == {"a.mp4.strip.png", "face.png.strip.png"}
    fileio.check_writable_output(tmp_path / "out" / "report.csv", inputs, "--report")
    with pytest.raises(UnsafeInputError, match="symbolic links"):
        fileio.require_regular_file(loop_a)
    with pytest.raises(UnsafeInputError, match="symlink loop"):
        fileio.inside(tmp_path, "a.mp4")
