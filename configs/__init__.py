"""Thin entries for `--config=configs/<name>.py` in a checkout. The configs themselves live in
the package, `mkln_jax/configs/`, so they ship in the wheel: `--config=demo` or
`--config=mkln_jax.configs.demo` work anywhere."""
