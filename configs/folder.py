"""Thin entry: the config is mkln_jax/configs/folder.py (`--config=folder` works anywhere)."""

from mkln_jax.configs.folder import get_config  # noqa: F401
