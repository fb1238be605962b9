"""Thin entry: the config is mkln_jax/configs/tiny.py (`--config=tiny` works anywhere)."""

from mkln_jax.configs.tiny import get_config  # noqa: F401
