"""DCT as a matrix product (ours) against jax.scipy.fft.dctn, across image sizes.

Prints the median time of each per size and the ratio dctn / matrix (> 1: ours is faster), both
measured in this run, interleaved. Usage: python bench/dct_bench.py [--batch 32]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy import fft as jfft

from mkln_jax import frequency
from mkln_jax.backends.cpu import hostmem

hostmem.tune()  # as `mkln` does, before the first JAX computation


def _time(fn, x, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(x).block_until_ready()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    matrix = jax.jit(frequency.dct2)
    scipy_like = jax.jit(lambda x: jfft.dctn(x, axes=(1, 2), norm="ortho"))
    print(
        f"device: {jax.devices()[0].device_kind}, batch {args.batch}, float32, "
        f"median of {args.repeats}"
    )
    print("size | matrix ms | dctn ms | dctn / matrix | max |diff|")
    for size in (32, 64, 128, 256):
        x = jnp.asarray(
            np.random.default_rng(0).uniform(size=(args.batch, size, size, 3)), jnp.float32
        )
        diff = float(jnp.max(jnp.abs(matrix(x) - scipy_like(x))))
        a, b = [], []
        for _ in range(args.repeats):  # interleaved, so drift hits both alike
            a += _time(matrix, x, 1)
            b += _time(scipy_like, x, 1)
        ma, mb = np.median(a) * 1e3, np.median(b) * 1e3
        print(f"{size:4d} | {ma:9.2f} | {mb:7.2f} | {mb / ma:13.2f} | {diff:.1e}")


if __name__ == "__main__":
    main()
