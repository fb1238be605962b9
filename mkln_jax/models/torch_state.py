"""Read PyTorch state dicts (`.pth`) without importing torch, and without trusting them.

Both of torch's formats are handled: the zip format (torch >= 1.6: `archive/data.pkl` plus one
raw file per storage) and the legacy format (a sequence of pickles followed by the raw storages).
Every pickle of either format goes through one restricted unpickler: it rebuilds tensors and
ordered dicts and refuses any other global, so a weight file cannot run code on load. Storage
sizes are checked against the bytes present, and each tensor's offset, shape and strides against
its storage, before any array is made. Any malformed file ends in `WeightFileError`.
"""

from __future__ import annotations

import collections
import io
import math
import pathlib
import pickle
import zipfile

import ml_dtypes
import numpy as np

from mkln_jax import fileio
from mkln_jax.errors import WeightFileError

_STORAGE_DTYPES = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
# A state dict's pickle holds names and tensor references only (a few MB for the largest zoo
# model); a larger one is not a state dict.
_MAX_PICKLE_BYTES = 256 * 2**20
_MAX_DIMS = 16
# Storages are stored uncompressed by torch; a member inflating more than this is a zip bomb.
_MAX_COMPRESSION_RATIO = 64


class _StorageType:
    def __init__(self, name: str):
        self.name, self.dtype = name, _STORAGE_DTYPES[name]


class _LazyStorage:
    def __init__(self, key: str, dtype: np.dtype, numel: int):
        self.key, self.dtype, self.numel = key, dtype, numel
        self.array: np.ndarray | None = None


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class _TensorRef:
    def __init__(self, storage: _LazyStorage, offset: int, shape: tuple, stride: tuple):
        self.storage, self.offset, self.shape, self.stride = storage, offset, shape, stride

    def materialise(self) -> np.ndarray:
        """A copy of the tensor's elements, once its view is proven to lie inside the storage."""
        flat = self.storage.array
        if flat is None or flat.size != self.storage.numel:
            raise WeightFileError(f"storage {self.storage.key} has no data")
        count = math.prod(self.shape)
        if count == 0:
            return np.zeros(self.shape, flat.dtype)
        last = self.offset + sum((n - 1) * s for n, s in zip(self.shape, self.stride, strict=True))
        if last >= flat.size:
            raise WeightFileError(
                f"a tensor of shape {self.shape}, strides {self.stride} at offset {self.offset} "
                f"reaches element {last} of storage {self.storage.key}, which has {flat.size}"
            )
        if count > flat.size:  # overlapping strides: a memory bomb, never a saved parameter
            raise WeightFileError(
                f"a tensor of shape {self.shape} ({count} elements) views storage "
                f"{self.storage.key} of {flat.size} elements"
            )
        view = np.lib.stride_tricks.as_strided(
            flat[self.offset :],
            shape=self.shape,
            strides=tuple(s * flat.dtype.itemsize for s in self.stride),
            writeable=False,
        )
        return np.array(view)


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
    if not isinstance(storage, _LazyStorage):
        raise WeightFileError("a tensor without a storage")
    if not isinstance(size, tuple | list) or not isinstance(stride, tuple | list):
        raise WeightFileError("a tensor whose size or stride is not a tuple")
    size, stride = tuple(size), tuple(stride)
    if (
        len(size) != len(stride)
        or len(size) > _MAX_DIMS
        or not all(_is_int(v) and v >= 0 for v in (*size, *stride))
        or not _is_int(storage_offset)
        or storage_offset < 0
    ):
        raise WeightFileError(
            f"a tensor with size {size!r}, stride {stride!r}, offset {storage_offset!r}"
        )
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, *unused):
    if not isinstance(data, _TensorRef):
        raise WeightFileError("a parameter that is not a tensor")
    return data


class _Unpickler(pickle.Unpickler):
    """The only way a pickle is read here. With `storages` None (the legacy format's header
    pickles), no global and no storage may appear at all."""

    def __init__(self, file, storages: dict[str, _LazyStorage] | None, max_bytes: int):
        super().__init__(file)
        self.storages, self.max_bytes = storages, max_bytes

    def find_class(self, module: str, name: str):
        if self.storages is not None:
            if (module, name) == ("collections", "OrderedDict"):
                return collections.OrderedDict
            if module == "torch._utils" and name == "_rebuild_tensor_v2":
                return _rebuild_tensor
            if module == "torch._utils" and name == "_rebuild_parameter":
                return _rebuild_parameter
            if module == "torch" and name in _STORAGE_DTYPES:
                return _StorageType(name)
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name}: only tensors and dicts are read from state dicts"
        )

    def persistent_load(self, pid):
        if self.storages is None:
            raise pickle.UnpicklingError("a storage outside the state dict's pickle")
        if not isinstance(pid, tuple) or len(pid) < 5 or pid[0] != "storage":
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r:.80}")
        _, storage_type, key, _location, numel = pid[:5]
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"unknown storage type {storage_type!r:.80}")
        if not isinstance(key, str | int) or not _is_int(numel) or numel < 0:
            raise pickle.UnpicklingError(f"bad storage key {key!r:.40} or size {numel!r:.40}")
        if numel * storage_type.dtype.itemsize > self.max_bytes:
            raise pickle.UnpicklingError(
                f"storage {key} claims {numel} elements, more than the file holds"
            )
        key = str(key)
        storage = self.storages.get(key)
        if storage is None:
            storage = self.storages[key] = _LazyStorage(key, storage_type.dtype, numel)
        elif storage.dtype != storage_type.dtype or storage.numel != numel:
            raise pickle.UnpicklingError(f"storage {key} declared twice with different types")
        return storage


def _materialise(obj, depth: int = 0):
    if depth > 64:
        raise WeightFileError("dicts nested more than 64 deep")
    if isinstance(obj, _TensorRef):
        return obj.materialise()
    if isinstance(obj, dict):
        return collections.OrderedDict((k, _materialise(v, depth + 1)) for k, v in obj.items())
    return obj


def _load_zip(path: pathlib.Path) -> dict:
    with zipfile.ZipFile(path) as archive:
        members = {info.filename: info for info in archive.infolist()}
        pkl = [n for n in members if n.endswith("/data.pkl") or n == "data.pkl"]
        if not pkl:
            raise WeightFileError(f"{path}: zip without data.pkl; not a PyTorch checkpoint")
        prefix = pkl[0][: -len("data.pkl")]

        def read(name: str, expected: int | None, what: str) -> bytes:
            info = members.get(name)
            if info is None:
                raise WeightFileError(f"{path}: {what} {name} is missing")
            if expected is not None and info.file_size != expected:
                raise WeightFileError(
                    f"{path}: {what} {name} holds {info.file_size} bytes, {expected} expected"
                )
            if info.file_size > max(info.compress_size, 1) * _MAX_COMPRESSION_RATIO + 2**20:
                raise WeightFileError(f"{path}: {name} inflates {info.file_size} bytes")
            data = archive.read(name)
            if len(data) != info.file_size:
                raise WeightFileError(f"{path}: {name} is truncated")
            return data

        if members[pkl[0]].file_size > _MAX_PICKLE_BYTES:
            raise WeightFileError(f"{path}: {pkl[0]} is too large for a state dict")
        storages: dict[str, _LazyStorage] = {}
        max_bytes = sum(info.file_size for info in members.values())
        data = read(pkl[0], None, "pickle")
        obj = _Unpickler(io.BytesIO(data), storages, max_bytes).load()
        for key, storage in storages.items():
            raw = read(f"{prefix}data/{key}", storage.numel * storage.dtype.itemsize, "storage")
            storage.array = np.frombuffer(raw, dtype=storage.dtype)
    return obj


def _load_legacy(path: pathlib.Path, file_size: int) -> dict:
    def header(f):
        return _Unpickler(f, None, 0).load()

    with open(path, "rb") as f:
        magic = header(f)
        if magic != _LEGACY_MAGIC:
            raise WeightFileError(f"{path}: not a PyTorch checkpoint (bad magic number)")
        header(f)  # protocol version
        header(f)  # system info
        storages: dict[str, _LazyStorage] = {}
        obj = _Unpickler(f, storages, file_size).load()
        keys = header(f)
        if not isinstance(keys, list | tuple) or len(keys) != len(storages):
            raise WeightFileError(f"{path}: storage list does not match the tensors")
        for key in keys:
            storage = storages.get(str(key))
            if storage is None:
                raise WeightFileError(f"{path}: storage {key!r:.40} is not used by any tensor")
            count = f.read(8)
            if len(count) != 8:
                raise WeightFileError(f"{path}: truncated before storage {key}")
            numel = int(np.frombuffer(count, dtype="<i8")[0])
            if numel != storage.numel:
                raise WeightFileError(
                    f"{path}: storage {key} holds {numel} elements, {storage.numel} declared"
                )
            raw = f.read(numel * storage.dtype.itemsize)
            if len(raw) != numel * storage.dtype.itemsize:
                raise WeightFileError(f"{path}: storage {key} is truncated")
            storage.array = np.frombuffer(raw, dtype=storage.dtype)
    return obj


def load_state_dict(path: str | pathlib.Path) -> dict[str, np.ndarray]:
    """Reads a PyTorch state dict into {name: numpy array}; nested 'state_dict' is unwrapped.
    Raises WeightFileError, naming the file, on anything that is not a well-formed state dict."""
    path = pathlib.Path(path)
    try:
        fileio.require_regular_file(path, "weight file")
    except fileio.UnsafeInputError as err:
        raise WeightFileError(str(err)) from None
    try:
        if zipfile.is_zipfile(path):
            obj = _materialise(_load_zip(path))
        else:
            obj = _materialise(_load_legacy(path, path.stat().st_size))
    except WeightFileError as err:
        message = str(err)
        raise WeightFileError(
            message if message.startswith(str(path)) else f"{path}: {message}"
        ) from None
    except Exception as err:  # anything else the parsers raise on malformed bytes
        raise WeightFileError(
            f"{path}: not a readable PyTorch state dict ({type(err).__name__}: {err})"[:500]
        ) from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise WeightFileError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    return {str(k): v for k, v in obj.items() if isinstance(v, np.ndarray)}
