"""Thin entries for `python launch/<name>.py` in a checkout. The launchers live in the package,
`mkln_jax/launch/`: `mkln launch <name> ...` or the `mkln-<name>` console scripts."""
