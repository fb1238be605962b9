"""`mkln prepare`: build the configured TFDS dataset (ArrayRecord) once; later runs reuse it."""

from __future__ import annotations

import ml_collections
import tensorflow_datasets as tfds

from mkln_jax import config_lib
from mkln_jax.input_pipeline import loader
from mkln_jax.input_pipeline.datasets import mkln_demo


def prepare(config: ml_collections.ConfigDict, sources=None) -> list[str]:
    """Builds the dataset if missing; returns report lines. `sources` replaces the demo videos
    (a list of (path, identity)), for tests and for users' own clips."""
    data_dir = config_lib.data_dir(config)
    builder = mkln_demo.MklnDemo(
        settings=loader.demo_settings(config.data),
        sources=sources,
        cache_dir=config_lib.cache_dir(config),
        data_dir=str(data_dir),
        file_format="array_record",
    )
    lines = []
    if builder.is_prepared():
        lines.append(f"dataset already prepared: {builder.data_dir}")
    else:
        tfds.disable_progress_bar()
        builder.download_and_prepare()
        lines.append(f"dataset written: {builder.data_dir}")
        lines += builder.report.lines()
    for split, info in sorted(builder.info.splits.items()):
        lines.append(f"{split}: {info.num_examples} examples")
    return lines
