"""`mkln prepare`: build the configured dataset once."""

from __future__ import annotations

SUMMARY = "build the configured dataset (TFDS ArrayRecord) once; later runs reuse it"
USAGE = "mkln prepare [demo|ffpp|celebdf|folder|deepfakebench] --config=CONFIG [--config.a.b=v]"
EXAMPLE = "mkln prepare ffpp --config=ffpp --config.data.root=/data/FaceForensics++"
TAKES_CONFIG = True


def define_flags() -> list[str]:
    from mkln_jax.cli import common

    # A run's commands share their flags, so `prepare` takes --workdir too; the dataset itself
    # goes to config.data.data_dir (default <cache_dir>/tfds), where every run finds it.
    return common.workdir()


def configure(config, args: list[str]) -> None:
    """The dataset named on the command line replaces data.name (before validation)."""
    from mkln_jax import config_lib
    from mkln_jax.input_pipeline import splits

    if len(args) > 1:
        raise config_lib.ConfigError(f"unexpected arguments {args[1:]}")
    if args:
        name = "mkln_demo" if args[0] == "demo" else args[0]
        if name not in ("mkln_demo", *splits.REAL_DATASETS):
            known = ", ".join(splits.REAL_DATASETS)
            raise config_lib.ConfigError(f"unknown dataset {args[0]!r}; give demo, {known}")
        config.data.name = name


def main(config, args: list[str]) -> int:
    from mkln_jax.input_pipeline import prepare

    for line in prepare.prepare(config):
        print(line, flush=True)
    return 0
