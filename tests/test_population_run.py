"""A population run from the command line: one `mkln train` trains every member, each member
keeps its own best checkpoint and log, `mkln evaluate` writes one table with paired
differences, `--member` exports one member, and an interrupted population resumes to the same
state. Also the config side: members crossed with seeds, static fields refused."""

import json
import shutil

import pytest
from cli import mkln

from mkln_jax import config_lib, population
from mkln_jax.configs import tiny

MEMBERS = "--config.population.members=('distill.temperature=1','distill.temperature=4')"
SEEDS = "--config.population.seeds=(0,1)"
NAMES = [f"distill.temperature-{t}_seed-{s}" for t in (1, 4) for s in (0, 1)]


def test_members_cross_settings_with_seeds_and_refuse_a_static_field():
    config = tiny.get_config()
    config.population.members = ("distill.temperature=1;distill.alpha=0.5", "freq_aug.jitter=0.2")
    config.population.seeds = (0, 3)
    members = population.members(config)
    assert [m.name for m in members] == [
        "distill.temperature-1_distill.alpha-0.5_seed-0",
        "distill.temperature-1_distill.alpha-0.5_seed-3",
        "freq_aug.jitter-0.2_seed-0",
        "freq_aug.jitter-0.2_seed-3",
    ]
    assert members[1].config.distill.temperature == 1.0 and members[1].config.seed == 3
    assert members[1].config.distill.alpha == 0.5 and members[2].config.freq_aug.jitter == 0.2
    assert config.distill.temperature == 6.0  # the base config is untouched
    assert population.augment_varies(members)
    assert not population.augment_varies(members[:2])
    config.population.members = ("student.model=xception",)
    with pytest.raises(config_lib.ConfigError, match=r"student\.model.*separate runs"):
        population.members(config)
    config.population.members = ("distill.temperature=warm",)
    with pytest.raises(config_lib.ConfigError, match="not a valid float"):
        population.members(config)


@pytest.mark.slow  # trains in subprocesses
def test_a_population_trains_evaluates_exports_and_resumes(tmp_path, cache_dir):
    workdir = tmp_path / "run"
    common = ["--config=configs/tiny.py", f"--workdir={workdir}", MEMBERS, SEEDS]
    assert mkln("prepare", *common).returncode == 0
    run = mkln("train", *common, "--config.train.profile_steps=2", devices=1)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "population of 4 students in one step" in run.stdout
    # train.profile_steps: a jax.profiler trace of 2 steps per stage (not a change of the run:
    # the resume below leaves it out).
    assert "profile of 2 step(s) written" in run.stdout
    assert list((workdir / "student" / "profile").rglob("*.xplane.pb"))
    # absl logging at WARNING by default: none of orbax's INFO lines, no line over 200
    # characters (issue 23's bar for `make demo`).
    assert "checkpoint_manager.py" not in run.stderr, run.stderr[:2000]
    longest = max((run.stdout + run.stderr).splitlines(), key=len)
    assert len(longest) <= 200, longest
    # What the trainer printed is kept, time-stamped, in each stage's train.log.
    text_log = (workdir / "student" / "logs" / "train.log").read_text().splitlines()
    assert any(line.endswith("[student] step 6 validation:") for line in text_log)
    assert all(line[:4].isdigit() for line in text_log)  # "2026-12-06 20:40:01 ..."
    assert "[teacher] step 4/4" in (workdir / "teacher" / "logs" / "train.log").read_text()
    listing = json.loads((workdir / "members" / "members.json").read_text())
    assert listing["members"] == NAMES
    for name in listing["members"]:
        log = workdir / "members" / name / "student" / "logs" / "metrics.jsonl"
        rows = [json.loads(line) for line in log.read_text().splitlines()]
        val = {r["step"]: r["val/auc"] for r in rows if "val/auc" in r}
        assert sorted(val) == [3, 6] and any("train/loss" in r for r in rows)
        best = sorted((workdir / "members" / name / "student" / "checkpoints" / "best").iterdir())
        # The member's best checkpoint is its own best validation step (orbax keeps the later
        # step on a tie).
        best_step = max(val, key=lambda s: (val[s], s))
        assert [p.name for p in best if p.name.isdigit()] == [str(best_step)]

    evaluated = mkln("evaluate", *common, devices=1)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    rows = json.loads((workdir / "eval" / "population_test.json").read_text())
    assert [(r["distill.temperature"], r["seed"]) for r in rows] == [
        ("1", "0"),
        ("1", "1"),
        ("4", "0"),
        ("4", "1"),
    ]
    assert rows[0]["video_auc_minus_member_0"] == rows[0]["frame_auc_minus_member_0"] == 0.0
    for level in ("frame", "video"):
        keys = ("ci_low", "auc_minus_member_0", "ci_high")
        low, diff, high = (rows[1][f"{level}_{k}"] for k in keys)
        assert low <= diff <= high
    assert rows[1]["frame_auc_minus_member_0"] == pytest.approx(
        rows[1]["test_auc_all"] - rows[0]["test_auc_all"]
    )
    # Two seeds per setting: mean +- std and the seed-averaged paired difference.
    settings = json.loads((workdir / "eval" / "population_test_by_setting.json").read_text())
    assert [s["distill.temperature"] for s in settings] == ["1", "4"]
    assert settings[1]["test_auc_all_mean"] == pytest.approx(
        (rows[2]["test_auc_all"] + rows[3]["test_auc_all"]) / 2
    )
    assert settings[0]["video_auc_minus_first"] == settings[0]["frame_auc_minus_first"] == 0.0
    assert settings[1]["frame_auc_minus_first"] == pytest.approx(
        settings[1]["test_auc_all_mean"] - settings[0]["test_auc_all_mean"]
    )
    for name in listing["members"]:  # each member's own report, as a single run writes it
        report = json.loads((workdir / "members" / name / "eval" / "test.json").read_text())
        assert set(report) == {"student"}
        # Its settings and AUCs in TensorBoard's HPARAMS tab.
        tensorboard = workdir / "members" / name / "student" / "logs" / "tensorboard"
        assert list((tensorboard / "eval_test").glob("events.out.tfevents.*"))
    rows = [json.loads(line) for line in (workdir / "student" / "logs" / "metrics.jsonl").open()]
    assert any(r.get("train/images_per_second", 0) > 0 for r in rows)

    exported = mkln("export", *common, "--member=2", devices=1)
    assert exported.returncode == 0, exported.stderr[-3000:]
    artifact = workdir / "members" / NAMES[2] / "export"
    assert (artifact / "metadata.json").is_file()

    # Interrupted after step 3: the population resumes from its `latest` and ends where the
    # uninterrupted run ended, array for array (the checkpoints' fingerprints).
    latest = workdir / "student" / "checkpoints" / "latest"
    final = json.loads((latest / "6" / "integrity" / "metadata").read_text())
    assert (latest / "3").is_dir()
    shutil.rmtree(latest / "6")
    again = mkln("train", *common, devices=1)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "[student] resumed from step 3" in again.stdout
    assert json.loads((latest / "6" / "integrity" / "metadata").read_text()) == final
