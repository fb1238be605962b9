"""Thin entry: runs mkln_jax/launch/tpu_pod.py (also `mkln launch tpu_pod`)."""

import sys

from mkln_jax.launch.tpu_pod import main

if __name__ == "__main__":
    sys.exit(main())
