"""Thin entry: the config is mkln_jax/configs/ffpp.py (`--config=ffpp` works anywhere)."""

from mkln_jax.configs.ffpp import get_config  # noqa: F401
