"""Experiment tracking: Weights & Biases and MLflow sinks beside the run's own logs (the `track`
extra; off by default).

`track.backends = ("wandb", "mlflow")` sends, per stage (and per population member), the
flattened config, every scalar `MetricLogger` writes (train, validation, steps/s), evaluation's
final AUCs as summary values, and the evaluation reports and plots as files. One tracked run per
stage folder, the same across resumes and the later `mkln evaluate`: W&B's run id is derived from
the stage folder's path; MLflow's is kept in `<stage>/logs/tracking.json`. Only process 0
talks to a tracker.

W&B: project `track.project`, mode `track.wandb_mode` ("" = W&B's own default, i.e. WANDB_MODE
or online; "offline" writes under `<stage>/logs/wandb` for `wandb sync`). MLflow: experiment
`track.project` at `track.mlflow_uri` ("" = MLFLOW_TRACKING_URI, else MLflow's default).
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import time
from typing import Any

import jax

BACKENDS = ("wandb", "mlflow")


def flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    """Scalar config fields as {"a.b": value}; tuples and lists as comma-joined text."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        elif isinstance(value, (tuple, list)):
            flat[name] = ", ".join(str(v) for v in value)
    return flat


class _Wandb:
    def __init__(self, track, logs: pathlib.Path, name: str, config: dict):
        import wandb

        key = hashlib.sha256(str(logs.resolve()).encode()).hexdigest()[:16]
        self.run = wandb.init(
            project=track.project,
            name=name,
            group=name.split("/")[0],
            id=key,
            resume="allow",
            dir=str(logs),
            config=config,
            mode=track.wandb_mode or None,
            reinit="create_new",  # a population holds one run per member at once
            settings=wandb.Settings(console="off"),  # stdout is ours (and in train.log)
        )

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def summary(self, values: dict[str, float]) -> None:
        self.run.summary.update(values)

    def file(self, path: pathlib.Path) -> None:
        import wandb

        if path.suffix == ".png":
            self.run.log({f"plots/{path.stem}": wandb.Image(str(path))})
        else:
            self.run.save(str(path), base_path=str(path.parent), policy="now")

    def close(self) -> None:
        self.run.finish()


class _Mlflow:
    def __init__(self, track, logs: pathlib.Path, name: str, config: dict):
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=track.mlflow_uri or None)
        ids = logs / "tracking.json"
        known = json.loads(ids.read_text()) if ids.is_file() else {}
        run_id = known.get("mlflow")
        if run_id is None:
            experiment = self.client.get_experiment_by_name(track.project)
            experiment_id = (
                experiment.experiment_id
                if experiment
                else self.client.create_experiment(track.project)
            )
            run_id = self.client.create_run(experiment_id, run_name=name).info.run_id
            ids.write_text(json.dumps({**known, "mlflow": run_id}) + "\n")
            # MLflow caps a parameter's value at 6000 characters and refuses changes later
            params = [Param(k, str(v)[:6000]) for k, v in config.items()]
            for i in range(0, len(params), 100):
                self.client.log_batch(run_id, params=params[i : i + 100])
        else:
            self.client.update_run(run_id, status="RUNNING")
        self.run_id = run_id

    def scalars(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, step) for k, v in values.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def summary(self, values: dict[str, float]) -> None:
        self.scalars(0, values)

    def file(self, path: pathlib.Path) -> None:
        self.client.log_artifact(self.run_id, str(path), "reports")

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


_SINKS = {"wandb": _Wandb, "mlflow": _Mlflow}


class Tracker:
    """The configured sinks of one stage folder (`logs` = <stage>/logs). Does nothing when
    `track.backends` is empty."""

    def __init__(self, config, logs: str | pathlib.Path, name: str):
        track = config.get("track")
        backends = tuple(track.backends) if track is not None else ()
        self.sinks = []
        if not backends or jax.process_index() != 0:
            return
        logs = pathlib.Path(logs)
        logs.mkdir(parents=True, exist_ok=True)
        flat = flatten(config.to_dict())
        for backend in backends:
            try:
                self.sinks.append(_SINKS[backend](track, logs, name, flat))
            except ImportError as e:
                raise ImportError(
                    f"track.backends has {backend!r}, which needs its package: pip install "
                    f"'mkln_jax[track]' ({e})"
                ) from e

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for sink in self.sinks:
            sink.scalars(step, values)

    def summary(self, values: dict[str, float]) -> None:
        for sink in self.sinks:
            sink.summary(values)

    def files(self, paths) -> None:
        for path in paths:
            if pathlib.Path(path).is_file():
                for sink in self.sinks:
                    sink.file(pathlib.Path(path))

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()
        self.sinks = []


def check(config, errors: list[str]) -> None:
    """Config checks (before anything compiles): known backends, and their packages present."""
    track = config.get("track")
    if track is None:
        return
    import importlib.util

    for backend in track.backends:
        if backend not in BACKENDS:
            errors.append(f"track.backends: unknown {backend!r}; known: {', '.join(BACKENDS)}")
        elif importlib.util.find_spec(backend) is None:
            errors.append(
                f"track.backends has {backend!r} but {backend} is not installed: "
                "pip install 'mkln_jax[track]'"
            )
    if track.wandb_mode not in ("", "online", "offline", "disabled"):
        errors.append(
            f"track.wandb_mode must be '', 'online', 'offline' or 'disabled', got "
            f"{track.wandb_mode!r}"
        )
