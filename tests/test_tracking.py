"""Weights & Biases (offline) and MLflow (a file store) receive a run's config, metrics and
evaluation reports, through `track.backends`."""

import json
import struct

import pytest
from cli import mkln

wandb = pytest.importorskip("wandb")
mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402
from wandb.proto import wandb_internal_pb2  # noqa: E402


def wandb_records(path):
    """The records of an offline W&B run file: a 7-byte header, then LevelDB's log format
    (32 KiB blocks; each chunk a 7-byte header: crc32c, length, type 1 full / 2 first /
    3 middle / 4 last), each record a wandb_internal_pb2.Record."""
    data, pos, pending = path.read_bytes(), 7, b""
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:  # zero padding to the end of the block
            pos += left
            continue
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)  # "a/b" may come split into its parts


def wandb_values(run_file) -> tuple[dict[str, list], dict[str, str], dict[str, str]]:
    """(history {key: [(step, value)]}, last summary values, config) of an offline run."""
    history, summary, config = {}, {}, {}
    for record in wandb_records(run_file):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            items = {_key(i): json.loads(i.value_json) for i in record.history.item}
            for key, value in items.items():
                history.setdefault(key, []).append((items.get("_step"), value))
        elif kind == "summary":
            summary.update({_key(i): i.value_json for i in record.summary.update})
        elif kind == "run":
            config.update({_key(i): i.value_json for i in record.run.config.update})
        elif kind == "config":
            config.update({_key(i): i.value_json for i in record.config.update})
    return history, summary, config


@pytest.mark.slow  # trains
def test_wandb_offline_and_an_mlflow_file_store_receive_the_run(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"file://{tmp_path / 'mlruns'}")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 prefers a database
    monkeypatch.setenv("WANDB_SILENT", "true")
    workdir = tmp_path / "run"
    common = [
        "--config=configs/tiny.py",
        f"--workdir={workdir}",
        "--config.stages=('teacher',)",
        "--config.teacher.pretrained=",
        "--config.track.backends=('wandb','mlflow')",
        "--config.track.wandb_mode=offline",
        "--config.track.project=mkln-test",
    ]
    assert mkln("prepare", "--config=configs/tiny.py").returncode == 0
    trained = mkln("train", *common, devices=1)
    assert trained.returncode == 0, trained.stderr[-3000:]
    evaluated = mkln("evaluate", *common, devices=1)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    logged = [json.loads(line) for line in (workdir / "teacher/logs/metrics.jsonl").open()]
    losses = [(r["step"], r["train/loss"]) for r in logged if "train/loss" in r]
    report = json.loads((workdir / "eval" / "test.json").read_text())
    test_auc = report["teacher"]["metrics"]["all"]["frame"]["auc"]

    # W&B: one run for training and evaluation (same id), history = the run's own log
    runs = sorted((workdir / "teacher/logs/wandb").glob("offline-run-*/run-*.wandb"))
    assert len({r.name for r in runs}) == 1 and len(runs) == 2  # train, then evaluate resumes
    history, summary, _ = wandb_values(runs[0])
    assert [s for s, _ in history["train/loss"]] == [s for s, _ in losses]
    assert [v for _, v in history["train/loss"]] == pytest.approx([v for _, v in losses])
    _, summary, _ = wandb_values(runs[1])
    assert float(summary["hparams/test_auc"]) == pytest.approx(test_auc)

    # MLflow: the same numbers, the config as parameters, the report as a file
    client = MlflowClient()
    experiment = client.get_experiment_by_name("mkln-test")
    (run,) = client.search_runs([experiment.experiment_id])
    steps = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert [s for s, _ in sorted(steps)] == [s for s, _ in losses]
    assert [v for _, v in sorted(steps)] == pytest.approx([v for _, v in losses])
    assert run.data.metrics["hparams/test_auc"] == pytest.approx(test_auc)
    assert run.data.params["teacher.model"] == "efficientnet_lite0"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "reports")}
    assert {"reports/test.md", "reports/test.json"} <= artifacts
