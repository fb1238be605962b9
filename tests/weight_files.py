"""PyTorch state-dict files written without torch, well-formed or hostile, for the loader tests.

torch's pickles name `torch._utils._rebuild_tensor_v2` and `torch.FloatStorage`; fake modules
under those names let the standard pickler write them. A `Payload` pickles as a call of
`os.system`, the classic way a `.pth` runs code on load.
"""

from __future__ import annotations

import collections
import contextlib
import io
import os
import pickle
import struct
import sys
import types
import zipfile

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
STORAGE_NAMES = {
    np.dtype("float32"): "FloatStorage",
    np.dtype("float64"): "DoubleStorage",
    np.dtype("float16"): "HalfStorage",
    np.dtype("int64"): "LongStorage",
    np.dtype("int32"): "IntStorage",
    np.dtype("uint8"): "ByteStorage",
    np.dtype("bool"): "BoolStorage",
}


class Payload:
    """Pickles as `os.system(command)`: if a loader ever calls it, `marker` appears."""

    def __init__(self, marker):
        self.command = f"touch {marker}"

    def __reduce__(self):
        return (os.system, (self.command,))


class Storage:
    def __init__(self, key: str, dtype: np.dtype, numel: int):
        self.key, self.dtype, self.numel = key, dtype, numel


class Tensor:
    """A tensor reference as torch pickles it; offset, shape and stride may lie."""

    def __init__(self, storage: Storage, offset: int, shape: tuple, stride: tuple, extra=()):
        self.storage, self.offset, self.shape, self.stride = storage, offset, shape, stride
        self.extra = extra

    def __reduce__(self):
        rebuild = sys.modules["torch._utils"]._rebuild_tensor_v2
        args = (self.storage, self.offset, self.shape, self.stride, False, *self.extra)
        return (rebuild, (*args, collections.OrderedDict()))


@contextlib.contextmanager
def _fake_torch():
    fake_torch = types.ModuleType("torch")
    fake_utils = types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):
        raise AssertionError("only pickled, never called")

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    fake_utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    for name in STORAGE_NAMES.values():
        cls = type(name, (), {})
        cls.__module__, cls.__qualname__ = "torch", name
        setattr(fake_torch, name, cls)
    fake_torch._utils = fake_utils
    saved = {k: sys.modules.get(k) for k in ("torch", "torch._utils")}
    sys.modules["torch"], sys.modules["torch._utils"] = fake_torch, fake_utils
    try:
        yield fake_torch
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def _pickle(obj, legacy: bool) -> bytes:
    with _fake_torch() as torch:

        class Pickler(pickle.Pickler):
            def persistent_id(self, obj):
                if isinstance(obj, Storage):
                    kind = getattr(torch, STORAGE_NAMES[obj.dtype])
                    pid = ("storage", kind, obj.key, "cpu", obj.numel)
                    return (*pid, None) if legacy else pid
                return None

        buffer = io.BytesIO()
        Pickler(buffer, protocol=2).dump(obj)
        return buffer.getvalue()


def tensors_of(arrays: dict[str, np.ndarray]) -> tuple[dict, dict[str, bytes]]:
    """(the state dict's pickled object, {storage key: raw bytes}) for plain arrays."""
    obj, raw = collections.OrderedDict(), {}
    for i, (name, array) in enumerate(arrays.items()):
        array = np.ascontiguousarray(array)
        storage = Storage(str(i), array.dtype, array.size)
        strides = tuple(s // array.itemsize for s in array.strides)
        obj[name] = Tensor(storage, 0, array.shape, strides)
        raw[str(i)] = array.astype(array.dtype.newbyteorder("<")).tobytes()
    return obj, raw


def write_zip(path, obj, raw: dict[str, bytes], *, compress: bool = False) -> None:
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", compression=method) as archive:
        archive.writestr("archive/data.pkl", _pickle(obj, legacy=False))
        archive.writestr("archive/version", "3\n")
        for key, data in raw.items():
            archive.writestr(f"archive/data/{key}", data)


def write_legacy(path, obj, raw: dict[str, bytes], *, header: dict | None = None) -> None:
    """torch's legacy format: magic, protocol version, system info, the object, the storage
    keys (five pickles), then each storage as an int64 element count and its bytes. `header`
    replaces any of the other pickles ("magic", "version", "info", "keys") by another object."""
    header = header or {}
    dtypes = _storage_dtypes(obj)
    with open(path, "wb") as f:
        f.write(_pickle(header.get("magic", LEGACY_MAGIC), legacy=True))
        f.write(_pickle(header.get("version", 1001), legacy=True))
        info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"int": 4}}
        f.write(_pickle(header.get("info", info), legacy=True))
        f.write(_pickle(obj, legacy=True))
        f.write(_pickle(header.get("keys", list(raw)), legacy=True))
        for key, data in raw.items():
            itemsize = dtypes.get(key, np.dtype("float32")).itemsize
            f.write(struct.pack("<q", len(data) // itemsize))
            f.write(data)


def _storage_dtypes(obj) -> dict[str, np.dtype]:
    out = {}
    if isinstance(obj, dict):
        for value in obj.values():
            out.update(_storage_dtypes(value))
    elif isinstance(obj, Tensor):
        out[obj.storage.key] = obj.storage.dtype
    return out


def write(path, arrays: dict[str, np.ndarray], fmt: str = "zip") -> None:
    obj, raw = tensors_of(arrays)
    (write_zip if fmt == "zip" else write_legacy)(path, obj, raw)


def torch_layout(model, scheme: str = "", dtype=None, include_head: bool = True) -> dict:
    """A zoo model's variables as a state dict of its PyTorch reference (or of `scheme`'s
    names): conv kernels back to [O, I, kh, kw], linear weights transposed."""
    from mkln_jax.models import convert

    out = {}
    for name, variable, transform in convert.entries(model, include_head, scheme):
        value = np.asarray(variable.get_value())
        if transform is convert._conv:
            value = np.transpose(value, (3, 2, 0, 1))
        elif transform is convert._linear:
            value = value.T
        value = np.ascontiguousarray(value)
        out[name] = value.astype(dtype) if dtype is not None else value
    return out
