"""Thin entry: runs mkln_jax/launch/slurm.py (also `mkln launch slurm`)."""

import sys

from mkln_jax.launch.slurm import main

if __name__ == "__main__":
    sys.exit(main())
