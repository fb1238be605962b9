"""Backend-specific machinery, each behind one seam. Only `cpu/` exists: XLA:CPU's FFI kernels,
allocator tuning, XLA options and per-model CPU choices. On GPU and TPU nothing here runs."""
