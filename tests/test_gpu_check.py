"""The accelerator check runs end to end at tiny sizes on the CPU, so it is known to work before
it meets a GPU (issue 19)."""

import json
import os
import pathlib
import subprocess
import sys
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_gpu_check_runs_at_tiny_sizes_on_the_cpu(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "", "MKLN_XLA_CACHE": "off"}
    out = tmp_path / "check.json"
    check = subprocess.Popen(
        [sys.executable, str(REPO / "bench" / "gpu_check.py"), "--tiny", f"--out={out}"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    # The JSON is rewritten after every case: while `mkln train` (the second case) runs, the
    # first case's figures are on disk already, so a lease cut short keeps them.
    seen = []
    while check.poll() is None:
        try:
            partial = json.loads(out.read_text())
        except (FileNotFoundError, ValueError):
            partial = {}
        if partial.get("jax_steps") and "end_to_end" not in partial:
            seen.append(partial)
        time.sleep(0.2)
    stdout = check.stdout.read()
    assert check.returncode == 0, stdout[-6000:]
    assert seen and "total_s" not in seen[-1]
    results = json.loads(out.read_text())
    assert set(results["jax_steps"]) == {"distill/float32"}  # the single models: same code
    for row in results["jax_steps"].values():
        # Unrounded figures: a slow, loaded machine gives small ones, never zero.
        assert row["images_per_s"] > 0 and row["tflops"] > 0
    # b: `mkln train` ran its stages on the dataset the check wrote, its student logged rates.
    e2e = results["end_to_end"]
    assert e2e["end_to_end_images_per_s"] > 0 and e2e["step_only_images_per_s"] > 0
    assert 0 <= e2e["device_idle_share"] <= 1 and e2e["student_steps"] == 8
    assert not results["skipped"] and results["total_s"] > 0
    assert "| distill | jax | float32 |" in stdout
    assert "[student] step 8 validation: auc" in stdout
    # This environment has no PyTorch: said in one line, not a traceback.
    assert "lacks torch, torchvision, timm: the PyTorch comparison is skipped" in stdout
