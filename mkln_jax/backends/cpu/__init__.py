"""The XLA:CPU seam: our FFI kernels (`native/`), the allocator tuning (`hostmem`, applied by the
`mkln` entry point or an explicit `hostmem.tune()`, never on import) and XLA's CPU compiler
options (`xla_options`). Everything else in the package is backend-neutral JAX; the models reach
the kernels only through `mkln_jax.models.layers`, which falls back to plain `lax` off the CPU."""
