"""Shared by the benchmark scripts: loading an ml_collections config file by path."""

from __future__ import annotations

import importlib.util


def load_config(path: str):
    """`get_config()` of the config file at `path` (e.g. configs/demo.py)."""
    spec = importlib.util.spec_from_file_location("bench_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()
