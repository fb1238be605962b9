"""TFDS builders (manual download, ArrayRecord) for real forgery datasets: FaceForensics++,
Celeb-DF, a user's own folder, and DeepfakeBench's preprocessed frames.

One builder class per source, sharing `ForgeryBuilder`. The builder config name carries every
setting that changes the examples (compression, methods, frames, crop size, detector), so
different choices never overwrite each other. Two ways to build:

- locally (default): `preprocess.run` crops every video in parallel processes, resumably, into
  a work folder; the builder then writes the examples from there;
- Apache Beam (`beam=True`): the same per-video function runs inside a Beam FlatMap, so
  Dataflow, Spark or Flink can prepare sets too large for one machine (TFDS's Beam support).

Each example: face crop (PNG), label, method, video id (method-keyed), frame index, dataset,
compression, identity, 5 landmarks in crop coordinates (+ whether they exist), and the FF++ mask
crop where a mask video exists (+ whether it does).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
from typing import ClassVar

import cv2
import numpy as np
import tensorflow_datasets as tfds

from mkln_jax.input_pipeline.build import catalog, preprocess
from mkln_jax.input_pipeline.build.datasets import mkln_demo
from mkln_jax.logging_utils import ProgressLine

SPLITS = catalog.SPLITS


@dataclasses.dataclass(frozen=True)
class Source:
    """Where a dataset lives and which part of it to take."""

    kind: str  # ffpp | celebdf | folder | deepfakebench
    root: str
    compression: str = "c23"  # ffpp
    methods: tuple[str, ...] = catalog.FFPP_METHODS  # ffpp
    splits_dir: str = ""  # ffpp: folder of train/val/test.json ("" = root)
    version: str = "v2"  # celebdf
    index_json: str = ""  # deepfakebench

    def entries(self) -> list[catalog.Entry]:
        if self.kind == "ffpp":
            return catalog.ffpp(self.root, self.compression, self.methods, self.splits_dir)
        if self.kind == "celebdf":
            return catalog.celebdf(self.root, self.version)
        if self.kind == "folder":
            return catalog.folder(self.root)
        if self.kind == "deepfakebench":
            return catalog.deepfakebench(self.index_json, self.root)
        raise ValueError(f"unknown dataset kind {self.kind!r}")

    def config_name(self, settings: preprocess.Settings) -> str:
        common = (
            f"f{settings.num_frames}_s{settings.crop_size}_{settings.detector}_{settings.key()}"
        )
        if self.kind == "ffpp":
            comp = "raw" if self.compression in ("raw", "c0") else self.compression
            methods = "-".join(m[:3].lower() for m in self.methods)
            return f"{comp}_{methods}_{common}"
        if self.kind == "celebdf":
            return f"{self.version}_{common}"
        name = pathlib.Path(self.index_json or self.root).stem.replace(".", "_") or "data"
        return f"{name}_{catalog.bucket(str(pathlib.Path(self.root).resolve()), 10**6)}_{common}"


BUILDER_NAMES = {
    "ffpp": "ffpp",
    "celebdf": "celeb_df",
    "folder": "face_folder",
    "deepfakebench": "deepfakebench_import",
}


def _example(entry: catalog.Entry, result: preprocess.VideoResult, index: int, size: int):
    mask = result.masks[index] if result.masks else None
    marks = result.landmarks[index] if result.landmarks else None
    video_id = result.video_id_of(index)
    return (
        f"{video_id}/{result.frame_indices[index]:06d}",
        {
            "image": result.crops[index],
            "label": entry.label,
            "method": entry.method,
            "video_id": video_id,
            "frame_index": result.frame_indices[index],
            "dataset": entry.dataset,
            "compression": entry.compression,
            "identity": entry.identity,
            "landmarks": np.zeros((5, 2), np.float32) if marks is None else marks,
            "has_landmarks": marks is not None,
            "mask": mask if mask is not None else _blank_mask(size),
            "has_mask": mask is not None,
        },
    )


def _blank_mask(size: int) -> bytes:
    return cv2.imencode(".png", np.zeros((size, size), np.uint8))[1].tobytes()


def examples_of(entry: catalog.Entry, settings: preprocess.Settings):
    """The examples of one entry (the Beam path's unit of work)."""
    result = preprocess.process_entry(entry, settings)
    return [_example(entry, result, i, settings.crop_size) for i in range(len(result.crops))]


@contextlib.contextmanager
def in_memory_writer(fraction: float = 0.6):
    """TFDS orders a split's records in memory and, past 1 GB, spills them to disk through
    TensorFlow, which this project does not install: an FF++ c23 split at 256 px (~115k
    records, ~10 GB) would fail there. While this is open, the buffer may grow to `fraction`
    of the machine's memory."""
    from tensorflow_datasets.core import shuffle

    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    previous = shuffle.MAX_MEM_BUFFER_SIZE
    shuffle.MAX_MEM_BUFFER_SIZE = max(previous, int(total * fraction))
    try:
        yield
    finally:
        shuffle.MAX_MEM_BUFFER_SIZE = previous


class ForgeryBuilder(tfds.core.GeneratorBasedBuilder):
    """Shared by the per-dataset builders below."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "First release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Download the dataset from its authors (it needs a request form) and pass its root "
        "folder as data.root (`mkln prepare <dataset> --config.data.root=...`)."
    )

    def __init__(
        self,
        *,
        source: Source,
        settings: preprocess.Settings,
        work_dir: str | pathlib.Path | None = None,
        workers: int = 0,
        beam: bool = False,
        progress: bool = True,
        **kwargs,
    ):
        self.source = source
        self.settings = settings
        self.workers = workers
        self.beam = beam
        self.progress = progress
        self.report: preprocess.Report | None = None
        self.entries: list[catalog.Entry] | None = None
        self.empty_splits: list[str] = []
        config = tfds.core.BuilderConfig(
            name=source.config_name(settings),
            description=f"{dataclasses.asdict(source)} {dataclasses.asdict(settings)}",
        )
        super().__init__(config=config, **kwargs)
        self.work_dir = pathlib.Path(
            work_dir or pathlib.Path(self._data_dir_root) / "_work" / self.name / config.name
        )

    def download_and_prepare(self, *args, **kwargs):
        with in_memory_writer():
            return super().download_and_prepare(*args, **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        size = self.settings.crop_size
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    **mkln_demo.core_features(size),
                    "dataset": tfds.features.Text(),
                    "compression": tfds.features.Text(),
                    "landmarks": tfds.features.Tensor(shape=(5, 2), dtype=np.float32),
                    "has_landmarks": np.bool_,
                    "mask": tfds.features.Image(shape=(size, size, 1), encoding_format="png"),
                    "has_mask": np.bool_,
                }
            ),
            supervised_keys=None,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # manual download: the root is given
        self.entries = self.source.entries()
        by_split = {s: [e for e in self.entries if e.split == s] for s in SPLITS}
        # A download may hold only some splits (Celeb-DF's test list alone is all that the
        # FF++ -> Celeb-DF protocol needs): those are written, and the empty ones named;
        # training and evaluation refuse a split that was not written (splits.open_split).
        self.empty_splits = [s for s in SPLITS if not by_split[s]]
        written = [s for s in SPLITS if by_split[s]]
        if not written:
            raise catalog.LayoutError(
                f"{self.source.root}: no videos in any split; check the layout and the split "
                "files"
            )
        if self.beam:
            return {s: self._generate_examples(by_split[s]) for s in written}
        self.results, self.report = preprocess.run(
            self.entries, self.settings, self.work_dir, self.workers, self.progress
        )
        return {s: self._generate_examples(by_split[s]) for s in written}

    def _generate_examples(self, entries):
        if self.beam:
            import apache_beam as beam

            settings = self.settings
            return beam.Create(entries) | beam.FlatMap(examples_of, settings)
        return self._local_examples(entries)

    def _local_examples(self, entries):
        total = sum(len(self.results[e.video_id].crops) for e in entries)
        split = entries[0].split if entries else ""
        # TFDS encodes and writes the ArrayRecord shards as it draws from here
        bar = ProgressLine(total, what=f"write {split}", unit="frames", per_minute=False)
        done = 0
        for entry in entries:
            result = self.results[entry.video_id]
            for i in range(len(result.crops)):
                yield _example(entry, result, i, self.settings.crop_size)
                done += 1
                if self.progress:
                    bar.update(done)


class Ffpp(ForgeryBuilder):
    """FaceForensics++ (Rössler et al., ICCV 2019): official splits, per compression."""


class CelebDf(ForgeryBuilder):
    """Celeb-DF v1 / v2 (Li et al., CVPR 2020): the official test list, train = the rest."""


class FaceFolder(ForgeryBuilder):
    """A user's own real/ and fake/<method>/ folders of videos or images."""


class DeepfakebenchImport(ForgeryBuilder):
    """DeepfakeBench's preprocessed frames, landmarks and dataset JSON, imported as they are."""


BUILDERS = {
    "ffpp": Ffpp,
    "celebdf": CelebDf,
    "folder": FaceFolder,
    "deepfakebench": DeepfakebenchImport,
}
