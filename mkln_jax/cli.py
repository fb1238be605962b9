"""`mkln` command line: prepare | train | evaluate | export | predict | demo.

mkln prepare  [demo|ffpp|celebdf|folder|deepfakebench] --config=configs/demo.py
              [--config.data.root=DIR]   (real datasets: the download's folder)
mkln train    --config=configs/demo.py --workdir=runs/demo [--config.distill.temperature=4]
mkln evaluate --config=configs/demo.py --workdir=runs/demo [--split=test]
              [--protocol=robustness]   (noise, blur, JPEG, resizing, colour: curves + plot)
mkln export   --config=configs/demo.py --workdir=runs/demo [--artifact=runs/demo/export] [--onnx]
mkln evaluate ... --eval_data=configs/celebdf.py --eval_data_set=root=/data/Celeb-DF-v2
              (cross-dataset: the model of --config tested on another config's dataset)
mkln compare  WORKDIR [WORKDIR ...] [--out=table.md]   (runs side by side)
mkln predict  PATH|FOLDER [...] --artifact=runs/demo/export [--report=scores.csv] [--strip=DIR]
mkln demo     --config=configs/demo.py --workdir=runs/demo   (all of the above in order)
"""

from __future__ import annotations

import pathlib
import sys
import time

from absl import app, flags
from ml_collections import config_flags

COMMANDS = (
    "prepare",
    "train",
    "evaluate",
    "export",
    "predict",
    "demo",
    "convert-weights",
    "models",
    "compare",
)
REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO_ROOT / "configs" / "demo.py"

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "runs/demo", "Run folder: checkpoints, logs, evaluation, export.")
flags.DEFINE_string("artifact", "", "Export folder (default <workdir>/export).")
flags.DEFINE_string("split", "", "Split for `evaluate` (default config.eval.split).")
flags.DEFINE_integer("num_frames", 0, "Frames per video for `predict` (default from artifact).")
flags.DEFINE_string("model", "", "Zoo model name for `convert-weights`.")
flags.DEFINE_string("report", "", "`predict`: write per-frame scores to this .csv or .json.")
flags.DEFINE_string(
    "strip", "", "`predict`: write an annotated strip of frames (PNG) per input here."
)
flags.DEFINE_string("out", "", "`convert-weights`: output folder; `compare`: markdown file.")
flags.DEFINE_string(
    "eval_data",
    "",
    "`evaluate`: a config file whose dataset to test on (cross-dataset), e.g. configs/celebdf.py.",
)
flags.DEFINE_multi_string(
    "eval_data_set", [], "`evaluate`: field=value for --eval_data's data section (e.g. root=...)."
)
flags.DEFINE_bool("onnx", False, "`export`: also write model.onnx (the `onnx` extra) and check it.")
flags.DEFINE_enum(
    "protocol",
    "standard",
    ["standard", "robustness"],
    "`evaluate`: metrics with bootstrap intervals, or the perturbation suite (curves + plot).",
)
flags.DEFINE_string(
    "coordinator",
    "",
    "host:port of process 0, for multi-host runs (else Slurm / "
    "TPU pods are detected, or a single process runs).",
)
flags.DEFINE_integer("num_processes", 0, "Processes in the run, with --coordinator.")
flags.DEFINE_integer("process_id", -1, "This process's index, with --coordinator.")


def _take_config_file(argv: list[str]) -> tuple[list[str], str | None]:
    """Removes `--config=FILE` (or `--config FILE`) from argv; returns the rest and FILE.
    The file is loaded by config_lib (one-line errors), and its fields become typed
    `--config.a.b=value` flags."""
    rest, value, i = [], None, 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--config="):
            value = arg.split("=", 1)[1]
        elif arg == "--config" and i + 1 < len(argv):
            value, i = argv[i + 1], i + 1
        else:
            rest.append(arg)
        i += 1
    return rest, value


def _artifact_dir() -> str:
    return FLAGS.artifact or str(pathlib.Path(FLAGS.workdir) / "export")


def cmd_prepare(config) -> None:
    from mkln_jax.input_pipeline import prepare

    for line in prepare.prepare(config):
        print(line, flush=True)


def cmd_train(config) -> None:
    from mkln_jax import train

    results = train.train_and_evaluate(config, FLAGS.workdir)
    for stage, result in results.items():
        print(f"[{stage}] best validation: {result}")


def cmd_compare(paths: list[str]) -> int:
    from mkln_jax import evaluate

    if len(paths) < 1:
        print(
            "usage: mkln compare WORKDIR [WORKDIR ...] [--split=test] [--out=FILE.md]",
            file=sys.stderr,
        )
        return 2
    try:
        print(evaluate.compare_runs(paths, FLAGS.split or "test", FLAGS.out))
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def _apply_eval_data(config) -> None:
    """--eval_data=CONFIG: evaluate on that config's dataset (cross-dataset protocol); the
    model and its training data stay those of --config."""
    if not FLAGS.eval_data:
        return
    from mkln_jax import config_lib

    other = config_lib.load_file(FLAGS.eval_data)
    for key in FLAGS.eval_data_set:
        field, value = key.split("=", 1)
        other.data[field] = (
            type(other.data[field])(value) if other.data[field] is not None else value
        )
    with config.unlocked():
        config.eval.trained_on = config.data.to_dict()  # the model's own training data
        config.data = other.data
    config.data.image_size = config.eval.trained_on["image_size"]


def cmd_evaluate(config) -> None:
    from mkln_jax import evaluate, workdir

    workdir.require_existing(FLAGS.workdir)
    _apply_eval_data(config)
    if FLAGS.protocol == "robustness":
        _, markdown = evaluate.robustness_run(config, FLAGS.workdir, FLAGS.split or None)
    else:
        _, markdown = evaluate.evaluate_run(config, FLAGS.workdir, FLAGS.split or None)
    print(markdown)
    print(f"\nwritten to {pathlib.Path(FLAGS.workdir) / 'eval'}")


def cmd_export(config) -> None:
    from mkln_jax import config_lib, export, workdir

    workdir.require_existing(FLAGS.workdir)
    out = export.export_stage(config, FLAGS.workdir, _artifact_dir())
    print(f"exported the best student checkpoint to {out}")
    if FLAGS.onnx:
        import numpy as np

        from mkln_jax import onnx_export

        path = onnx_export.export_onnx(config, FLAGS.workdir, _artifact_dir())
        size = config.data.image_size
        images = np.random.default_rng(0).integers(0, 256, (8, size, size, 3), dtype=np.uint8)
        diff = onnx_export.verify(_artifact_dir(), images)
        print(f"ONNX: {path}; max |onnxruntime - JAX artifact| on 8 images: {diff:.2e}")
        if diff > 1e-4:
            raise config_lib.ConfigError(f"ONNX output differs from JAX by {diff:.2e} (> 1e-4)")


def cmd_predict(paths: list[str]) -> int:
    from mkln_jax import predict

    return predict.run(paths, _artifact_dir(), FLAGS.num_frames, FLAGS.report, FLAGS.strip)


def cmd_convert_weights(paths: list[str]) -> int:
    from mkln_jax import models
    from mkln_jax.models import convert

    if len(paths) != 1 or not FLAGS.model or not FLAGS.out:
        print("usage: mkln convert-weights SRC.pth --model=NAME --out=DIR", file=sys.stderr)
        return 2
    try:
        models.spec(FLAGS.model)
        out = convert.convert_weights(paths[0], FLAGS.model, FLAGS.out)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"converted {paths[0]} ({FLAGS.model}) to {out}")
    return 0


def cmd_models() -> int:
    from mkln_jax.models import summary

    print(summary.markdown_table(summary.model_table()))
    return 0


def cmd_demo(config) -> None:
    from mkln_jax.input_pipeline import demo

    timings = []
    for name, fn in (
        ("prepare", cmd_prepare),
        ("train (teacher, then student)", cmd_train),
        ("evaluate", cmd_evaluate),
        ("export", cmd_export),
    ):
        print(f"\n=== {name} ===", flush=True)
        t0 = time.time()
        fn(config)
        timings.append((name, time.time() - t0))
    print("\n=== predict ===", flush=True)
    t0 = time.time()
    from mkln_jax import config_lib
    from mkln_jax.input_pipeline import loader

    samples = demo.predict_samples(loader.demo_settings(config.data), config_lib.cache_dir(config))
    cmd_predict([str(path) for path in samples])
    timings.append(("predict", time.time() - t0))
    print("\n=== wall times ===")
    for name, seconds in timings:
        print(f"{name:32s} {seconds:7.1f} s")
    print(f"{'total':32s} {sum(s for _, s in timings):7.1f} s")


def main(argv: list[str]) -> int:
    from mkln_jax.errors import MklnError

    try:
        return _dispatch(argv)
    except MklnError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _dispatch(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    if argv[1] not in COMMANDS:
        print(
            f"error: unknown command {argv[1]!r}; the commands are: {', '.join(COMMANDS)}",
            file=sys.stderr,
        )
        return 2
    command, rest = argv[1], argv[2:]
    if command == "predict":
        return cmd_predict(rest)
    if command == "convert-weights":
        return cmd_convert_weights(rest)
    if command == "models":
        return cmd_models()
    if command == "compare":
        return cmd_compare(rest)
    config = FLAGS.config if "config" in FLAGS else None
    if command == "prepare" and len(rest) == 1 and config is not None:
        from mkln_jax.input_pipeline import loader

        name = "mkln_demo" if rest[0] == "demo" else rest[0]
        if name not in ("mkln_demo", *loader.REAL_DATASETS):
            print(
                f"error: unknown dataset {rest[0]!r}; give demo, {', '.join(loader.REAL_DATASETS)}",
                file=sys.stderr,
            )
            return 2
        config.data.name, rest = name, []
    if rest:
        print(f"error: unexpected arguments {rest}", file=sys.stderr)
        return 2
    if config is None:
        print("error: --config is required (e.g. --config=configs/demo.py)", file=sys.stderr)
        return 2
    from mkln_jax import config_lib, distributed, train

    distributed.initialize(FLAGS.coordinator, FLAGS.num_processes, FLAGS.process_id)
    commands = {
        "prepare": cmd_prepare,
        "train": cmd_train,
        "evaluate": cmd_evaluate,
        "export": cmd_export,
        "demo": cmd_demo,
    }
    try:
        config_lib.validate(config)
        commands[command](config)
    except (config_lib.ConfigError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except train.NonFiniteError as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    return 0


_FLAG_ERRORS = (flags.Error, KeyError, AttributeError, TypeError, ValueError)


def _bad_flag(err: Exception):
    """Exits with a flag or config-override error (unknown key, wrong type) as one line."""
    # config_flags wraps the KeyError's repr; unescape it into one readable line.
    message = str(err)
    if len(message) > 1 and message[0] in "'\"" and message[-1] == message[0]:
        message = message[1:-1]
    message = message.replace("\\n", " ").replace("\\'", "'").replace("\n", " ")
    print(
        f"error: bad flag or config override: {message} (run `mkln` without arguments for "
        "usage; config fields are in configs/default.py)",
        file=sys.stderr,
    )
    sys.exit(2)


def _parse_flags(argv: list[str]) -> list[str]:
    try:
        return FLAGS(argv)
    except _FLAG_ERRORS as err:
        _bad_flag(err)


def run() -> None:
    from mkln_jax import config_lib

    argv, config_file = _take_config_file(sys.argv)
    path = config_file or (str(DEFAULT_CONFIG) if DEFAULT_CONFIG.exists() else None)
    if path is not None:
        try:
            config = config_lib.load_file(path)
        except config_lib.ConfigError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
        try:  # the overrides are parsed here
            config_flags.DEFINE_config_dict(
                "config",
                config,
                "Config file (a Python file with get_config()); override fields with "
                "--config.a.b=value.",
                lock_config=True,
                sys_argv=argv,  # where its --config.a.b=value overrides are found
            )
        except _FLAG_ERRORS as err:
            _bad_flag(err)
    app.run(main, argv=argv, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
