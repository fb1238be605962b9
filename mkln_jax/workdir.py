"""The run folder: one writer at a time, and clear errors when it cannot be used.

`mkln train` holds `<workdir>/.mkln.lock` (process id, host, start time, command, and under
Slurm the job id and restart count) while it runs. A second `train` on the same folder is
refused, naming the holder. A lock is taken over, with a note, when its holder is known dead: a
process that no longer exists on this host, or an earlier run of this same Slurm job (a
requeued job restarts on any node, and Slurm starts it again only once the earlier run ended).
Read-only commands (evaluate, export) take no lock and create nothing until they write their
own outputs.
"""

from __future__ import annotations

import errno
import json
import os
import pathlib
import socket
import sys
import time

from mkln_jax.errors import WorkdirError

LOCK_NAME = ".mkln.lock"


def _describe(err: OSError) -> str:
    return err.strerror or type(err).__name__


def refuse_url(path: str | os.PathLike, what: str = "workdir") -> None:
    """Object-store URLs are refused in one line: the run folder is read and written through
    local paths (docs/scaling.md says where a pod's workdir lives), and `pathlib` would turn
    gs://bucket/run into a local folder ./gs:/bucket/run on every host."""
    text = os.fspath(path)
    if "://" in text:
        raise WorkdirError(
            f"{what} {text} is a URL; the {what} must be a folder every host mounts (NFS, "
            "Filestore, Lustre). Fix: mount the storage and give its path (docs/scaling.md)"
        )


def ensure_writable(path: str | os.PathLike, what: str = "workdir") -> pathlib.Path:
    """Creates `path` as a folder if needed; WorkdirError if it is a file, cannot be created or
    is not writable."""
    refuse_url(path, what)
    path = pathlib.Path(path)
    if path.exists() and not path.is_dir():
        raise WorkdirError(f"{what} {path} is a file, not a folder; give a folder path")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise WorkdirError(f"{what} {path} cannot be created ({_describe(err)})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise WorkdirError(f"{what} {path} is not writable; choose another folder")
    return path


def require_existing(path: str | os.PathLike, what: str = "workdir") -> pathlib.Path:
    """For read-only commands: the folder must exist already; nothing is created."""
    refuse_url(path, what)
    path = pathlib.Path(path)
    if not path.exists():
        raise WorkdirError(f"{what} {path} does not exist. Fix: run `mkln train` into it first")
    if not path.is_dir():
        raise WorkdirError(f"{what} {path} is a file, not a folder")
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


class WorkdirLock:
    """`with WorkdirLock(workdir):` holds the folder for one writer."""

    def __init__(self, workdir: str | os.PathLike, command: str = "train", log=print):
        refuse_url(workdir)
        self.workdir = pathlib.Path(workdir)
        self.path = self.workdir / LOCK_NAME
        self.command, self.log = command, log
        self.record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": " ".join(["mkln", command, *sys.argv[2:]])[:300],
        }
        if os.environ.get("SLURM_JOB_ID"):
            self.record["slurm_job"] = os.environ["SLURM_JOB_ID"]
            self.record["slurm_restart"] = _int(os.environ.get("SLURM_RESTART_COUNT", "0"))
        self.held = False

    def _holder(self) -> dict | None:
        try:
            holder = json.loads(self.path.read_text())
            return holder if isinstance(holder, dict) else {}
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        except OSError as err:
            raise WorkdirError(
                f"workdir {self.workdir}: cannot write {LOCK_NAME} ({_describe(err)})"
            ) from None
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(self.record) + "\n")
        return True

    def acquire(self) -> WorkdirLock:
        ensure_writable(self.workdir)
        for _ in range(3):
            if self._create():
                self.held = True
                return self
            holder = self._holder()
            if holder is None:
                continue  # released between our two looks
            pid, host = holder.get("pid"), holder.get("host")
            stale = self._earlier_run_of_this_job(holder) or (
                host == self.record["host"]
                and isinstance(pid, int)
                and pid != os.getpid()
                and not _alive(pid)
            )
            if not stale:
                who = (
                    f"pid {pid} on {host}, since {holder.get('started')}"
                    if pid
                    else "an unreadable lock"
                )
                raise WorkdirError(
                    f"workdir {self.workdir} is in use by another `mkln {self.command}` ({who}). "
                    f"Fix: wait for it or use another --workdir; if that process is gone, "
                    f"delete {self.path}"
                )
            self.log(
                f"note: taking over {self.path}, left by pid {pid} on {host} (started "
                f"{holder.get('started')}), which is no longer running"
            )
            self.path.unlink(missing_ok=True)
        raise WorkdirError(f"workdir {self.workdir}: could not take {self.path}")

    def _earlier_run_of_this_job(self, holder: dict) -> bool:
        job = self.record.get("slurm_job")
        restart = holder.get("slurm_restart")
        return (
            job is not None
            and holder.get("slurm_job") == job
            and isinstance(restart, int)
            and restart < self.record["slurm_restart"]
        )

    def release(self) -> None:
        if self.held:
            holder = self._holder()
            if holder and holder.get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> WorkdirLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        return 0


def is_disk_full(err: BaseException) -> bool:
    """True when `err`, or anything it was raised from, is "No space left on device"."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(err) or "Disk quota exceeded" in str(err):
            return True
        err = err.__cause__ or err.__context__
    return False
