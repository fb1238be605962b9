"""The Beam path of the dataset builders (TFDS's Beam support) on Beam's DirectRunner gives the
same examples as the local, multi-process path. Runs where apache-beam is installed (`make
extras`: its own environment, since Beam moves core pins); skipped elsewhere, with the reason."""

import dataset_trees as trees
import numpy as np
import pytest

from mkln_jax.input_pipeline.build import catalog, preprocess
from mkln_jax.input_pipeline.build.datasets import forgery

pytestmark = pytest.mark.slow  # trains or runs `mkln` in subprocesses

beam = pytest.importorskip("apache_beam", reason="apache-beam is not installed (run `make extras`)")

SETTINGS = preprocess.Settings(num_frames=3, crop_size=48)


def _examples(builder, split):
    source = builder.as_data_source(split=split)
    out = {}
    for i in range(len(source)):
        r = source[i]
        key = (r["video_id"], int(r["frame_index"]))
        out[key] = r
    return out


def test_beam_direct_runner_gives_the_same_examples_as_local_processes(tmp_path, cache_dir):
    import tensorflow_datasets as tfds
    from apache_beam.options.pipeline_options import PipelineOptions

    root = trees.ffpp_tree(tmp_path / "ffpp", trees.face_frames(cache_dir))
    source = forgery.Source("ffpp", str(root), methods=trees.FFPP_METHODS)
    built = {}
    for mode in ("local", "beam"):
        builder = forgery.Ffpp(
            source=source,
            settings=SETTINGS,
            workers=2,
            beam=mode == "beam",
            progress=False,
            data_dir=str(tmp_path / mode),
            file_format="array_record",
        )
        config = None
        if mode == "beam":
            config = tfds.download.DownloadConfig(
                beam_options=PipelineOptions(["--runner=DirectRunner"])
            )
        builder.download_and_prepare(download_config=config)
        built[mode] = builder
    for split in catalog.SPLITS:
        local, via_beam = _examples(built["local"], split), _examples(built["beam"], split)
        assert set(local) == set(via_beam) and len(local) == 6 * SETTINGS.num_frames
        for key, example in local.items():
            other = via_beam[key]
            for field in ("label", "method", "video_id", "has_mask", "compression"):
                assert example[field] == other[field], (key, field)
            np.testing.assert_array_equal(example["image"], other["image"])
            np.testing.assert_array_equal(example["mask"], other["mask"])
