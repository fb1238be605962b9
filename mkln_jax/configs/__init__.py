"""The shipped configs: `default` documents every field; the others change a few. Select one with
`--config=<name>` (e.g. `--config=demo`), a package path, or a file path."""
