"""The built-in demo: `make demo` runs prepare -> teacher -> student -> evaluate -> export ->
predict with this config on 2 CPU cores in a few minutes."""

from mkln_jax.configs import default


def get_config():
    return default.get_config()
