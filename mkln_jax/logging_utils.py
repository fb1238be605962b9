"""Training logs: JSON lines + TensorBoard event files, a progress line with rate and ETA, and
the trainer's own lines, printed and kept with time stamps in <stage>/logs/train.log."""

from __future__ import annotations

import json
import logging
import pathlib
import sys
import time

import jax
import numpy as np


class _LibraryNotices(logging.Filter):
    """Drops two library warnings about what we asked for: orbax's that a manager we opened
    read-only is read-only (one per evaluation, export and teacher load), and TFDS's that a
    dataset has a custom config (every prepared dataset does; it printed the whole config on
    one line of 1,000+ characters)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(
            ("Given directory is read only", "Using custom data configuration")
        )


def quiet_library_notices() -> None:
    """Installs the filter above on absl's logger (orbax and TFDS log through it); `mkln`
    calls this at start, importing the package does not."""
    logger = logging.getLogger("absl")
    if not any(isinstance(f, _LibraryNotices) for f in logger.filters):
        logger.addFilter(_LibraryNotices())


_OPEN: list = []  # the TextLogs now open, innermost last


class TextLog:
    """While open, every `say()` line is also appended, time-stamped, to <directory>/train.log
    (train.p<k>.log on process k > 0), so a run's story stays in its workdir after the
    terminal or the Slurm log is gone."""

    def __init__(self, directory: str | pathlib.Path):
        self.directory = pathlib.Path(directory)
        self.file = None

    def __enter__(self) -> TextLog:
        index = jax.process_index()
        self.directory.mkdir(parents=True, exist_ok=True)
        name = "train.log" if index == 0 else f"train.p{index}.log"
        self.file = open(self.directory / name, "a")
        _OPEN.append(self)
        return self

    def __exit__(self, *exc) -> None:
        _OPEN.remove(self)
        self.file.close()

    def write(self, text: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        for line in text.splitlines() or [""]:
            self.file.write(f"{stamp} {line}\n")
        self.file.flush()


def say(text: str) -> None:
    """Prints a trainer line (stdout, flushed) and appends it to the open TextLog, if any."""
    print(text, flush=True)
    if _OPEN:
        _OPEN[-1].write(text)


class ProgressLine:
    """`<what> 120/600 <unit> | 3.1 <unit>/s | ETA 2m35s`: one rewritten line on a terminal; on
    a file or pipe (Slurm, Beam, `| tee`), a new line at most every `every` seconds, which those
    logs keep apart. Rates per minute when `per_minute` (slow units such as videos)."""

    def __init__(
        self,
        total: int,
        *,
        what: str,
        unit: str,
        stream=None,
        every: float = 30.0,
        per_minute: bool = True,
    ):
        self.total, self.what, self.unit = total, what, unit
        self.start, self.stream, self.per_minute = time.time(), stream or sys.stderr, per_minute
        self.terminal = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.every = 1.0 if self.terminal else every
        # in a log, the first line after `every` seconds (or at the end): short jobs say it once
        self.last = 0.0 if self.terminal or every == 0 else self.start

    def update(self, done: int) -> None:
        now = time.time()
        if now - self.last < self.every and done < self.total:
            return
        self.last = now
        rate = done / max(now - self.start, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        eta_text = f"{int(eta // 60)}m{int(eta % 60):02d}s" if np.isfinite(eta) else "?"
        shown = (
            f"{rate * 60:.1f} {self.unit}/min" if self.per_minute else f"{rate:.1f} {self.unit}/s"
        )
        text = f"{self.what} {done}/{self.total} {self.unit} | {shown} | ETA {eta_text}"
        if self.terminal:
            end = "\n" if done >= self.total else ""
            print("\r" + text, end=end, file=self.stream, flush=True)
        else:
            print(text, file=self.stream, flush=True)


class MetricLogger:
    """Writes scalars to <dir>/metrics.jsonl and TensorBoard events (process 0 only)."""

    def __init__(self, directory: str | pathlib.Path, tracker=None):
        self.enabled = jax.process_index() == 0
        self.directory = pathlib.Path(directory)
        self.tracker = tracker  # tracking.Tracker (W&B / MLflow), or None
        if not self.enabled:
            return
        from tensorboardX import SummaryWriter

        self.directory.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(self.directory / "metrics.jsonl", "a")
        self._tb = SummaryWriter(str(self.directory / "tensorboard"))

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        scalars = {k: float(np.asarray(v)) for k, v in scalars.items()}
        self._jsonl.write(json.dumps({"step": step, "time": time.time(), **scalars}) + "\n")
        self._jsonl.flush()
        for name, value in scalars.items():
            self._tb.add_scalar(name, value, step)
        self._tb.flush()
        if self.tracker is not None:
            self.tracker.scalars(step, scalars)

    def hparams(self, config: dict, metrics: dict[str, float], name: str = "hparams") -> None:
        """The run's settings beside its final numbers, for TensorBoard's HPARAMS tab (a sweep
        browsed as a table): every scalar config field, flattened to "a.b", tuples as text."""
        if not self.enabled:
            return
        from mkln_jax.tracking import flatten

        metrics = {k: float(v) for k, v in metrics.items()}
        self._tb.add_hparams(flatten(config), metrics, name=name)
        self._tb.flush()
        if self.tracker is not None:
            self.tracker.summary(metrics)

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tb.close()
        if self.tracker is not None:
            self.tracker.close()


class Progress:
    """`[stage] step 120/600 | 4.1 steps/s | ETA 1m57s | loss 0.31 ...` on process 0."""

    def __init__(self, name: str, total: int, start: int):
        self.name, self.total, self.start = name, total, start
        self.t0 = None

    def line(self, step: int, scalars: dict[str, float]) -> str:
        now = time.time()
        if self.t0 is None:  # the first report follows compilation; rate counts from here
            self.t0, self.s0 = now, step
            rate = float("nan")
        else:
            rate = (step - self.s0) / max(now - self.t0, 1e-9)
        eta = (self.total - step) / rate if rate == rate and rate > 0 else float("nan")
        eta_text = "?" if eta != eta else f"{int(eta // 60)}m{int(eta % 60):02d}s"
        values = " ".join(f"{k} {float(v):.4f}" for k, v in scalars.items())
        return (
            f"[{self.name}] step {step}/{self.total} | {rate:.2f} steps/s | ETA {eta_text} | "
            f"{values}"
        )

    def report(self, step: int, scalars: dict[str, float]) -> None:
        if jax.process_index() == 0:
            say(self.line(step, scalars))
