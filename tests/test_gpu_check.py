"""The accelerator check runs end to end at tiny sizes on the CPU, so it is known to work before
it meets a GPU (issue 19)."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_gpu_check_runs_at_tiny_sizes_on_the_cpu(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    out = tmp_path / "check.json"
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu_check.py"), "--tiny", f"--out={out}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads(out.read_text())
    assert set(results["jax_steps"]) == {"distill/float32"}  # the single models: same code
    for row in results["jax_steps"].values():
        assert row["images_per_s"] > 0 and row["tflops"] > 0
    # b: `mkln train` ran its stages on the dataset the check wrote, its student logged rates.
    e2e = results["end_to_end"]
    assert e2e["end_to_end_images_per_s"] > 0 and e2e["step_only_images_per_s"] > 0
    assert 0 <= e2e["device_idle_share"] <= 1 and e2e["student_steps"] == 8
    assert not results["skipped"]
    assert "| distill | jax | float32 |" in done.stdout
    assert "[student] step 8 validation: auc" in done.stdout
