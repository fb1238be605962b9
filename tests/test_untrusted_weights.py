"""Weight files are untrusted: no pickle in them runs code, and no tensor reads outside its
storage (issue 24)."""

import collections
import os
import re

import numpy as np
import pytest
import weight_files

from mkln_jax.errors import WeightFileError
from mkln_jax.models import torch_state

ARRAYS = {
    "conv.weight": np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2),
    "bn.running_var": np.array([1.5, 2.5], np.float32),
    "bn.num_batches_tracked": np.array(7, np.int64),
}


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_both_formats_read_back_exactly(tmp_path, fmt):
    path = tmp_path / f"ok_{fmt}.pth"
    weight_files.write(path, ARRAYS, fmt)
    loaded = torch_state.load_state_dict(path)
    assert list(loaded) == list(ARRAYS)
    for name, array in ARRAYS.items():
        np.testing.assert_array_equal(loaded[name], array)
        assert loaded[name].dtype == array.dtype


def _payload_files(tmp_path, marker):
    """One file per place a pickle can hide a call: every pickle of both formats."""
    evil = weight_files.Payload(marker)
    obj, raw = weight_files.tensors_of(ARRAYS)
    storage = next(iter(obj.values())).storage
    cases = {
        "zip/value": ({**obj, "x": evil}, "zip", {}),
        "zip/tensor_offset": (
            {"w": weight_files.Tensor(storage, evil, (2,), (1,))},
            "zip",
            {},
        ),
        "zip/tensor_extra": (
            {"w": weight_files.Tensor(storage, 0, (2,), (1,), extra=(evil,))},
            "zip",
            {},
        ),
        "zip/ordered_dict_arg": (collections.OrderedDict(a=evil), "zip", {}),
        "legacy/value": ({**obj, "x": evil}, "legacy", {}),
    }
    for part in ("magic", "version", "info", "keys"):
        cases[f"legacy/{part}"] = (obj, "legacy", {part: evil})
    for name, (content, fmt, header) in cases.items():
        path = tmp_path / (name.replace("/", "_") + ".pth")
        if fmt == "zip":
            weight_files.write_zip(path, content, raw)
        else:
            weight_files.write_legacy(path, content, raw, header=header)
        yield name, path


def test_no_pickle_in_either_format_can_call_a_function(tmp_path):
    marker = tmp_path / "payload_ran"
    names = []
    for name, path in _payload_files(tmp_path, marker):
        with pytest.raises(WeightFileError, match=re.escape(str(path))):
            torch_state.load_state_dict(path)
        assert not marker.exists(), f"{name}: the payload ran"
        names.append(name)
    assert len(names) == 9


def _one_tensor(offset, shape, stride, numel=6, raw_elements=6):
    storage = weight_files.Storage("0", np.dtype("float32"), numel)
    obj = {"w": weight_files.Tensor(storage, offset, shape, stride)}
    raw = {"0": np.arange(raw_elements, dtype="<f4").tobytes()}
    return obj, raw


@pytest.mark.parametrize(
    ("case", "offset", "shape", "stride"),
    [
        ("offset past the end", 6, (1,), (1,)),
        ("shape larger than the storage", 0, (4, 4), (4, 1)),
        ("stride past the end", 0, (2, 3), (5, 1)),
        ("negative stride", 5, (6,), (-1,)),
        ("negative offset", -1, (2,), (1,)),
        ("overlapping strides (memory bomb)", 0, (10**6, 10**6), (0, 0)),
        ("shape and stride of different lengths", 0, (2, 3), (1,)),
        ("a float in the shape", 0, (2.5,), (1,)),
    ],
)
@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_tensors_are_bounds_checked_against_their_storage(
    tmp_path, fmt, case, offset, shape, stride
):
    obj, raw = _one_tensor(offset, shape, stride)
    path = tmp_path / "bad.pth"
    (weight_files.write_zip if fmt == "zip" else weight_files.write_legacy)(path, obj, raw)
    with pytest.raises(WeightFileError, match=re.escape(str(path))):
        torch_state.load_state_dict(path)


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_a_storage_shorter_than_declared_is_refused(tmp_path, fmt):
    obj, raw = _one_tensor(0, (6,), (1,), numel=6, raw_elements=4)
    path = tmp_path / "short.pth"
    (weight_files.write_zip if fmt == "zip" else weight_files.write_legacy)(path, obj, raw)
    with pytest.raises(WeightFileError, match=r"short\.pth"):
        torch_state.load_state_dict(path)


def test_a_huge_declared_storage_is_refused_before_reading(tmp_path):
    obj, raw = _one_tensor(0, (6,), (1,), numel=2**40)
    path = tmp_path / "huge.pth"
    weight_files.write_zip(path, obj, raw)
    with pytest.raises(WeightFileError, match="more than the file holds"):
        torch_state.load_state_dict(path)


def test_a_zip_bomb_is_refused(tmp_path):
    big = np.zeros(2**22, np.float32)  # 16 MiB of zeros, deflated to a few KiB
    obj, raw = weight_files.tensors_of({"w": big})
    path = tmp_path / "bomb.pth"
    weight_files.write_zip(path, obj, raw, compress=True)
    assert os.path.getsize(path) < 2**20
    with pytest.raises(WeightFileError, match="inflates"):
        torch_state.load_state_dict(path)


def test_only_regular_files_are_opened(tmp_path):
    fifo = tmp_path / "weights.pth"
    os.mkfifo(fifo)
    with pytest.raises(WeightFileError, match="FIFO"):
        torch_state.load_state_dict(fifo)
    with pytest.raises(WeightFileError, match="folder"):
        torch_state.load_state_dict(tmp_path)
