"""The locks agree with pyproject.toml: every requirement pinned within its range, with hashes;
the runtime lock a subset of the development lock at the same versions; each platform file at
the locked jax version and disjoint from the runtime lock (`make locks` writes them all)."""

import pathlib
import re
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = pathlib.Path(__file__).resolve().parents[1]
REQ = ROOT / "requirements"
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
VERSIONS = ("3.11", "3.12")


def pins(path: pathlib.Path) -> dict[str, tuple[str, int]]:
    """{name: (version, number of hashes)} of a hashed requirements file."""
    out, name = {}, None
    for line in path.read_text().splitlines():
        if m := re.match(r"^([A-Za-z0-9][\w.-]*)==([^\s;\\]+)", line):
            name = canonicalize_name(m.group(1))
            out[name] = (m.group(2), 0)
        elif name and "--hash=sha256:" in line:
            version, count = out[name]
            out[name] = (version, count + 1)
    return out


def check(requirements: list[str], locked: dict, python: str) -> list[str]:
    problems = []
    for text in requirements:
        req = Requirement(text)
        if req.marker and not req.marker.evaluate({"python_version": python}):
            continue
        name = canonicalize_name(req.name)
        if name not in locked:
            problems.append(f"{req.name} not locked")
        elif not req.specifier.contains(locked[name][0], prereleases=True):
            problems.append(f"{req.name}=={locked[name][0]} outside {req.specifier}")
    return problems


@pytest.mark.parametrize("python", VERSIONS)
def test_locks_follow_pyproject_with_hashes(python):
    runtime = pins(REQ / f"lock-py{python}.txt")
    dev = pins(REQ / f"lock-dev-py{python}.txt")
    extras = PROJECT["optional-dependencies"]
    assert check(PROJECT["dependencies"], runtime, python) == []
    dev_needs = [*PROJECT["dependencies"], *extras["test"], *extras["track"], *extras["hub"]]
    assert check(dev_needs, dev, python) == []
    for locked in (runtime, dev):
        assert all(hashes > 0 for _, hashes in locked.values())
    assert {n: v for n, (v, _) in runtime.items()} == {n: dev[n][0] for n in runtime if n in dev}, (
        "runtime and development locks pin different versions"
    )
    assert runtime.keys() <= dev.keys()
    for test_only in ("pytest", "ruff", "scikit-learn", "uv"):
        assert test_only not in runtime


@pytest.mark.parametrize("python", VERSIONS)
@pytest.mark.parametrize("platform", ["cuda12", "cuda13", "tpu"])
def test_platform_files_sit_on_the_locked_jax(python, platform):
    runtime = pins(REQ / f"lock-py{python}.txt")
    extra = pins(REQ / f"platform-{platform}-py{python}.txt")
    assert extra and not (extra.keys() & runtime.keys())
    assert all(hashes > 0 for _, hashes in extra.values())
    jax = runtime["jax"][0]
    plugins = {n: v for n, (v, _) in extra.items() if n.startswith(f"jax-{platform}")}
    assert all(v == jax for v in plugins.values()) and (plugins or platform == "tpu")
