"""mkln_jax: face-forgery detectors with frequency-texture augmentation and distillation.

Importing the package tunes the C heap for XLA:CPU before JAX starts its threads (see
`hostmem`; MKLN_MALLOC=system leaves the allocator alone).
"""

from mkln_jax import hostmem

hostmem.tune()
