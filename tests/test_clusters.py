"""Cluster rehearsals: each cluster kind's path run here as it would run there.

The launchers' own generated scripts and commands are what runs: `mkln launch slurm` writes its
sbatch script and submits it to a stand-in `sbatch`, whose stand-in `srun` starts the tasks
with the variables Slurm gives them; `mkln launch tpu_pod` ships `git archive` of the checkout
with a stand-in `gcloud` to stand-in TPU VM workers, where jax's own TPU detection runs against
a stand-in metadata server (tests/standins/). Each run's processes join, train, checkpoint, are
signalled as the cluster would signal them (time limit, preemption), and resume.
"""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow  # starts `mkln` processes

REPO = pathlib.Path(__file__).resolve().parents[1]
STANDINS = pathlib.Path(__file__).resolve().parent / "standins"
TRAIN = [
    "--config=configs/tiny.py",
    "--config.stages=('teacher',)",
    "--config.teacher.model=small_cnn",
    "--config.teacher.pretrained=",
    "--config.train.log_every=1",
    "--config.train.eval_every=1000",
    "--config.train.checkpoint_every=1000",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.fixture
def cluster(tmp_path, cache_dir):
    """PATH with the stand-ins first, and their shared folder."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("sbatch", "srun", "scontrol", "gcloud"):
        wrapper = bin_dir / name
        wrapper.write_text(f'#!/bin/bash\nexec {sys.executable} {STANDINS / name}.py "$@"\n')
        wrapper.chmod(0o755)
    state = tmp_path / "standin"
    state.mkdir()
    env = dict(os.environ)
    env.update(
        PATH=f"{bin_dir}:{env['PATH']}",
        STANDIN_DIR=str(state),
        MKLN_CACHE=str(cache_dir),
        JAX_COORDINATOR_PORT=str(_free_port()),
        STANDIN_COORDINATOR_PORT=str(_free_port()),
    )
    env.pop("XLA_FLAGS", None)  # each stand-in sets the devices of its hosts
    return env, state


def _launch(env, *args) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "mkln_jax.cli", "launch", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_for_steps(log: pathlib.Path, process: subprocess.Popen, limit: float = 300) -> None:
    deadline = time.time() + limit
    while not (log.exists() and log.stat().st_size > 0):  # the training loop is running
        assert process.poll() is None, process.stdout.read()[-4000:]
        assert time.time() < deadline, "no training step within the limit"
        time.sleep(0.1)


def _start_lines(output: str) -> list[str]:
    return sorted(line for line in output.splitlines() if line.startswith("process "))


def _latest_steps(workdir: pathlib.Path) -> list[int]:
    latest = workdir / "teacher" / "checkpoints" / "latest"
    return sorted(int(p.name) for p in latest.iterdir() if p.name.isdigit())


def _slurm(env, workdir, *extra, steps: int) -> subprocess.Popen:
    return _launch(
        env,
        "slurm",
        "--no_setup",
        f"--repo={REPO}",
        f"--workdir={workdir}",
        *extra,
        *TRAIN,
        f"--config.teacher.steps={steps}",
    )


def test_slurm_one_task_per_node_trains_on_every_gpu_and_requeues_at_the_time_limit(
    tiny_dataset, cluster, tmp_path
):
    env, state = cluster
    workdir = tmp_path / "run"
    job = _slurm(env, workdir, "--nodes=2", "--gpus_per_node=4", steps=24)
    _wait_for_steps(workdir / "teacher" / "logs" / "metrics.jsonl", job)
    # Two minutes before the time limit Slurm signals the batch shell (--signal=B:USR1@120).
    sbatch = next(
        int(p) for p in subprocess.check_output(["pgrep", "-f", "standins/sbatch.py"]).split()
    )
    os.kill(sbatch, signal.SIGUSR1)
    job.communicate(timeout=300)
    assert job.returncode == 0
    output = (workdir / "slurm-4242.out").read_text()
    # Both tasks drive all four GPUs of their node: 8 devices in one data mesh.
    starts = _start_lines(output)
    assert len(starts) == 2, output[-4000:]
    for k, line in enumerate(starts):
        assert line.startswith(f"process {k}/2 joined by slurm (job 4242, 2 node(s), 1 task(s)")
        assert "4 cpu device(s) here (ids 0-3), 8 in all, mesh data 8 x fsdp 1" in line
    stopped = next(x for x in output.splitlines() if "preempted (SIGTERM) at step" in x)
    step = int(stopped.split("at step ")[1].split(":")[0])
    assert 0 < step < 24 and _latest_steps(workdir) == [step]
    assert "mkln: requeueing job 4242" in output
    assert (state / "requeued").read_text().split() == ["4242"]

    # Slurm starts the requeued job again, on any node. Its earlier run was killed there
    # after the checkpoint and left its lock: the job's own lock is taken over.
    lock = {"pid": 1, "host": "gpu-node-07", "slurm_job": "4242", "slurm_restart": 0}
    (workdir / ".mkln.lock").write_text(json.dumps(lock))
    again = subprocess.run(
        ["sbatch", str(workdir / "mkln.sbatch")],
        env=env | {"STANDIN_RESTART_COUNT": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stdout
    output = (workdir / "slurm-4242.out").read_text()
    assert "taking over" in output and "gpu-node-07" in output
    assert f"[teacher] resumed from step {step}" in output
    assert _latest_steps(workdir)[-1] == 24


def test_slurm_one_task_per_gpu_puts_every_task_in_the_mesh(tiny_dataset, cluster, tmp_path):
    env, _ = cluster
    workdir = tmp_path / "run"
    job = _slurm(env, workdir, "--nodes=1", "--gpus_per_node=2", "--tasks_per_node=2", steps=2)
    job.communicate(timeout=600)
    output = (workdir / "slurm-4242.out").read_text()
    assert job.returncode == 0, output[-4000:]
    starts = _start_lines(output)
    assert len(starts) == 2, output[-4000:]
    for k, line in enumerate(starts):
        assert line.startswith(f"process {k}/2 joined by slurm (job 4242, 1 node(s), 2 task(s)")
        # Each task drives the GPU of its local rank (all of the node's GPUs are visible).
        assert f"1 cpu device(s) here (ids {k}), 2 in all, mesh data 2 x fsdp 1" in line
    assert _latest_steps(workdir) == [2]


def test_a_task_that_sees_fewer_gpus_than_slurm_gave_it_is_refused_before_compiling(
    tiny_dataset, cluster, tmp_path
):
    env, _ = cluster
    workdir = tmp_path / "run"
    env = env | {"STANDIN_DEVICES_PER_TASK": "2"}
    job = _slurm(env, workdir, "--nodes=2", "--gpus_per_node=4", steps=2)
    job.communicate(timeout=300)
    output = (workdir / "slurm-4242.out").read_text()
    assert job.returncode != 0
    errors = [x for x in output.splitlines() if x.startswith("error:")]
    # Each task refuses in one line; the first to exit makes srun (--kill-on-bad-exit) stop
    # the other, which may not have printed its own yet.
    assert 1 <= len(errors) <= 2 and "Traceback" not in output
    assert all("sees 2 device(s) but slurm gave it 4" in e for e in errors)
    assert "compiled" not in output and not (workdir / "teacher").exists()


def _tpu_pod(env, tmp_path, workdir, steps: int) -> subprocess.Popen:
    return _launch(
        env,
        "tpu_pod",
        "--tpu=rehearsal",
        "--zone=us-central2-b",
        "--no_setup",
        f"--archive={tmp_path / 'src.tar.gz'}",
        f"--workdir={workdir}",
        *TRAIN,
        f"--config.teacher.steps={steps}",
    )


def test_a_tpu_vm_slice_joins_as_jax_detects_it_and_resumes_after_a_preemption(
    tiny_dataset, cluster, tmp_path
):
    env, state = cluster
    workdir = tmp_path / "run"
    for k in range(2):  # the workers' images are set up already (--no_setup)
        (state / f"worker{k}" / "mkln_jax").mkdir(parents=True)
        (state / f"worker{k}" / "mkln_jax" / ".venv").symlink_to(REPO / ".venv")
    pod = _tpu_pod(env, tmp_path, workdir, steps=24)
    _wait_for_steps(workdir / "teacher" / "logs" / "metrics.jsonl", pod)
    gcloud = next(
        int(p) for p in subprocess.check_output(["pgrep", "-f", "standins/gcloud.py"]).split()
    )
    os.kill(gcloud, signal.SIGTERM)  # a maintenance event: every worker gets SIGTERM
    output, _ = pod.communicate(timeout=300)
    assert pod.returncode != 0  # the workers stopped at the checkpoint (exit 143)
    assert "Traceback" not in output
    starts = _start_lines(output)
    assert len(starts) == 2, output[-4000:]
    for k, line in enumerate(starts):
        assert line.startswith(f"process {k}/2 joined by tpu (Cloud TPU VM")
        assert "4 cpu device(s) here (ids all visible), 8 in all, mesh data 8 x fsdp 1" in line
    stops = [x for x in output.splitlines() if "preempted (SIGTERM) at step" in x]
    step = int(stops[0].split("at step ")[1].split(":")[0])
    assert 0 < step < 24 and _latest_steps(workdir) == [step]

    pod = _tpu_pod(env, tmp_path, workdir, steps=24)
    output, _ = pod.communicate(timeout=300)
    assert pod.returncode == 0, output[-4000:]
    assert f"[teacher] resumed from step {step}" in output
    assert _latest_steps(workdir)[-1] == 24
