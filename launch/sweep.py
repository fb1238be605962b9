"""Thin entry: runs mkln_jax/launch/sweep.py (also `mkln launch sweep`)."""

import sys

from mkln_jax.launch.sweep import main

if __name__ == "__main__":
    sys.exit(main())
