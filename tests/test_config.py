"""Bad configs fail with a clear message before anything compiles."""

import os

import pytest
from cli import mkln

from mkln_jax import config_lib
from mkln_jax.configs import demo


def test_demo_config_is_valid():
    config_lib.validate(demo.get_config(), num_devices=8)


def test_validate_lists_every_problem_at_once():
    config = demo.get_config()
    config.distill.alpha = 1.5
    config.teacher.model = "resnet9000"
    config.data.train_methods = ("self_blend", "morphing")
    config.student.batch_size = 12
    config.student.model = "resnet18"
    config.student.pretrained = "imagenet"  # no ResNet weights ship in a package
    config.train.cpu.convolutions = "onednn"
    config.train.cpu.dots = "mkl"
    with pytest.raises(config_lib.ConfigError) as err:
        config_lib.validate(config, num_devices=8)
    message = str(err.value)
    assert "distill.alpha" in message
    assert "resnet9000" in message
    assert "morphing" in message
    assert "train.cpu.convolutions must be auto, ynnpack or eigen, got 'onednn'" in message
    assert "train.cpu.dots must be auto, ynnpack or eigen, got 'mkl'" in message
    assert "student.batch_size=12" in message
    assert "student.pretrained: resnet18 has no ImageNet weights" in message


@pytest.mark.slow
@pytest.mark.parametrize(
    "override,named",
    [
        ("--config.distill.temprature=3", "temprature"),  # unknown key
        ("--config.teacher.steps=many", "teacher.steps"),  # ill-typed value
    ],
)
def test_bad_config_override_fails_naming_it(override, named):
    result = mkln(
        "train", "--config=configs/demo.py", override, "--workdir=/nonexistent/never-created"
    )
    assert result.returncode == 2
    assert named in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_invalid_value_fails_before_any_work():
    result = mkln(
        "train",
        "--config=configs/demo.py",
        "--config.distill.temperature=-1",
        "--workdir=/nonexistent/never-created",
    )
    assert result.returncode == 2
    assert "distill.temperature must be > 0" in result.stderr


def test_method_settings_are_checked_together(tmp_path):
    config = demo.get_config()
    config.student.stream = "spectral"
    config.distill.teachers = ("teacher", "run:" + str(tmp_path / "nothing" / "teacher"), "me")
    config.distill.teacher_weights = (1.0, 2.0)
    config.distill.teacher_input = "noisy"
    config.distill.schedule = "step"
    config.distill.feature_loss = "cosine"
    config.mutual.enabled = True
    config.mutual.deploy = "both"
    config.freq_aug.block = 7
    with pytest.raises(config_lib.ConfigError) as err:
        config_lib.validate(config, num_devices=8)
    message = str(err.value)
    for expected in (
        "student.stream must be one of",
        "no checkpoints under",
        "'me': expected 'teacher'",
        "teacher_weights (1.0, 2.0) must give one non-negative weight per teacher (3)",
        "distill.teacher_input",
        "distill.schedule",
        "feature_loss needs teachers and mutual.enabled = False",
        "mutual.deploy",
        "freq_aug.block",
    ):
        assert expected in message


CONFIG_FILES = {
    "syntax": ("def get_config(:\n    pass\n", r"broken\.py, line 1: syntax error"),
    "raises": ("def get_config():\n    raise RuntimeError('boom')\n", r"line 2: .*boom"),
    "exits": ("import sys\n\ndef get_config():\n    sys.exit(0)\n", r"line 4: .*SystemExit"),
    "wrong_type": ("def get_config():\n    return 5\n", "returned a int"),
    "no_get_config": ("x = 1\n", "defines no get_config"),
}


@pytest.mark.parametrize("case", sorted(CONFIG_FILES))
def test_a_config_file_that_cannot_load_is_one_error_line(tmp_path, case):
    source, pattern = CONFIG_FILES[case]
    path = tmp_path / "broken.py"
    path.write_text(source)
    with pytest.raises(config_lib.ConfigError, match=pattern):
        config_lib.load_file(path)


@pytest.mark.slow
def test_config_load_failures_and_unknown_commands_exit_with_one_line(tmp_path):
    (tmp_path / "exits.py").write_text(CONFIG_FILES["exits"][0])
    (tmp_path / "a_file").write_text("")
    cases = [
        (["train", f"--config={tmp_path / 'missing.py'}"], "not found"),
        (["train", f"--config={tmp_path / 'exits.py'}"], "SystemExit"),  # not a silent exit 0
        (["trian", "--config=configs/demo.py"], "unknown command 'trian'"),
        (["train", "--config=configs/tiny.py", f"--workdir={tmp_path / 'a_file'}"], "is a file"),
    ]
    for args, expected in cases:
        result = mkln(*args, f"--workdir={tmp_path / 'w'}" if len(args) == 2 else "--")
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert result.returncode == 2, (args, result.stderr[-2000:])
        assert len(errors) == 1 and expected in errors[0], (args, result.stderr[-2000:])
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "w").exists()


def test_the_compilation_cache_is_on_by_default_and_one_setting_moves_or_disables_it(
    tmp_path, monkeypatch
):
    import jax

    from mkln_jax.cli import main

    before = jax.config.jax_compilation_cache_dir
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    monkeypatch.delenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", raising=False)
    try:
        monkeypatch.setenv("MKLN_CACHE", str(tmp_path / "cache"))
        monkeypatch.delenv("MKLN_XLA_CACHE", raising=False)
        assert main.compilation_cache() == str(tmp_path / "cache" / "xla")
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "cache" / "xla")
        monkeypatch.setenv("MKLN_XLA_CACHE", str(tmp_path / "elsewhere"))
        assert main.compilation_cache() == str(tmp_path / "elsewhere")
        jax.config.update("jax_compilation_cache_dir", before)
        monkeypatch.setenv("MKLN_XLA_CACHE", "off")
        assert main.compilation_cache() == ""
        assert jax.config.jax_compilation_cache_dir == before
    finally:
        jax.config.update("jax_compilation_cache_dir", before)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def test_resume_compares_only_fields_both_configs_know():
    import ml_collections

    from mkln_jax import checkpoint

    saved = {"seed": 1, "removed_since": 2, "train": {"steps": 10, "cpu_dots": "auto"}}
    today = ml_collections.ConfigDict({"seed": 1, "added_since": 3, "train": {"steps": 20}})
    assert checkpoint.config_differences(saved, today) == ["train.steps (10 -> 20)"]


def test_library_logs_default_to_warning_before_any_double_dash():
    from mkln_jax.cli.main import quiet_logs

    assert quiet_logs(["mkln", "prepare", "ffpp", "--x=1"]) == [
        "mkln",
        "prepare",
        "--verbosity=-1",
        "ffpp",
        "--x=1",
    ]
    assert quiet_logs(["mkln", "train", "--", "a"])[2] == "--verbosity=-1"
    assert quiet_logs(["mkln", "train", "--verbosity=0"]) == ["mkln", "train", "--verbosity=0"]
    assert quiet_logs(["mkln", "train", "-v", "1"]) == ["mkln", "train", "-v", "1"]
    # A --verbosity after "--" is an argument, not the flag.
    assert "--verbosity=-1" in quiet_logs(["mkln", "train", "--", "--verbosity=0"])


@pytest.mark.parametrize(
    "backend,dtype,workers", [("cpu", "float32", 0), ("gpu", "bfloat16", 8), ("tpu", "bfloat16", 8)]
)
def test_auto_settings_follow_the_platform_and_explicit_ones_stay(
    monkeypatch, backend, dtype, workers
):
    import jax

    from mkln_jax.configs import default

    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    config = default.get_config()
    assert config.train.compute_dtype == "auto" and config.data.read_workers == -1
    assert config_lib.compute_dtype(config) == dtype
    assert config_lib.read_workers(config) == workers
    config.train.compute_dtype, config.data.read_workers = "float32", 3
    assert config_lib.compute_dtype(config) == "float32" and config_lib.read_workers(config) == 3


def test_the_ffpp_config_scales_batch_and_learning_rate_with_the_devices():
    from mkln_jax.configs import ffpp

    config = ffpp.get_config()
    assert config.train.reference_devices == 16
    assert config_lib.for_devices(config, 16) is config
    pod = config_lib.for_devices(config, 64)
    assert (pod.teacher.batch_size, pod.student.batch_size) == (512, 1024)
    assert pod.teacher.learning_rate == pytest.approx(8e-4)
    host = config_lib.for_devices(config, 8)
    assert host.teacher.batch_size == 64 and host.teacher.learning_rate == pytest.approx(1e-4)
    assert config.teacher.batch_size == 128  # the config itself is unchanged
    config.teacher.batch_size = 100  # 6.25 per device: refused before anything compiles
    with pytest.raises(config_lib.ConfigError, match="must be a multiple of it"):
        config_lib.validate(config, num_devices=8)
    with pytest.raises(config_lib.ConfigError, match="does not scale to 3"):
        config_lib.for_devices(config, 3)
