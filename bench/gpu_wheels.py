"""The wheels bench/gpu_check.py carries to a GPU machine that has no network: every runtime
package of the Python 3.12 lock except the large ones such a machine has (JAX, NumPy, SciPy,
OpenCV, Flax, Optax, Orbax, TensorStore, Pillow) or `mkln train` never imports (PyAV,
PyArrow, Matplotlib), for x86-64 Linux, checked against the lock's hashes. A device run
carries at most 64 MiB in all, so the folder must stay under LIMIT_MIB.

    python bench/gpu_wheels.py [--dest=build/gpu_wheels]
    python bench/gpu_check.py --wheels=build/gpu_wheels ...     # on the GPU machine

Packages published as source only (promise) are built into a wheel here, from the hashed
source. On the machine, gpu_check installs only the distributions it lacks.
"""

from __future__ import annotations

import argparse
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parents[1]
LOCK = REPO / "requirements" / "lock-py3.12.txt"
LEFT_OUT = {
    "jax", "jaxlib", "numpy", "scipy", "ml-dtypes", "flax", "optax", "orbax-checkpoint",
    "tensorstore", "opencv-python-headless", "pillow", "av", "pyarrow", "matplotlib", "contourpy",
    "fonttools", "kiwisolver", "cycler", "pyparsing", "python-dateutil",
}  # fmt: skip
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
LIMIT_MIB = 56


def lock_entries(lock: pathlib.Path) -> dict[str, str]:
    """{name: its requirement lines (pin and hashes)} of a uv lock with hashes."""
    entries, name = {}, None
    for line in lock.read_text().splitlines():
        if match := re.match(r"^([A-Za-z0-9_.\-]+)==", line):
            name = match.group(1).lower().replace("_", "-")
            entries[name] = line
        elif name and line.startswith(" "):
            entries[name] += "\n" + line
        else:
            name = None
    return entries


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dest", default=str(REPO / "build" / "gpu_wheels"))
    args = parser.parse_args()
    dest = pathlib.Path(args.dest)
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    wanted = {k: v for k, v in lock_entries(LOCK).items() if k not in LEFT_OUT}
    pip = [sys.executable, "-m", "pip"]
    target = ["--python-version", "3.12", "--only-binary=:all:"]
    target += [f"--platform={p}" for p in PLATFORMS]
    with tempfile.TemporaryDirectory() as tmp:
        sources = []
        for name, lines in wanted.items():
            requirement = pathlib.Path(tmp, f"{name}.txt")
            requirement.write_text(lines + "\n")
            command = [*pip, "download", "-q", "--no-deps", "--require-hashes", "-d", str(dest)]
            got = subprocess.run([*command, *target, "-r", str(requirement)], capture_output=True)
            if got.returncode:
                sources.append(requirement)  # no wheel for the platform: a source release
        for requirement in sources:  # pure-Python source releases, built into a wheel here
            command = [*pip, "wheel", "-q", "--no-deps", "--require-hashes", "-w", str(dest)]
            subprocess.run([*command, "-r", str(requirement)], check=True)
    built = sorted(dest.glob("*.whl"))
    platform_specific = [
        w.name for w in built if "linux" not in w.name and "none-any" not in w.name
    ]
    if platform_specific:
        sys.exit(f"{dest}: wheels for another platform: {', '.join(platform_specific)}")
    size = sum(w.stat().st_size for w in built) / 2**20
    print(f"{len(built)} wheels, {size:.1f} MiB in {dest}")
    if len(built) != len(wanted):
        sys.exit(f"expected {len(wanted)} wheels, got {len(built)}")
    if size > LIMIT_MIB:
        sys.exit(f"{size:.1f} MiB is over the {LIMIT_MIB} MiB a device run can carry")


if __name__ == "__main__":
    main()
