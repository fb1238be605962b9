"""Thin entry: the config is mkln_jax/configs/default.py (`--config=default` works anywhere)."""

from mkln_jax.configs.default import get_config  # noqa: F401
