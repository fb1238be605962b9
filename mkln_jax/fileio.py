"""Reading untrusted files and writing outputs without destroying anything.

Everything read from disk may be hostile or broken: only regular files are opened (a FIFO would
hang the reader, a device would never end), sizes are checked before reading, and paths named
inside a file must stay inside its folder. Outputs are written to a temporary file in the same
folder and renamed into place, so a crash leaves the old file or the new one, never half of one.
"""

from __future__ import annotations

import os
import pathlib
import stat
import tempfile

from mkln_jax.errors import UnsafeInputError

__all__ = ["UnsafeInputError"]


def require_regular_file(path: str | os.PathLike, what: str = "input") -> pathlib.Path:
    """`path` if it is an existing regular file (symlinks followed); else one clear error."""
    path = pathlib.Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise UnsafeInputError(f"{path}: {what} not found") from None
    except OSError as err:
        raise UnsafeInputError(f"{path}: {what} cannot be read ({err.strerror})") from None
    if not stat.S_ISREG(mode):
        kind = (
            "a folder"
            if stat.S_ISDIR(mode)
            else "a FIFO"
            if stat.S_ISFIFO(mode)
            else "a socket"
            if stat.S_ISSOCK(mode)
            else "a device"
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "not a regular file"
        )
        raise UnsafeInputError(f"{path}: {what} is {kind}; give a regular file")
    return path


def read_bytes_limited(path: str | os.PathLike, limit: int, what: str = "file") -> bytes:
    """The bytes of a regular file no larger than `limit`."""
    path = require_regular_file(path, what)
    size = path.stat().st_size
    if size > limit:
        raise UnsafeInputError(f"{path}: {what} is {size:,} bytes, more than the {limit:,} allowed")
    return path.read_bytes()


def inside(folder: str | os.PathLike, name: str) -> pathlib.Path:
    """`folder / name` where `name` is a plain relative path that stays inside `folder`."""
    folder = pathlib.Path(folder)
    relative = pathlib.PurePosixPath(name)
    if (
        not name
        or relative.is_absolute()
        or ".." in relative.parts
        or "\\" in name
        or "\x00" in name
    ):
        raise UnsafeInputError(f"{folder}: {name!r} is not a plain file name inside the folder")
    try:
        inside = (folder / relative).resolve().is_relative_to(folder.resolve())
    except (RuntimeError, OSError):  # a symlink loop
        raise UnsafeInputError(f"{folder}: {name!r} is a symlink loop") from None
    if not inside:
        raise UnsafeInputError(f"{folder}: {name!r} points outside the folder")
    return folder / relative


def atomic_write(path: str | os.PathLike, data: bytes | str) -> pathlib.Path:
    """Writes `data` to a temporary file beside `path`, flushes it, then renames it over `path`."""
    path = pathlib.Path(path)
    payload = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise
    return path


def resolved(path: str | os.PathLike) -> pathlib.Path:
    """`path` made absolute with its links followed, as far as they go: a symlink loop (which
    `Path.resolve` raises on, RuntimeError on Python 3.12) stays as the absolute path given."""
    try:
        return pathlib.Path(path).resolve()
    except (RuntimeError, OSError):
        return pathlib.Path(os.path.abspath(path))


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when `a` and `b` name one file (through links or different spellings)."""
    a, b = pathlib.Path(a), pathlib.Path(b)
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return resolved(a) == resolved(b)


def check_writable_output(
    path: str | os.PathLike, inputs: list[pathlib.Path], what: str
) -> pathlib.Path:
    """Refuses, before any work, an output that is one of the inputs, is a folder, or whose
    folder cannot be created or written. Creates the folder."""
    path = pathlib.Path(path)
    full = resolved(path)
    for item in inputs:
        if same_file(path, item) or full == resolved(item):
            raise UnsafeInputError(f"{what} {path} is also an input; choose another output path")
    if path.is_dir():
        raise UnsafeInputError(f"{what} {path} is a folder; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UnsafeInputError(
            f"{what} {path}: cannot create its folder ({err.strerror})"
        ) from None
    if not os.access(path.parent, os.W_OK | os.X_OK) or (
        path.exists() and not os.access(path, os.W_OK)
    ):
        raise UnsafeInputError(f"{what} {path}: not writable; choose another path")
    return path
