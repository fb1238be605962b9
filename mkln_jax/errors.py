"""The project's error types: each message is one line naming the file or field and the fix.

`mkln` turns any `MklnError` into `error: <message>` and a non-zero exit, never a traceback.
"""

from __future__ import annotations


class MklnError(Exception):
    """Bad input, config or state that the user can fix; the message says how."""


class UnsafeInputError(MklnError, ValueError):
    """An input file that is malformed, not a regular file, too large, or a path escaping its
    folder."""


class WeightFileError(MklnError, ValueError):
    """A weight file that cannot be read safely."""


class CheckpointError(MklnError, RuntimeError):
    """A checkpoint that is missing, incomplete or fails its checksums."""


class WorkdirError(MklnError, RuntimeError):
    """A workdir that cannot be used: not a folder, not writable, or held by another run."""
