"""The `mkln` dispatcher: picks the subcommand, defines only its flags, loads the config(s) with
one-line errors, prints help, and turns every project error into `error: ...` (exit 2)."""

from __future__ import annotations

import importlib
import sys
import textwrap

from absl import app, flags
from ml_collections import config_flags

# Order of `mkln --help`: the main path first, tools after.
COMMANDS = (
    "prepare",
    "train",
    "evaluate",
    "export",
    "predict",
    "demo",
    "compare",
    "models",
    "convert-weights",
    "launch",
)
DEFAULT_CONFIG = "demo"
FLAGS = flags.FLAGS
_FLAG_ERRORS = (flags.Error, KeyError, AttributeError, TypeError, ValueError)


def command_module(name: str):
    return importlib.import_module(f"mkln_jax.cli.{name.replace('-', '_')}")


def overview() -> str:
    lines = ["usage: mkln COMMAND [ARGS] [--flags]", "", "commands:"]
    for name in COMMANDS:
        lines.append(f"  {name:16s}{command_module(name).SUMMARY}")
    lines += [
        "",
        "`mkln COMMAND --help` lists a command's flags with an example. Configs: --config=NAME",
        "(a shipped config: demo, tiny, ffpp, celebdf, folder, default), a package path or a",
        "file; override any field with --config.a.b=value (fields: mkln_jax/configs/default.py).",
    ]
    return "\n".join(lines)


def command_help(name: str, names: list[str]) -> str:
    module = command_module(name)
    lines = [f"mkln {name}: {module.SUMMARY}", "", f"usage: {module.USAGE}"]
    lines.append(f"example: {module.EXAMPLE}")
    if getattr(module, "EXIT_STATUS", ""):
        lines.append(module.EXIT_STATUS)
    lines += ["", "flags:"]
    if module.TAKES_CONFIG:
        lines.append(f"  --config=NAME|FILE  (default: {DEFAULT_CONFIG})")
        lines.append("      the config; override any field with --config.a.b=value")
    second = getattr(module, "SECOND_CONFIG", "")
    if second:
        lines.append(f"  --{second}=NAME|FILE")
        lines.append(f"      a config whose dataset to test on; override with --{second}.a.b=value")
    for flag_name in names:
        flag = FLAGS[flag_name]
        default = f"  (default: {flag.default!r})" if flag.default not in ("", None) else ""
        lines.append(f"  --{flag_name}{default}")
        lines += textwrap.wrap(flag.help, 92, initial_indent="      ", subsequent_indent="      ")
    return "\n".join(lines)


def _take(argv: list[str], name: str) -> tuple[list[str], str | None]:
    """Removes `--NAME=VALUE` (or `--NAME VALUE`) from argv; returns the rest and VALUE."""
    rest, value, i = [], None, 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith(f"--{name}="):
            value = arg.split("=", 1)[1]
        elif arg == f"--{name}" and i + 1 < len(argv):
            value, i = argv[i + 1], i + 1
        else:
            rest.append(arg)
        i += 1
    return rest, value


def _bad_flag(err: Exception):
    """Exits with a flag or config-override error (unknown key, wrong type) as one line."""
    # config_flags wraps the KeyError's repr; unescape it into one readable line.
    message = str(err)
    if len(message) > 1 and message[0] in "'\"" and message[-1] == message[0]:
        message = message[1:-1]
    message = message.replace("\\n", " ").replace("\\'", "'").replace("\n", " ")
    print(
        f"error: bad flag or config override: {message} (see `mkln {sys.argv[1]} --help`; "
        "config fields are in mkln_jax/configs/default.py)",
        file=sys.stderr,
    )
    sys.exit(2)


def _define_config(name: str, spec: str, argv: list[str], help_text: str) -> None:
    """Loads a config (one-line errors) and defines it as a flag with typed --NAME.a.b=v
    overrides, which config_flags finds in `argv`."""
    from mkln_jax import config_lib
    from mkln_jax.errors import MklnError

    try:
        config = config_lib.load(spec)
    except MklnError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    try:
        config_flags.DEFINE_config_dict(name, config, help_text, lock_config=True, sys_argv=argv)
    except _FLAG_ERRORS as err:
        _bad_flag(err)


def _parse_flags(argv: list[str]) -> list[str]:
    try:
        return FLAGS(argv)
    except _FLAG_ERRORS as err:
        _bad_flag(err)


def compilation_cache() -> str:
    """Turns on XLA's persistent compilation cache for this process (every command, sweep point
    and resume reuses what an earlier one compiled). MKLN_XLA_CACHE=DIR moves it, =off
    disables it; a JAX_COMPILATION_CACHE_DIR set by the user wins. Returns the folder or ""."""
    import os

    setting = os.environ.get("MKLN_XLA_CACHE", "").strip()
    if setting.lower() in ("off", "0", "none") or os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return os.environ.get("JAX_COMPILATION_CACHE_DIR", "")
    import jax

    from mkln_jax import fetch

    path = setting or str(fetch.default_cache_dir() / "xla")
    jax.config.update("jax_compilation_cache_dir", path)
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        # Every program, not only those over jax's 1 s: building a model compiles one small
        # program per parameter shape. A tiny `mkln train` ran in 60.6 s cold, 35.0 s warm with
        # jax's threshold and 19.1 s warm with none (2-core Zen 2, 2026-12-06).
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return path


def run() -> None:
    from mkln_jax.backends.cpu import hostmem

    hostmem.tune()  # process-wide, before JAX starts its threads; a no-op off the CPU
    compilation_cache()
    from mkln_jax.logging_utils import quiet_library_notices

    quiet_library_notices()
    argv = list(sys.argv)
    if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
        print(overview())
        sys.exit(0 if len(argv) >= 2 else 2)
    command = argv[1]
    if command not in COMMANDS:
        print(
            f"error: unknown command {command!r}; the commands are: {', '.join(COMMANDS)} "
            "(`mkln --help` says what each does)",
            file=sys.stderr,
        )
        sys.exit(2)
    if command == "launch":
        sys.exit(command_module("launch").run(argv[2:]))
    module = command_module(command)
    names = module.define_flags()
    if module.TAKES_CONFIG:
        names += [n for n in _distributed_flags() if n not in names]
    if "-h" in argv[2:] or "--help" in argv[2:]:
        print(command_help(command, names))
        sys.exit(0)
    if module.TAKES_CONFIG:
        argv, spec = _take(argv, "config")
        second = getattr(module, "SECOND_CONFIG", "")
        second_spec = None
        if second:
            argv, second_spec = _take(argv, second)
        _define_config("config", spec or DEFAULT_CONFIG, argv, "The config.")
        if second_spec:
            _define_config(second, second_spec, argv, "A config whose dataset to test on.")
    app.run(lambda args: _main(command, args), argv=quiet_logs(argv), flags_parser=_parse_flags)


def quiet_logs(argv: list[str]) -> list[str]:
    """absl logging (orbax's, TFDS's, jax's) at WARNING unless --verbosity (or -v) is given:
    app.run would otherwise log at INFO, and orbax alone writes hundreds of multi-kilobyte
    INFO lines per training run between our progress lines."""
    flags_part = argv[: argv.index("--")] if "--" in argv else argv  # absl stops at "--"
    given = any(a == "-v" or a.startswith(("--verbosity", "-v=", "--v=")) for a in flags_part)
    return argv if given else [*argv[:2], "--verbosity=-1", *argv[2:]]


def _distributed_flags() -> list[str]:
    from mkln_jax.cli import common

    return common.distributed()


def _main(command: str, argv: list[str]) -> int:
    from mkln_jax.errors import MklnError

    module = command_module(command)
    args = argv[2:]
    try:
        if not module.TAKES_CONFIG:
            return module.main(None, args)
        if args and command != "prepare":
            print(f"error: unexpected arguments {args}", file=sys.stderr)
            return 2
        return _with_config(module, args)
    except MklnError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _with_config(module, args: list[str]) -> int:
    from mkln_jax import config_lib, distributed, train

    config = FLAGS.config
    distributed.initialize(FLAGS.coordinator, FLAGS.num_processes, FLAGS.process_id)
    try:
        if hasattr(module, "configure"):
            module.configure(config, args)
        config_lib.validate(config)
        from mkln_jax import checkpoint

        allowed = "allow_unverified" in FLAGS and FLAGS.allow_unverified
        with checkpoint.allowing_unverified(allowed):
            return module.main(config, args)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except train.NonFiniteError as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
