"""Thin entry: the config is mkln_jax/configs/demo.py (`--config=demo` works anywhere)."""

from mkln_jax.configs.demo import get_config  # noqa: F401
