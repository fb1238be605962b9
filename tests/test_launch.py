"""Launchers: the commands their dry runs print, and a real local sweep on the tiny config."""

import json
import pathlib
import shlex
import subprocess

import pytest

from mkln_jax.launch import slurm, sweep, tpu_pod


def test_tpu_pod_dry_run_ships_the_source_and_installs_jax_for_tpu(capsys):
    code = tpu_pod.main(
        [
            "--tpu=pod-a",
            "--zone=us-west4-a",
            "--config=configs/demo.py",
            "--workdir=/mnt/runs/x",
            "--config.distill.temperature=4",
            "--dry_run",
        ]
    )
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    # The tracked source only: never .venv/, runs/ or caches (a copied .venv/.installed stamp
    # would make a worker's setup a no-op).
    assert lines[0].startswith("[dry-run] git archive --format=tar.gz")
    assert lines[1].startswith("[dry-run] gcloud compute tpus tpu-vm scp /tmp/mkln_jax-src.tar.gz")
    assert "--recurse" not in lines[1] and "--worker=all" in lines[1]
    assert lines[2].startswith(
        "[dry-run] gcloud compute tpus tpu-vm ssh pod-a --zone=us-west4-a --worker=all"
    )
    assert (
        "bash mkln_jax/launch/setup_host.sh tpu && .venv/bin/mkln train --config=configs/demo.py "
        "--workdir=/mnt/runs/x --config.distill.temperature=4"
    ) in lines[2]


def test_launchers_refuse_the_old_override_spellings(capsys):
    with pytest.raises(SystemExit):
        tpu_pod.main(["--tpu=a", "--zone=z", "--config=c", "--workdir=w", "--set=a=1"])
    assert "spelled --config.a.b=value" in capsys.readouterr().err


def test_slurm_dry_run_prints_a_requeueable_multi_node_script(capsys):
    code = slurm.main(
        [
            "--nodes=4",
            "--gpus_per_node=8",
            "--config=configs/demo.py",
            "--workdir=/shared/run",
            "--partition=gpu",
            "--dry_run",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    for expected in (
        "#SBATCH --nodes=4",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --signal=B:USR1@120",
        "#SBATCH --requeue",
        "#SBATCH --partition=gpu",
        "make setup PLATFORM=cuda12",
        "srun --kill-on-bad-exit=1 .venv/bin/mkln train --config=configs/demo.py "
        "--workdir=/shared/run &",
        "scontrol requeue $SLURM_JOB_ID",
        "[dry-run] sbatch /shared/run/mkln.sbatch",
    ):
        assert expected in out
    assert not pathlib.Path("/shared/run").exists()


def test_sweep_grid_is_the_cartesian_product():
    grid = sweep.parse_grid(["distill.temperature=1,4,8", "distill.alpha=0.5,0.95"])
    points = sweep.points(grid)
    assert len(points) == 6
    assert {"distill.temperature": "4", "distill.alpha": "0.95"} in points
    assert sweep.point_name(points[0]) == "distill.temperature-1_distill.alpha-0.5"
    with pytest.raises(ValueError, match="field=v1,v2"):
        sweep.parse_grid(["distill.temperature"])


def test_sweep_dry_run_prints_train_and_evaluate_per_point(capsys, tmp_path):
    code = sweep.main(
        [
            "--config=configs/demo.py",
            f"--workdir={tmp_path}/sw",
            "--grid=distill.temperature=1,4,8",
            "--config.student.steps=50",
            "--reuse_teacher=runs/demo",
            "--mkln=mkln",
            "--separate",
            "--dry_run",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "one run each (--separate)" in out
    for t in ("1", "4", "8"):
        point = f"{tmp_path}/sw/distill.temperature-{t}"
        assert (
            f"[dry-run] mkln train --config=configs/demo.py --workdir={point} "
            f"--config.student.steps=50 --config.distill.temperature={t}"
        ) in out
        assert f"[dry-run] mkln evaluate --config=configs/demo.py --workdir={point}" in out
        assert f"copy runs/demo/teacher -> {point}/teacher" in out
    assert not (tmp_path / "sw").exists()


def test_sweep_dry_run_on_slurm_prints_one_job_per_point(capsys, tmp_path):
    code = sweep.main(
        [
            "--config=configs/demo.py",
            f"--workdir={tmp_path}/sw",
            "--grid=student.model=small_cnn,efficientnet_b0",
            "--runner=slurm",
            "--dry_run",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    # One setup job, then one job per point that waits for it and installs nothing.
    assert out.count("[dry-run] sbatch --parsable") == 1
    assert out.count("[dry-run] sbatch") == 3
    assert out.count("make setup PLATFORM=cuda12") == 1
    assert out.count("#SBATCH --dependency=afterok:<setup-job-id>") == 2
    assert "--config.student.model=efficientnet_b0" in out
    assert "student.model changes the compiled program" in out


def test_a_sweep_of_traced_fields_is_one_population_run(capsys, tmp_path):
    code = sweep.main(
        [
            "--config=configs/demo.py",
            f"--workdir={tmp_path}/sw",
            "--grid=distill.temperature=1,4",
            "--grid=freq_aug.jitter=0.1,0.5",
            "--mkln=mkln",
            "--dry_run",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "4 point(s), every swept field traced: one population run" in out
    members = repr(
        tuple(
            f"distill.temperature={t};freq_aug.jitter={j}"
            for t in ("1", "4")
            for j in ("0.1", "0.5")
        )
    )
    assert out.count("[dry-run] mkln train") == 1 and out.count("[dry-run] mkln evaluate") == 1
    train = next(line for line in out.splitlines() if line.startswith("[dry-run] mkln train"))
    argv = shlex.split(train.removeprefix("[dry-run] "))
    assert f"--workdir={tmp_path}/sw" in argv
    assert f"--config.population.members={members}" in argv


@pytest.mark.slow
def test_local_sweep_of_two_temperatures_writes_the_aggregated_table(tmp_path, cache_dir):
    import subprocess
    import sys

    subprocess.run(
        [sys.executable, "-m", "mkln_jax.cli", "prepare", "--config=configs/tiny.py"],
        check=True,
        capture_output=True,
        timeout=300,
    )
    workdir = tmp_path / "sweep"
    fast = [
        "teacher.model=small_cnn",
        "teacher.pretrained=",
        "teacher.steps=4",
        "student.steps=4",
        "train.eval_every=4",
        "train.log_every=2",
    ]
    code = sweep.main(
        [
            "--config=configs/tiny.py",
            f"--workdir={workdir}",
            "--grid=distill.temperature=1,8",
            *(f"--config.{o}" for o in fast),
            f"--mkln={pathlib.Path(sys.executable).parent / 'mkln'}",
        ]
    )
    assert code == 0
    rows = json.loads((workdir / "results.json").read_text())
    assert [r["distill.temperature"] for r in rows] == ["1", "8"]
    assert all(0.0 <= r["test_auc_all"] <= 1.0 for r in rows)
    assert "test_auc_face_swap" in rows[0]  # the held-out method has its own column
    assert "video_auc_minus_member_0" in rows[1]  # one population: paired differences
    assert (workdir / "members" / "members.json").is_file()
    assert (workdir / "results.md").read_text().count("\n") == 4
    assert (workdir / "results.png").stat().st_size > 1000


def test_ablation_dry_run_trains_the_teacher_once_and_every_variant_per_seed(capsys):
    from mkln_jax.launch import ablation

    code = ablation.main(
        ["--config=configs/demo.py", "--workdir=runs/abl", "--seeds=0,1", "--dry_run"]
    )
    assert code == 0
    import shlex

    lines = [
        " ".join(shlex.split(line.removeprefix("[dry-run] ")))
        for line in capsys.readouterr().out.splitlines()
        if line.startswith("[dry-run]")
    ]
    trains = [line for line in lines if " train " in line]
    assert sum("teacher_shared" in line and "stages=('teacher',)" in line for line in trains) == 1
    students = [line for line in trains if "stages=('student',)" in line]
    assert len(students) == 2 * len(ablation.DEFAULT_VARIANTS)
    view = [line for line in students if "freq_aug+kd_view/seed1" in line]
    assert len(view) == 1 and "teacher_input=view" in view[0]
    assert "run:runs/abl/teacher_shared/teacher" in view[0]
    baseline = next(line for line in students if "baseline/seed0" in line)
    assert "distill.teachers=()" in baseline and "run:" not in baseline
    assert ablation.summarise([0.9, 0.8, 1.0]) == pytest.approx((0.9, 0.1))


def test_a_population_sweep_on_slurm_is_one_job_after_the_setup_job(capsys, tmp_path):
    code = sweep.main(
        [
            "--config=configs/demo.py",
            f"--workdir={tmp_path}/sw",
            "--grid=distill.temperature=1,4",
            "--runner=slurm",
            "--dry_run",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert out.count("[dry-run] sbatch") == 2  # the setup job, then the population
    assert "#SBATCH --dependency=afterok:<setup-job-id>" in out
    assert "#SBATCH --job-name=mkln-population-sw" in out


def test_a_tpu_vm_with_python_3_10_gets_python_3_12_from_uv_before_make_setup(tmp_path):
    # Stand-ins: `python3` of a TPU VM image (3.10), pip installing uv, uv installing 3.12,
    # and make recording its arguments.
    bin_dir, home = tmp_path / "bin", tmp_path / "home"
    bin_dir.mkdir()
    home.mkdir()
    log = tmp_path / "calls"
    scripts = {
        "python3": f"""case "$*" in
  --version) echo "Python 3.10.12";;
  "-c "*) exit 1;;  # the version check: 3.10 < 3.11
  "-m pip install -q --user uv")
    mkdir -p "$HOME/.local/bin"
    printf '#!/bin/bash\\necho "uv $*" >> {log}\\n' > "$HOME/.local/bin/uv"
    printf '[ "$1 $2" = "python find" ] && echo /opt/uv/python3.12\\nexit 0\\n' \\
        >> "$HOME/.local/bin/uv"
    chmod +x "$HOME/.local/bin/uv"; echo "pip $*" >> {log};;
  *) exit 2;;
esac""",
        "make": f'echo "make $*" >> {log}',
    }
    for name, body in scripts.items():
        (bin_dir / name).write_text("#!/bin/bash\n" + body + "\n")
        (bin_dir / name).chmod(0o755)
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "HOME": str(home),
        "MKLN_PYTHON_CANDIDATES": "python3",
    }
    script = pathlib.Path(tpu_pod.__file__).with_name("setup_host.sh")
    done = subprocess.run(
        ["bash", str(script), "tpu"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "no Python >= 3.11 here (Python 3.10.12); installing 3.12 with uv" in done.stdout
    assert log.read_text().splitlines() == [
        "pip -m pip install -q --user uv",
        "uv python install 3.12",
        "uv python find 3.12",
        "make setup PLATFORM=tpu PYTHON=/opt/uv/python3.12",
    ]
