"""Per-host input (issue 19): each of P processes reads, decodes and augments only its B/P rows
of every global batch, and the assembled global batches are the same for every P; evaluation
likewise; the split index decodes no image."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

from mkln_jax.input_pipeline import loader, splits

BATCH, STEPS = 8, 3
AUGMENT = loader.HostAugment(hflip=True, jpeg_prob=0.5, blur_prob=0.5, colour_prob=0.5)


class CountingSource:
    """An in-memory split whose reads are counted (a read is a decode in a real source)."""

    def __init__(self, size: int = 37, side: int = 16):
        rng = np.random.default_rng(0)
        self.images = rng.integers(0, 256, (size, side, side, 3), dtype=np.uint8)
        self.labels = rng.integers(0, 2, size)
        self.reads = 0

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        self.reads += 1
        return {"image": self.images[i], "label": self.labels[i], "method": "real"}


def _train(process_index: int, process_count: int):
    source = CountingSource()
    ds = loader.train_batches(
        source,
        np.arange(len(source)),
        global_batch_size=BATCH,
        seed=5,
        augment=AUGMENT,
        process_index=process_index,
        process_count=process_count,
    )
    return [ds[s] for s in range(STEPS)], source.reads


@pytest.mark.parametrize("processes", [2, 4])
def test_each_process_reads_its_share_and_the_global_batches_do_not_change(processes):
    single, reads = _train(0, 1)
    assert reads == STEPS * BATCH
    parts = [_train(p, processes) for p in range(processes)]
    for _, part_reads in parts:
        assert part_reads == STEPS * BATCH // processes
    for step in range(STEPS):
        for key in ("image", "label"):
            assembled = np.concatenate([batches[step][key] for batches, _ in parts])
            np.testing.assert_array_equal(assembled, single[step][key])


@pytest.mark.parametrize("processes", [2, 4])
def test_evaluation_reads_each_share_once_and_pads_the_same_way(processes):
    source = CountingSource(size=21)
    single = list(loader.eval_batches(source, BATCH, 0, 1))
    assert source.reads == 3 * BATCH  # 21 examples, the last batch padded by repetition
    for p in range(processes):
        part = CountingSource(size=21)
        batches = list(loader.eval_batches(part, BATCH, p, processes))
        assert part.reads == 3 * BATCH // processes
        rows = slice(p * BATCH // processes, (p + 1) * BATCH // processes)
        for (local, valid), (whole, whole_valid) in zip(batches, single, strict=True):
            assert valid == whole_valid
            np.testing.assert_array_equal(local["image"], whole["image"][rows])


def test_worker_processes_give_the_same_batches_as_threads():
    def first_batches(workers: int):
        ds = loader.train_batches(
            CountingSource(), np.arange(37), global_batch_size=BATCH, seed=5, augment=AUGMENT
        )
        it = loader.iterate_from(ds, 1, threads=2, workers=workers)
        return [next(it) for _ in range(STEPS)]

    for threaded, in_workers in zip(first_batches(0), first_batches(2), strict=True):
        np.testing.assert_array_equal(threaded["image"], in_workers["image"])
        np.testing.assert_array_equal(threaded["label"], in_workers["label"])


def test_the_split_index_decodes_no_image(monkeypatch):
    import tensorflow_datasets as tfds

    from mkln_jax import config_lib
    from mkln_jax.input_pipeline import prepare

    config = config_lib.load("tiny")
    prepare.prepare(config)  # already built by the session's warm-up, else once
    decoded = []
    original = tfds.features.Image.decode_example_np

    def counting(self, *args, **kwargs):
        decoded.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(tfds.features.Image, "decode_example_np", counting)
    data_dir = config_lib.data_dir(config)
    index = splits.split_index(config.data, data_dir, "train")
    assert len(index.labels) > 0 and not decoded
    full = splits.read_index(splits.open_split(config.data, data_dir, "train"))
    assert decoded  # the same read with images decodes every one of them
    np.testing.assert_array_equal(full.labels, index.labels)
    np.testing.assert_array_equal(full.video_ids, index.video_ids)


WORKER = """
import json, sys
import jax
jax.distributed.initialize(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
import numpy as np
sys.path.insert(0, sys.argv[5])
from test_input_per_host import AUGMENT, BATCH, STEPS, CountingSource
from mkln_jax.input_pipeline import loader, splits
source = CountingSource()
ds = loader.train_batches(source, np.arange(len(source)), global_batch_size=BATCH, seed=5,
                          augment=AUGMENT)
batches = [ds[s] for s in range(STEPS)]
np.savez(sys.argv[4], reads=source.reads, process=jax.process_index(),
         **{f"image{s}": b["image"] for s, b in enumerate(batches)})
"""


@pytest.mark.slow
@pytest.mark.parametrize("processes", [2, 4])
def test_processes_joined_by_jax_distributed_read_only_their_rows(tmp_path, processes):
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    here = str(pathlib.Path(__file__).parent)
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                WORKER,
                f"localhost:{port}",
                str(processes),
                str(p),
                str(tmp_path / f"p{p}.npz"),
                here,
            ],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for p in range(processes)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    single, _ = _train(0, 1)
    parts = [np.load(tmp_path / f"p{p}.npz") for p in range(processes)]
    assert [int(part["process"]) for part in parts] == list(range(processes))
    assert json.dumps([int(part["reads"]) for part in parts]) == json.dumps(
        [STEPS * BATCH // processes] * processes
    )
    for step in range(STEPS):
        assembled = np.concatenate([part[f"image{step}"] for part in parts])
        np.testing.assert_array_equal(assembled, single[step]["image"])
