"""Read `.safetensors` weight files without torch, and without trusting them.

The format (huggingface/safetensors): an 8-byte little-endian header length N, N bytes of JSON
mapping each tensor name to {"dtype", "shape", "data_offsets": [begin, end]} (offsets into the
byte buffer that follows; an optional "__metadata__" of strings), then the buffer. Everything is
checked before any array is made: the header's size and JSON, each dtype, shape and offset
pair, that a tensor's bytes are exactly its shape times its item size, and that tensors neither
overlap nor leave gaps in the buffer. bfloat16 tensors come back as ml_dtypes.bfloat16 arrays.
"""

from __future__ import annotations

import json
import math
import pathlib

import ml_dtypes
import numpy as np

from mkln_jax import fileio
from mkln_jax.errors import WeightFileError

DTYPES = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
# The reference implementation refuses headers over 100 MB.
MAX_HEADER_BYTES = 100_000_000


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def read_header(path: pathlib.Path, file_size: int) -> tuple[dict, int]:
    """(the checked header without __metadata__, the offset where the buffer starts)."""
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) != 8:
            raise WeightFileError(f"{path}: shorter than a safetensors header")
        length = int.from_bytes(prefix, "little")
        if length > MAX_HEADER_BYTES or 8 + length > file_size:
            raise WeightFileError(f"{path}: header length {length} exceeds the file or the limit")
        raw = f.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise WeightFileError(f"{path}: header is not JSON ({err})") from None
    if not isinstance(header, dict):
        raise WeightFileError(f"{path}: header is not a JSON object")
    meta = header.pop("__metadata__", {})
    if not isinstance(meta, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in meta.items()
    ):
        raise WeightFileError(f"{path}: __metadata__ must map strings to strings")
    buffer = file_size - 8 - length
    spans = []
    for name, info in header.items():
        if not isinstance(info, dict):
            raise WeightFileError(f"{path}: tensor {name!r:.60} is not described by an object")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if not isinstance(dtype, str) or dtype not in DTYPES:
            raise WeightFileError(f"{path}: tensor {name!r:.60} has unknown dtype {dtype!r:.20}")
        if (
            not isinstance(shape, list)
            or len(shape) > 16
            or not all(_is_int(n) and n >= 0 for n in shape)
        ):
            raise WeightFileError(f"{path}: tensor {name!r:.60} has a bad shape {shape!r:.60}")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(_is_int(o) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= buffer
        ):
            raise WeightFileError(
                f"{path}: tensor {name!r:.60} has offsets {offsets!r:.60} outside the "
                f"{buffer}-byte buffer"
            )
        if offsets[1] - offsets[0] != math.prod(shape) * DTYPES[dtype].itemsize:
            raise WeightFileError(
                f"{path}: tensor {name!r:.60} spans {offsets[1] - offsets[0]} bytes, its "
                f"shape {shape} of {dtype} needs {math.prod(shape) * DTYPES[dtype].itemsize}"
            )
        spans.append((offsets[0], offsets[1], name))
    end = 0
    for begin, stop, name in sorted(spans):
        if begin != end:
            raise WeightFileError(
                f"{path}: tensor {name!r:.60} starts at byte {begin}, not {end} (tensors must "
                "be contiguous, without overlaps or gaps)"
            )
        end = stop
    if end != buffer:
        raise WeightFileError(f"{path}: {buffer - end} bytes after the last tensor")
    return header, 8 + length


def load(path: str | pathlib.Path) -> dict[str, np.ndarray]:
    """{name: array} of a `.safetensors` file; WeightFileError naming the file on any fault."""
    path = pathlib.Path(path)
    try:
        fileio.require_regular_file(path, "weight file")
    except fileio.UnsafeInputError as err:
        raise WeightFileError(str(err)) from None
    size = path.stat().st_size
    header, start = read_header(path, size)
    out = {}
    if size > start:
        data = np.memmap(path, dtype=np.uint8, mode="r", offset=start)
    for name, info in sorted(header.items(), key=lambda item: item[1]["data_offsets"][0]):
        begin, stop = info["data_offsets"]
        dtype = DTYPES[info["dtype"]]
        if stop == begin:
            out[name] = np.zeros(info["shape"], dtype)
            continue
        out[name] = np.array(data[begin:stop].view(dtype).reshape(info["shape"]))
    return out


def save(path: str | pathlib.Path, tensors: dict[str, np.ndarray], metadata=None) -> None:
    """Writes `tensors` in the safetensors layout (for tests and converted weights)."""
    names = {v: k for k, v in DTYPES.items()}
    header, offset, blobs = {}, 0, []
    for name, array in tensors.items():
        array = np.ascontiguousarray(array)
        blob = array.astype(array.dtype.newbyteorder("<")).tobytes()
        header[name] = {
            "dtype": names[array.dtype],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(blob)],
        }
        offset += len(blob)
        blobs.append(blob)
    if metadata:
        header["__metadata__"] = dict(metadata)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the reference pads the header to 8 bytes
    fileio.atomic_write(path, len(raw).to_bytes(8, "little") + raw + b"".join(blobs))
