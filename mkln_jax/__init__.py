"""mkln_jax: face-forgery detectors with frequency-texture augmentation and distillation.

Importing the package changes nothing in the process. On CPU hosts, `mkln` (and the benchmarks)
call `mkln_jax.backends.cpu.hostmem.tune()` before JAX starts, to stop XLA:CPU page-faulting its
buffers every step; library users may call it themselves.
"""
