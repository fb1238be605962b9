"""Compiling for a pod here: `mkln train --compile_only` on this machine's devices and for a TPU
topology (XLA:TPU from libtpu, no TPU), and bench/pod_cost.py on the smallest topology."""

import json
import os
import pathlib
import subprocess
import sys

import pytest
from cli import mkln

from mkln_jax import aot
from mkln_jax.errors import MklnError

pytestmark = pytest.mark.slow  # compiles, and fetches libtpu once

REPO = pathlib.Path(__file__).resolve().parents[1]
SMALL = [
    "--config=configs/tiny.py",
    "--config.teacher.model=small_cnn",
    "--config.teacher.pretrained=",
    "--config.teacher.batch_size=32",
    "--config.student.batch_size=32",
]


@pytest.fixture(scope="module")
def libtpu():
    names = ("TPU_LIBRARY_PATH", "TPU_ACCELERATOR_TYPE", "ALLOW_MULTIPLE_LIBTPU_LOAD")
    saved = {k: os.environ.get(k) for k in names}
    try:
        yield aot.use_libtpu()
    except MklnError as err:
        pytest.skip(f"no libtpu to be had here: {err}")
    finally:  # the variables go with this module's subprocesses only
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _costs(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith(("[teacher]", "[student]"))]


def test_compile_only_prints_each_stage_for_this_machine_and_for_a_tpu_slice(libtpu, tmp_path):
    here = mkln("train", *SMALL, f"--workdir={tmp_path}/run", "--compile_only")
    assert here.returncode == 0, here.stderr[-3000:]
    lines = _costs(here.stdout)
    assert [x.split()[0] for x in lines] == ["[teacher]", "[student]"]
    assert "cpu (8 devices, batch 32)" in lines[0] and "all-reduce" in lines[0]
    assert not (tmp_path / "run").exists()  # nothing trained, nothing written
    pod = mkln("train", *SMALL, f"--workdir={tmp_path}/run", "--compile_only", "--topology=v5e:4x4")
    assert pod.returncode == 0, pod.stderr[-3000:]
    lines = _costs(pod.stdout)
    assert len(lines) == 2 and all("v5e:4x4 (16 devices, batch 32)" in x for x in lines)
    assert all(" of 16 (fits)" in x and "roofline" in x for x in lines)
    odd = mkln(
        "train",
        *SMALL,
        "--config.teacher.batch_size=24",
        f"--workdir={tmp_path}/run",
        "--compile_only",
        "--topology=v5e:4x4",
    )
    assert odd.returncode == 2
    assert "teacher.batch_size=24 does not split over 16 devices" in odd.stderr


def test_pod_cost_reports_a_tpu_slice_beside_a_cpu_mesh(libtpu, tmp_path):
    out = tmp_path / "cost.json"
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "pod_cost.py"),
            "--config=configs/tiny.py",
            "--steps=student",
            "--topologies=v5e:4x4",
            "--cpu=8",
            "--per_chip=2",
            f"--out={out}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["target"], r["chips"]) for r in rows] == [("v5e:4x4", 16), ("cpu:8", 8)]
    tpu, cpu = rows
    assert tpu["fits"] and tpu["memory_bytes"] > 0 and tpu["flops"] > 0
    assert tpu["roofline_s"] > 0 and tpu["bytes_sent"] > 0 and cpu["bytes_sent"] > 0
    assert set(tpu["collective_count"]) == {"all-reduce"}
    # Each BatchNorm layer reduces its statistics forward and its two sums backward; the
    # gradients go in a few combined all-reduces.
    assert 0 < tpu["batchnorm_all_reduces"] < tpu["collective_count"]["all-reduce"]
    assert "| student | v5e:4x4 | 16 | 2 |" in done.stdout
