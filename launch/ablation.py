"""Thin entry: runs mkln_jax/launch/ablation.py (also `mkln launch ablation`)."""

import sys

from mkln_jax.launch.ablation import main

if __name__ == "__main__":
    sys.exit(main())
