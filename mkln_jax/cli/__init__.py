"""`mkln`, the command line: one module per subcommand (its flags, help, example and main);
`main.py` dispatches, prints help and turns every project error into one `error:` line."""


def run() -> None:
    """The `mkln` console script."""
    from mkln_jax.cli import main

    main.run()
