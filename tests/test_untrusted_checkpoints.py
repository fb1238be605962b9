"""Checkpoints carry their own integrity, and a workdir has one writer (issue 24)."""

import errno
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from checkpoint_files import flip_bit, largest_data_file

from mkln_jax import checkpoint, train, workdir
from mkln_jax.errors import CheckpointError, WorkdirError

CONFIG = ml_collections.ConfigDict({"seed": 1, "model": "tiny"})


def _state(seed: int) -> dict:
    # Random floats: zstd stores them nearly raw, so a flipped bit reaches the restored array.
    rng = np.random.default_rng(seed)
    return {
        "params": {"w": jnp.asarray(rng.normal(size=(64, 96)), jnp.float32)},
        "step": jnp.asarray(seed, jnp.int32),
    }


def _abstract():
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _state(0))


def _saved(tmp_path, steps=(1, 2, 3)) -> pathlib.Path:
    ckpts = checkpoint.Checkpoints(tmp_path / "checkpoints", keep=5)
    for step in steps:
        ckpts.save(step, _state(step), CONFIG, {checkpoint.BEST_METRIC: step / 10})
    ckpts.wait()
    ckpts.close()
    return tmp_path / "checkpoints"


def test_a_flipped_bit_is_caught_on_restore_and_names_the_step(tmp_path):
    root = _saved(tmp_path)
    flip_bit(largest_data_file(root / "latest" / "3"))
    ckpts = checkpoint.Checkpoints(root, keep=5, read_only=True)
    with pytest.raises(CheckpointError, match=r"latest/3"):
        ckpts.restore("latest", 3, _abstract())
    restored = ckpts.restore("latest", 2, _abstract())  # the others are untouched
    np.testing.assert_array_equal(restored["params"]["w"], _state(2)["params"]["w"])
    ckpts.close()


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "flip_unrecorded"])
def test_resume_falls_back_to_the_newest_intact_step_and_sets_the_broken_one_aside(
    tmp_path, damage
):
    root = _saved(tmp_path)
    target = largest_data_file(root / "latest" / "3")
    if damage == "flip":
        flip_bit(target)
    elif damage == "truncate":
        target.write_bytes(target.read_bytes()[:100])
    elif damage == "delete":
        target.unlink()
    else:  # a flipped bit, and the record that would catch it deleted: unverified, not used
        flip_bit(target)
        shutil.rmtree(root / "latest" / "3" / "integrity")
    ckpts = checkpoint.Checkpoints(root, keep=5)
    lines = []
    step, state = ckpts.restore_latest_intact(_abstract(), lambda saved: None, lines.append)
    assert step == 2
    np.testing.assert_array_equal(state["params"]["w"], _state(2)["params"]["w"])
    assert lines[0].startswith("skipping checkpoint step 3: checkpoint")
    assert "Traceback" not in "\n".join(lines)
    assert ckpts.latest.all_steps() == [1, 2]
    (aside,) = (root / "corrupt").iterdir()
    assert aside.name.startswith("latest_3_") and str(aside) in lines[1]
    # The run can now save step 3 again.
    ckpts.save(3, _state(3), CONFIG, {})
    ckpts.wait()
    assert ckpts.latest.all_steps() == [1, 2, 3]
    ckpts.close()


def test_a_step_without_its_integrity_record_is_refused_unless_allowed_and_then_recorded(
    tmp_path,
):
    root = _saved(tmp_path)
    shutil.rmtree(root / "best" / "3" / "integrity")
    ckpts = checkpoint.Checkpoints(root, keep=5, read_only=True)
    with pytest.raises(
        CheckpointError, match=r"best/3 has no integrity record.*--allow_unverified"
    ):
        ckpts.restore("best", 3, _abstract())
    with checkpoint.allowing_unverified():
        restored = ckpts.restore("best", 3, _abstract())
        assert checkpoint.unverified_used() == [str(root / "best" / "3")]
    np.testing.assert_array_equal(restored["params"]["w"], _state(3)["params"]["w"])
    assert checkpoint.unverified_used() == []  # the permission ends with its scope
    with pytest.raises(CheckpointError, match="no integrity record"):
        ckpts.restore("best", 3, _abstract())
    ckpts.close()


def test_a_changed_config_is_refused_before_any_checkpoint_is_touched(tmp_path):
    root = _saved(tmp_path)
    ckpts = checkpoint.Checkpoints(root, keep=5)

    def refuse(saved):
        raise ValueError(f"changed: {saved['model']}")

    with pytest.raises(ValueError, match="changed: tiny"):
        ckpts.restore_latest_intact(_abstract(), refuse, print)
    assert ckpts.latest.all_steps() == [1, 2, 3]
    assert not (root / "corrupt").exists()
    ckpts.close()


def test_no_intact_step_is_an_error_naming_the_folder(tmp_path):
    root = _saved(tmp_path, steps=(1,))
    flip_bit(largest_data_file(root / "latest" / "1"))
    ckpts = checkpoint.Checkpoints(root, keep=5)
    with pytest.raises(CheckpointError, match="no intact checkpoint under"):
        ckpts.restore_latest_intact(_abstract(), lambda saved: None, print)
    ckpts.close()


def test_read_only_checkpoints_create_nothing(tmp_path):
    missing = tmp_path / "nowhere" / "teacher" / "checkpoints"
    ckpts = checkpoint.Checkpoints(missing, keep=1, read_only=True)
    assert ckpts.best_step() is None and ckpts.latest_step() is None
    ckpts.close()
    assert not (tmp_path / "nowhere").exists()


def test_host_and_device_fingerprints_are_the_same_function():
    rng = np.random.default_rng(1)
    mesh = jax.make_mesh((8,), ("fsdp",))
    cases = [
        jnp.asarray(rng.normal(size=(64, 48)), jnp.float32),
        jnp.asarray(rng.normal(size=(3, 5, 7)), jnp.bfloat16),
        jnp.asarray(rng.normal(size=(9,)) > 0),
        jnp.asarray(7, jnp.int32),
        jax.random.key_data(jax.random.PRNGKey(3)),
        jnp.zeros((0, 4), jnp.float32),
        jax.device_put(
            jnp.asarray(rng.normal(size=(16, 8)), jnp.float32),
            jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("fsdp", None)),
        ),
    ]
    on_devices = checkpoint._device_fingerprints(cases)
    for x, device in zip(cases, on_devices, strict=True):
        np.testing.assert_array_equal(
            checkpoint._host_fingerprint(np.asarray(x)), np.asarray(device)
        )


def test_fingerprints_agree_across_shardings_and_see_one_bit():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(64, 48)), jnp.float32)
    mesh = jax.make_mesh((8,), ("fsdp",))
    sharded = jax.device_put(
        x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("fsdp", None))
    )
    assert checkpoint.fingerprints({"x": x}) == checkpoint.fingerprints({"x": sharded})
    flipped = np.asarray(x).copy()
    flipped.reshape(-1).view(np.uint32)[1234] ^= 1
    swapped = np.asarray(x).copy()
    swapped[0, [0, 1]] = swapped[0, [1, 0]]
    base = checkpoint.fingerprints({"x": x})
    assert checkpoint.fingerprints({"x": jnp.asarray(flipped)}) != base
    assert checkpoint.fingerprints({"x": jnp.asarray(swapped)}) != base


# --- one writer per workdir ---------------------------------------------------------------


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    with workdir.WorkdirLock(tmp_path / "run"):
        with pytest.raises(WorkdirError, match=rf"in use by .*pid {os.getpid()}"):
            workdir.WorkdirLock(tmp_path / "run").acquire()
    # Released on exit: the next writer gets it.
    with workdir.WorkdirLock(tmp_path / "run"):
        pass
    assert not (tmp_path / "run" / workdir.LOCK_NAME).exists()


def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_note(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    first = workdir.WorkdirLock(tmp_path)
    first.record["pid"] = dead.pid
    first.acquire()  # left behind, as by a SIGKILL'd run
    notes = []
    with workdir.WorkdirLock(tmp_path, log=notes.append):
        assert f"left by pid {dead.pid}" in notes[0]


def _lock_of(workdir_path, monkeypatch, job: str, restart: int, host: str):
    monkeypatch.setenv("SLURM_JOB_ID", job)
    monkeypatch.setenv("SLURM_RESTART_COUNT", str(restart))
    lock = workdir.WorkdirLock(workdir_path)
    lock.record["host"], lock.record["pid"] = host, 1  # a live pid, on another node
    return lock


def test_a_requeued_slurm_job_takes_over_its_own_earlier_lock_on_another_node(
    tmp_path, monkeypatch
):
    _lock_of(tmp_path, monkeypatch, "4242", 0, "gpu-node-07").acquire()  # killed, lock left
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    notes = []
    with workdir.WorkdirLock(tmp_path, log=notes.append) as lock:
        assert "gpu-node-07" in notes[0] and lock.record["slurm_restart"] == 1


@pytest.mark.parametrize("job,restart", [("4242", 1), ("9999", 0)], ids=["same-run", "another-job"])
def test_a_live_jobs_lock_on_another_node_is_never_taken(tmp_path, monkeypatch, job, restart):
    _lock_of(tmp_path, monkeypatch, job, restart, "gpu-node-07").acquire()
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    with pytest.raises(WorkdirError, match=r"in use by .*gpu-node-07"):
        workdir.WorkdirLock(tmp_path).acquire()


@pytest.mark.parametrize("url", ["gs://bucket/run", "s3://bucket/run"])
def test_an_object_store_workdir_is_refused_in_one_line_and_nothing_is_created(
    tmp_path, monkeypatch, url
):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(WorkdirError, match="is a URL; the workdir must be a folder every host"):
        workdir.WorkdirLock(url).acquire()
    with pytest.raises(WorkdirError, match="is a URL"):
        workdir.require_existing(url)
    assert not list(tmp_path.iterdir())  # not ./gs:/bucket/run


@pytest.mark.parametrize("kind", ["file", "read_only"])
def test_an_unusable_workdir_is_one_clear_error(tmp_path, kind):
    target = tmp_path / "run"
    if kind == "file":
        target.write_text("not a folder")
        match = "is a file"
    else:
        target.mkdir()
        target.chmod(0o500)
        match = "not writable|cannot"
        if os.access(target, os.W_OK):  # running as root
            pytest.skip("root can write anywhere")
    with pytest.raises(WorkdirError, match=match):
        workdir.WorkdirLock(target).acquire()


def test_disk_full_while_saving_ends_in_one_line_naming_the_last_good_step(tmp_path):
    root = _saved(tmp_path, steps=(4,))
    ckpts = checkpoint.Checkpoints(root, keep=5)

    def full(*args, **kwargs):
        raise RuntimeError("write failed") from OSError(errno.ENOSPC, "No space left on device")

    ckpts.latest.save = full
    with pytest.raises(WorkdirError) as err:
        train._save(ckpts, 8, _state(8), CONFIG, {}, tmp_path)
    message = str(err.value)
    assert "no space left" in message and "step 4" in message and "\n" not in message
    ckpts.close()


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB file system (tmpfs), where this machine allows mounting one."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_a_save_that_cannot_fit_is_refused_before_orbax_writes(small_disk, capfd):
    ckpts = checkpoint.Checkpoints(small_disk / "checkpoints", keep=2)
    big = {"w": jnp.zeros((1024, 1024), jnp.float32)}  # 4 MiB
    with pytest.raises(WorkdirError, match=r"not enough space for checkpoint step 5 .* none"):
        train._save(ckpts, 5, big, CONFIG, {}, small_disk)
    ckpts.close()
    assert not list((small_disk / "checkpoints" / "latest").iterdir())
    assert "Traceback" not in capfd.readouterr().err
