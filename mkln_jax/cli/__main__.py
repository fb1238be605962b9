"""`python -m mkln_jax.cli ...`, the same as `mkln ...`."""

from mkln_jax.cli import main

main.run()
