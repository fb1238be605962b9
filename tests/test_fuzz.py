"""Fuzzing the loaders of untrusted files in-process (issue 24): malformed torch files of both
formats, safetensors headers, artifact metadata, media files and config files. Each case must
load, or fail with one of the project's own errors: no other exception, no crash (a segfault
ends the test run), and no payload executed.

Seeded random mutations of valid files, so a failure reproduces. `python tests/test_fuzz.py`
prints the per-category table that docs/architecture.md quotes.
"""

from __future__ import annotations

import collections
import json
import os
import pathlib
import random
import sys
import tempfile
import time

import cv2
import numpy as np
import weight_files

from mkln_jax import config_lib, export, predict
from mkln_jax.errors import MklnError, WeightFileError
from mkln_jax.models import safetensors_file, torch_state

ALLOWED = (MklnError, predict.PredictError)


def _mutate(data: bytes, rng: random.Random) -> bytes:
    """One to eight random edits: bit flips, byte overwrites, truncation, insertion, deletion,
    duplication of a span."""
    data = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        if not data:
            data += bytes([rng.randrange(256)])
            continue
        kind, at = rng.randrange(6), rng.randrange(len(data))
        if kind == 0:
            data[at] ^= 1 << rng.randrange(8)
        elif kind == 1:
            data[at] = rng.choice([0, 255, 0x7F, 0x80, rng.randrange(256)])
        elif kind == 2:
            del data[at:]
        elif kind == 3:
            data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        elif kind == 4:
            del data[at : at + rng.randint(1, 64)]
        else:
            data[at:at] = data[at : at + rng.randint(1, 256)]
    return bytes(data)


class Tally:
    def __init__(self):
        self.cases = collections.Counter()
        self.loaded = collections.Counter()
        self.failures: list[str] = []

    def run(self, category: str, fn, *args) -> None:
        self.cases[category] += 1
        try:
            fn(*args)
            self.loaded[category] += 1
        except ALLOWED:
            pass
        except BaseException as err:  # the fuzz suite's whole point: nothing else may escape
            self.failures.append(f"{category}: {type(err).__name__}: {str(err)[:200]}")


def _torch_files(root: pathlib.Path, rng: random.Random, marker: pathlib.Path, count: int):
    arrays = {
        "a.weight": np.arange(24, dtype=np.float32).reshape(2, 3, 4),
        "a.bias": np.array([1, 2], np.int64),
        "b.running_mean": np.ones(3, np.float16),
    }
    for fmt in ("zip", "legacy"):
        valid = root / f"valid_{fmt}.pth"
        weight_files.write(valid, arrays, fmt)
        base = valid.read_bytes()
        for i in range(count):
            path = root / f"{fmt}_{i}.pth"
            if i % 4 == 0:  # structural: lying offsets, shapes and strides, or a payload
                obj, raw = weight_files.tensors_of(arrays)
                storage = next(iter(obj.values())).storage
                shape = tuple(rng.randint(-2, 40) for _ in range(rng.randint(0, 4)))
                stride = tuple(rng.choice([0, 1, 2, 7, 10**12, -1]) for _ in shape)
                obj["z"] = weight_files.Tensor(storage, rng.randint(-1, 30), shape, stride)
                if rng.random() < 0.3:
                    obj["evil"] = weight_files.Payload(marker)
                writer = weight_files.write_zip if fmt == "zip" else weight_files.write_legacy
                writer(path, obj, raw)
            else:
                path.write_bytes(_mutate(base, rng))
            yield f"torch {fmt}", path


def _safetensors_files(root: pathlib.Path, rng: random.Random, count: int):
    import ml_dtypes

    valid = root / "valid.safetensors"
    safetensors_file.save(
        valid,
        {
            "w": np.arange(12, dtype=np.float32).reshape(3, 4),
            "h": np.ones(5, ml_dtypes.bfloat16),
            "n": np.array([3], np.int64),
        },
        {"format": "pt"},
    )
    base = valid.read_bytes()
    length = int.from_bytes(base[:8], "little")
    header = json.loads(base[8 : 8 + length])
    for i in range(count):
        path = root / f"st_{i}.safetensors"
        if i % 2 == 0:  # header fields changed to hostile values
            changed = json.loads(json.dumps(header))
            name = rng.choice([k for k in changed if k != "__metadata__"])
            field = rng.choice(["dtype", "shape", "data_offsets"])
            changed[name][field] = rng.choice(
                [None, "F128", [], [-1], [10**18], [0, 10**15], [5, 3], [0], "x", {"a": 1}, 7.5]
            )
            raw = json.dumps(changed).encode()
            declared = len(raw) if rng.random() < 0.8 else rng.choice([0, 2**63, len(raw) + 9])
            path.write_bytes(declared.to_bytes(8, "little") + raw + base[8 + length :])
        else:
            path.write_bytes(_mutate(base, rng))
        yield path


def _artifact(root: pathlib.Path) -> tuple[pathlib.Path, dict]:
    """A small valid artifact (a jax.export program, weights, metadata) made without training."""
    import jax
    import jax.numpy as jnp

    def infer(weights, images):
        x = images.astype(jnp.float32).mean(axis=(1, 2, 3)) / 255.0
        return jax.nn.sigmoid(x * weights["w"] + weights["b"])

    (batch,) = jax.export.symbolic_shape("b")
    weights = {"w": np.float32(2.0), "b": np.float32(-1.0)}
    specs = {k: jax.ShapeDtypeStruct((), jnp.float32) for k in weights}
    exported = jax.export.export(jax.jit(infer))(
        specs, jax.ShapeDtypeStruct((batch, 16, 16, 3), jnp.uint8)
    )
    folder = root / "artifact"
    folder.mkdir()
    (folder / export.PROGRAM).write_bytes(exported.serialize())
    np.savez(folder / export.WEIGHTS, **weights)
    meta = {
        "format_version": export.FORMAT_VERSION,
        "input_size": 16,
        "threshold": 0.5,
        "num_frames": 4,
        "face_crop": {"detector": "opencv_haar_frontalface", "margin": 1.3},
        "sha256": {
            name: export._sha256(folder / name) for name in (export.PROGRAM, export.WEIGHTS)
        },
    }
    (folder / export.METADATA).write_text(json.dumps(meta))
    return folder, meta


def _metadata_cases(folder: pathlib.Path, meta: dict, rng: random.Random, count: int):
    values = [None, True, -1, 0, 0.5, 1.01, 1e308, float("nan"), "x", [], {}, [1], "../x"]
    path = folder / export.METADATA
    for i in range(count):
        if i % 3 == 2:
            path.write_bytes(_mutate(json.dumps(meta).encode(), rng))
        else:
            changed = json.loads(json.dumps(meta))
            for _ in range(rng.randint(1, 3)):
                key = rng.choice([*changed, "extra"])
                if key == "sha256" and rng.random() < 0.5:
                    changed[key] = {
                        rng.choice(["../../etc/passwd", "/etc/hostname", "weights.npz", ""]): "0",
                        export.PROGRAM: meta["sha256"][export.PROGRAM],
                    }
                elif key == "face_crop" and rng.random() < 0.5:
                    changed[key] = {"margin": rng.choice(values)}
                else:
                    changed[key] = rng.choice(values)
            path.write_text(json.dumps(changed))
        yield folder


def _media_files(root: pathlib.Path, rng: random.Random, count: int):
    frames = [np.full((48, 64, 3), 40 * k, np.uint8) for k in range(6)]
    video = root / "valid.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10, (64, 48))
    for frame in frames:
        writer.write(frame)
    writer.release()
    image = root / "valid.png"
    cv2.imwrite(str(image), frames[3])
    bases = [(video, ".mp4"), (image, ".png"), (image, ".jpg"), (video, ".gif")]
    for i in range(count):
        source, suffix = bases[i % len(bases)]
        path = root / f"media_{i}{suffix}"
        path.write_bytes(_mutate(source.read_bytes(), rng))
        yield path


CONFIG_TEXT = '''"""A config variant."""

from mkln_jax.configs import default


def get_config():
    config = default.get_config()
    config.data.image_size = 32
    config.teacher.steps = 4
    config.student.batch_size = 8
    config.distill.temperature = 4.0
    config.stages = ("teacher", "student")
    return config
'''


def _config_files(root: pathlib.Path, rng: random.Random, count: int):
    # No '*', so no mutation can write a huge power; no quotes inserted, so no new strings.
    alphabet = "abcdefgxyz_.,:()[]{}=+-0123456789 \n\t#"
    for i in range(count):
        text = list(CONFIG_TEXT)
        for _ in range(rng.randint(1, 6)):
            at = rng.randrange(len(text))
            if rng.random() < 0.5:
                del text[at : at + rng.randint(1, 8)]
            else:
                text[at:at] = rng.choices(alphabet, k=rng.randint(1, 4))
        path = root / f"config_{i}.py"
        path.write_text("".join(text))
        yield path


def run_all(seed: int = 0, scale: int = 1) -> Tally:
    """Every category, `scale` times the base counts."""
    rng = random.Random(seed)
    tally = Tally()
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        marker = root / "payload_ran"
        for category, path in _torch_files(root, rng, marker, 150 * scale):
            tally.run(category, torch_state.load_state_dict, path)
        for path in _safetensors_files(root, rng, 150 * scale):
            tally.run("safetensors", safetensors_file.load, path)
        artifact, meta = _artifact(root)
        for folder in _metadata_cases(artifact, meta, rng, 100 * scale):
            tally.run("artifact metadata", export.Artifact, folder)
        for path in _media_files(root, rng, 40 * scale):
            tally.run("media", predict._load_frames, path, 4)
        for path in _config_files(root, rng, 60 * scale):
            tally.run("config file", config_lib.load_file, path)
        if marker.exists():
            tally.failures.append("a payload ran")
    return tally


def test_malformed_untrusted_files_fail_only_with_our_own_errors():
    tally = run_all(seed=0, scale=2)
    assert not tally.failures, "\n".join(tally.failures[:20])
    assert sum(tally.cases.values()) >= 1200
    # A loader that refused everything would pass the line above: some mutants stay valid.
    assert all(tally.loaded[c] > 0 for c in tally.cases), tally.loaded


def test_a_valid_safetensors_file_round_trips_with_bfloat16(tmp_path):
    import ml_dtypes

    tensors = {
        "a": np.arange(6, dtype=np.float32).reshape(2, 3),
        "b": np.array([1.5, -2.0], ml_dtypes.bfloat16),
        "c": np.zeros((0, 4), np.float16),
    }
    path = tmp_path / "w.safetensors"
    safetensors_file.save(path, tensors, {"format": "pt"})
    loaded = safetensors_file.load(path)
    for name, array in tensors.items():
        assert loaded[name].dtype == array.dtype
        np.testing.assert_array_equal(loaded[name], array)


def test_safetensors_offsets_outside_or_overlapping_are_refused(tmp_path):
    path = tmp_path / "w.safetensors"
    header = {
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
    }
    raw = json.dumps(header).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + bytes(12))
    import pytest

    with pytest.raises(WeightFileError, match="contiguous"):
        safetensors_file.load(path)
    header["b"]["data_offsets"] = [8, 10**12]
    raw = json.dumps(header).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + bytes(16))
    with pytest.raises(WeightFileError, match="outside"):
        safetensors_file.load(path)


if __name__ == "__main__":
    scale = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    start = time.time()
    result = run_all(seed=0, scale=scale)
    print("| category | cases | loaded | refused with our error | other exceptions |")
    print("|---|---|---|---|---|")
    for name in result.cases:
        bad = sum(f.startswith(name + ":") for f in result.failures)
        refused = result.cases[name] - result.loaded[name] - bad
        print(f"| {name} | {result.cases[name]} | {result.loaded[name]} | {refused} | {bad} |")
    print(f"payloads executed: {int(any('payload' in f for f in result.failures))}")
    print(f"{time.time() - start:.1f} s, pid {os.getpid()}")
    for failure in result.failures[:20]:
        print(failure)
