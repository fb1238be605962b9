"""grain pipelines over TFDS ArrayRecord data sources.

Training batches are random access by step: `batches[step]` is always the same batch (shuffle and
augmentation are keyed by the seed and the element's index), so resuming at step s needs no
iterator state beyond s. Each process reads its own slice of every global batch.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Iterator, Sequence

import grain
import jax
import numpy as np
import tensorflow_datasets as tfds

from mkln_jax.input_pipeline import demo
from mkln_jax.input_pipeline.datasets import mkln_demo


def demo_settings(data_config) -> demo.DemoSettings:
    return demo.DemoSettings(
        image_size=data_config.image_size,
        clip_frames=data_config.clip_frames,
        frames_per_clip=data_config.frames_per_clip,
        margin=data_config.margin,
        methods=tuple(data_config.methods),
        seed=0,
    )


def dataset_name(data_config) -> str:
    if data_config.name != "mkln_demo":
        raise ValueError(f"unknown dataset {data_config.name!r}; this build knows 'mkln_demo'")
    return f"mkln_demo/{mkln_demo.config_name(demo_settings(data_config))}"


def open_split(data_config, data_dir: pathlib.Path, split: str):
    """The split as a random-access TFDS data source; a clear error if it was never prepared."""
    name = dataset_name(data_config)
    try:
        return tfds.data_source(name, data_dir=str(data_dir), split=split, download=False)
    except Exception as err:  # tfds raises several types for a missing dataset
        raise FileNotFoundError(
            f"dataset {name} not found under {data_dir} ({type(err).__name__}). Fix: run "
            "`mkln prepare --config=<the same config>` first."
        ) from err


@dataclasses.dataclass
class SplitIndex:
    labels: np.ndarray  # int32[N]
    methods: np.ndarray  # str[N]
    video_ids: np.ndarray  # str[N]


def read_index(source) -> SplitIndex:
    labels, methods, video_ids = [], [], []
    for i in range(len(source)):
        record = source[i]
        labels.append(int(record["label"]))
        methods.append(_text(record["method"]))
        video_ids.append(_text(record["video_id"]))
    return SplitIndex(np.asarray(labels, np.int32), np.asarray(methods), np.asarray(video_ids))


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def training_indices(index: SplitIndex, train_methods: Sequence[str], balance: bool) -> np.ndarray:
    """Reals plus fakes of the training methods; with `balance`, reals are repeated (whole
    copies, then a seeded remainder) until they match the fakes in number."""
    real = np.flatnonzero(index.methods == "real")
    fake = np.flatnonzero(np.isin(index.methods, list(train_methods)))
    if real.size == 0 or fake.size == 0:
        raise ValueError("training split needs both real and fake examples")
    if balance and fake.size > real.size:
        copies, remainder = divmod(fake.size, real.size)
        extra = np.random.default_rng(0).choice(real, remainder, replace=False)
        real = np.concatenate([np.tile(real, copies), extra])
    return np.concatenate([real, fake])


class Subset:
    """A data source restricted to (and reordered by) an index list."""

    def __init__(self, source, indices: np.ndarray):
        self._source = source
        self._indices = np.asarray(indices)

    def __len__(self) -> int:
        return int(self._indices.size)

    def __getitem__(self, i):
        return self._source[int(self._indices[i])]


def _train_transform(hflip: bool):
    def transform(record, rng: np.random.Generator):
        image = np.asarray(record["image"], np.uint8)
        if hflip and rng.random() < 0.5:
            image = image[:, ::-1]
        return {"image": np.ascontiguousarray(image), "label": np.int32(record["label"])}

    return transform


def train_batches(
    source,
    indices: np.ndarray,
    *,
    global_batch_size: int,
    seed: int,
    hflip: bool,
) -> grain.MapDataset:
    """Infinite, random-access dataset of this process's share of each global batch."""
    processes = jax.process_count()
    if global_batch_size % processes:
        raise ValueError(f"batch size {global_batch_size} not divisible by {processes} processes")
    per_process = global_batch_size // processes
    ds = grain.MapDataset.source(Subset(source, indices)).shuffle(seed=seed).repeat()
    ds = ds.random_map(_train_transform(hflip), seed=seed + 1)
    # Global batch g holds elements [g*B, (g+1)*B); this process takes its contiguous part.
    ds = ds.batch(global_batch_size, drop_remainder=True)
    start = jax.process_index() * per_process
    return ds.map(lambda batch: {k: v[start : start + per_process] for k, v in batch.items()})


def iterate_from(ds: grain.MapDataset, start_step: int, threads: int) -> Iterator[dict]:
    """Prefetching iterator over ds[start_step:], read by `threads` threads."""
    tail = ds[start_step:] if start_step else ds
    options = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=4)
    return iter(tail.to_iter_dataset(options))


def eval_batches(source, batch_size: int) -> Iterator[tuple[dict, int]]:
    """Every example once, in order, as (batch, valid count); the last batch is padded by
    repeating its final element so shapes stay static."""
    total = len(source)
    for start in range(0, total, batch_size):
        records = [source[i] for i in range(start, min(start + batch_size, total))]
        valid = len(records)
        records += [records[-1]] * (batch_size - valid)
        batch = {"image": np.stack([np.asarray(r["image"], np.uint8) for r in records])}
        yield batch, valid
