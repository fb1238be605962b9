"""Thin entry: the config is mkln_jax/configs/celebdf.py (`--config=celebdf` works anywhere)."""

from mkln_jax.configs.celebdf import get_config  # noqa: F401
