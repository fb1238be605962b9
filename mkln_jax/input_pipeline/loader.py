"""grain pipelines over random-access data sources (`splits.py` opens them): training batches
with host augmentations, and evaluation batches.

Training batches are random access by step: `batches[step]` is always the same batch (shuffle and
augmentation are keyed by the seed and the element's index), so resuming at step s needs no
iterator state beyond s. Each process reads, decodes and augments only its own rows of every
global batch. Needs grain and numpy only (no TFDS), so the input path runs anywhere.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import grain
import jax
import numpy as np


class Subset:
    """A data source restricted to (and reordered by) an index list."""

    def __init__(self, source, indices: np.ndarray):
        self._source = source
        self._indices = np.asarray(indices)

    def __len__(self) -> int:
        return int(self._indices.size)

    def __getitem__(self, i):
        return self._source[int(self._indices[i])]


@dataclasses.dataclass(frozen=True)
class HostAugment:
    """Training-time augmentations of uint8 crops on the host; each field a probability."""

    hflip: bool = True
    resize_prob: float = 0.0
    jpeg_prob: float = 0.0
    blur_prob: float = 0.0
    colour_prob: float = 0.0
    sbi: bool = False  # odd elements become Self-Blended Images of their real

    @classmethod
    def from_config(cls, data_config) -> HostAugment:
        return cls(
            hflip=data_config.hflip,
            resize_prob=data_config.resize_prob,
            jpeg_prob=data_config.jpeg_prob,
            blur_prob=data_config.blur_prob,
            colour_prob=data_config.colour_prob,
            sbi=data_config.sbi,
        )


def augment_image(image: np.ndarray, aug: HostAugment, rng: np.random.Generator) -> np.ndarray:
    """uint8[S, S, 3] -> uint8[S, S, 3]; deterministic given the generator's state."""
    import cv2

    size = image.shape[0]
    if aug.hflip and rng.random() < 0.5:
        image = image[:, ::-1]
    if rng.random() < aug.resize_prob:
        small = max(8, round(size / rng.uniform(1.0, 2.0)))
        image = cv2.resize(image, (small, small), interpolation=cv2.INTER_AREA)
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)
    if rng.random() < aug.jpeg_prob:
        quality = int(rng.integers(30, 96))
        data = cv2.imencode(
            ".jpg", np.ascontiguousarray(image[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality]
        )[1]
        image = cv2.imdecode(data, cv2.IMREAD_COLOR)[..., ::-1]
    if rng.random() < aug.blur_prob:
        image = cv2.GaussianBlur(np.ascontiguousarray(image), (0, 0), rng.uniform(0.3, 1.5))
    if rng.random() < aug.colour_prob:
        x = image.astype(np.float32)
        grey = x.mean(axis=-1, keepdims=True)
        x = grey + (x - grey) * rng.uniform(0.7, 1.3)  # saturation
        x = (x - x.mean()) * rng.uniform(0.8, 1.2) + x.mean() + rng.uniform(-20, 20)
        image = np.clip(np.rint(x), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(image)


class SbiSource:
    """Each real twice: element 2k is real k as it is, 2k + 1 is marked for self-blending."""

    def __init__(self, source):
        self._source = source

    def __len__(self) -> int:
        return 2 * len(self._source)

    def __getitem__(self, i):
        record = dict(self._source[i // 2])
        record["sbi"] = i % 2
        return record


def _train_transform(aug: HostAugment):
    def transform(record, rng: np.random.Generator):
        image = np.asarray(record["image"], np.uint8)
        label = np.int32(record["label"])
        if aug.sbi and record.get("sbi"):
            from mkln_jax.input_pipeline import forgeries

            image, label = forgeries.self_blend(image, rng), np.int32(1)
        image = augment_image(image, aug, rng)
        return {"image": image, "label": label}

    return transform


def _processes(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    return index, count


def train_batches(
    source,
    indices: np.ndarray,
    *,
    global_batch_size: int,
    seed: int,
    hflip: bool = True,
    augment: HostAugment | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
) -> grain.MapDataset:
    """Infinite, random-access dataset of this process's share of each global batch; only
    that share is read, decoded and augmented.

    Global batch g holds elements [g*B, (g+1)*B) of one shuffled, augmented stream whose
    element i depends only on (seed, i); process p of P takes rows [p*B/P, (p+1)*B/P). So the
    assembled global batch is the same for every P, and batch s depends only on (seed, s): the
    step in a checkpoint is the iterator's whole state. With augment.sbi, `indices` should be
    reals only; every real then appears once as itself and once self-blended."""
    augment = augment or HostAugment(hflip=hflip)
    index, processes = _processes(process_index, process_count)
    if global_batch_size % processes:
        raise ValueError(f"batch size {global_batch_size} not divisible by {processes} processes")
    per_process = global_batch_size // processes
    subset = Subset(source, indices)
    ds = grain.MapDataset.source(SbiSource(subset) if augment.sbi else subset)
    ds = ds.shuffle(seed=seed).repeat()
    ds = ds.random_map(_train_transform(augment), seed=seed + 1)
    # Local batch k of size B/P is global batch k // P's part k % P: take every P-th one. The
    # transform runs only on the elements read, each seeded by its place in the whole stream.
    ds = ds.batch(per_process, drop_remainder=True)
    return ds[index::processes]


def iterate_from(
    ds: grain.MapDataset, start_step: int, threads: int, workers: int = 0
) -> Iterator[dict]:
    """Prefetching iterator over ds[start_step:], read by `threads` threads in each of
    `workers` worker processes (0: in this process). Threads share the GIL with the decoding
    and augmentation code; worker processes scale with the host's cores. The batches, and
    their order, are the same either way."""
    tail = ds[start_step:] if start_step else ds
    options = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=4)
    iterable = tail.to_iter_dataset(options)
    if workers > 0:
        iterable = iterable.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=2)
        )
    return iter(iterable)


def eval_batches(
    source,
    batch_size: int,
    process_index: int | None = None,
    process_count: int | None = None,
    threads: int = 4,
) -> Iterator[tuple[dict, int]]:
    """Every example once, in order, as (this process's rows of a global batch, valid count of
    the global batch). A global batch is `batch_size` consecutive examples, the last one padded
    by repeating the final example so shapes stay static; process p of P reads only its rows
    [p*b, (p+1)*b), b = batch_size / P. Records are decoded by `threads` threads, and the next
    batch is read while the caller works on this one (the devices score it)."""
    import collections
    from concurrent.futures import ThreadPoolExecutor

    index, processes = _processes(process_index, process_count)
    if batch_size % processes:
        raise ValueError(f"batch size {batch_size} not divisible by {processes} processes")
    rows = batch_size // processes
    total = len(source)

    def image(i: int) -> np.ndarray:
        return np.asarray(source[i]["image"], np.uint8)

    with ThreadPoolExecutor(max(threads, 1)) as decode, ThreadPoolExecutor(1) as ahead:

        def read(start: int) -> tuple[dict, int]:
            first = start + index * rows
            wanted = [min(i, total - 1) for i in range(first, first + rows)]
            return {"image": np.stack(list(decode.map(image, wanted)))}, min(
                batch_size, total - start
            )

        pending = collections.deque()
        for start in range(0, total, batch_size):
            pending.append(ahead.submit(read, start))
            if len(pending) > 1:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
