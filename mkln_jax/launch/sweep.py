"""Sweep any config fields over a grid, run locally or on a cluster, then one table
(markdown, CSV, JSON) and one plot of the results.

    mkln launch sweep --config=configs/demo.py --workdir=runs/sweep \
        --grid=distill.temperature=1,4,8 [--grid=distill.alpha=0.5,0.95] \
        [--reuse_teacher=runs/demo] [--runner=local|slurm|print] [--separate] [--dry_run]

When every swept field is one of the step's traced hyper-parameters (population.TRACED_FIELDS:
temperatures, weights, augmentation strengths), the grid trains as one population run in
--workdir: one program, one pass over the data and one teacher pass per batch for all points
(mkln_jax/population.py). Any other field (model, stream, freq_aug.block, ...) changes the
compiled program, so each point is its own run in a subfolder; `--separate` asks for that
always.

`--reuse_teacher` copies a finished teacher stage into every point, so a sweep over
distillation settings trains the teacher once. `--runner=slurm` submits one job per point
(through the slurm launcher); `print` only prints the commands. `--aggregate_only` rebuilds the
table from finished points. Model selection inside each point is on validation; the table shows
that validation AUC beside the test AUCs.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import pathlib
import shutil
import sys

from mkln_jax.launch import slurm
from mkln_jax.launch.common import (
    OVERRIDE_HELP,
    execute,
    markdown_table,
    mkln_command,
    parse_args,
)


def parse_grid(specs: list[str]) -> list[tuple[str, list[str]]]:
    """["a.b=1,2", "c=x"] -> [("a.b", ["1", "2"]), ("c", ["x"])]."""
    grid = []
    for spec in specs:
        if "=" not in spec:
            raise ValueError(f"--grid {spec!r}: expected field=v1,v2,...")
        field, values = spec.split("=", 1)
        grid.append((field, [v for v in values.split(",") if v != ""]))
    return grid


def points(grid: list[tuple[str, list[str]]]) -> list[dict[str, str]]:
    fields = [f for f, _ in grid]
    return [
        dict(zip(fields, combo, strict=True))
        for combo in itertools.product(*(values for _, values in grid))
    ]


def point_name(point: dict[str, str]) -> str:
    return "_".join(f"{field}-{value}" for field, value in point.items()).replace("/", "-")


def is_population(grid: list[tuple[str, list[str]]]) -> bool:
    from mkln_jax import population

    return all(field in population.TRACED_FIELDS for field, _ in grid)


def population_override(grid_points: list[dict[str, str]]) -> str:
    """population.members=(...) holding every point, its fields joined by ";"."""
    specs = [";".join(f"{k}={v}" for k, v in point.items()) for point in grid_points]
    return f"population.members={tuple(specs)!r}"


def population_commands(args, grid_points: list[dict[str, str]]) -> list[list[str]]:
    overrides = [*args.overrides, population_override(grid_points)]
    return [
        mkln_command(action, args.config, args.workdir, overrides, args.mkln)
        for action in ("train", "evaluate")
    ]


def aggregate_population(args, grid_points: list[dict[str, str]]) -> list[dict]:
    """The population run's table (eval/population_test.json) as the sweep's results."""
    root = pathlib.Path(args.workdir)
    source = root / "eval" / "population_test.json"
    if not source.exists():
        print(f"not finished: {root}", file=sys.stderr)
        return []
    rows = json.loads(source.read_text())
    return _write_results(root, rows, list(grid_points[0]))


def point_commands(args, point: dict[str, str]) -> list[list[str]]:
    workdir = str(pathlib.Path(args.workdir) / point_name(point))
    overrides = [*args.overrides, *(f"{k}={v}" for k, v in point.items())]
    return [
        mkln_command(action, args.config, workdir, overrides, args.mkln)
        for action in ("train", "evaluate")
    ]


def aggregate(args, grid_points: list[dict[str, str]]) -> list[dict]:
    """Reads each finished point; writes results.{md,csv,json} and results.png."""
    from mkln_jax import evaluate

    root = pathlib.Path(args.workdir)
    rows = []
    for point in grid_points:
        workdir = root / point_name(point)
        result = workdir / "eval" / "test.json"
        if not result.exists():
            print(f"not finished: {workdir}", file=sys.stderr)
            continue
        metrics = json.loads(result.read_text())["student"]["metrics"]
        unseen = [
            m
            for m in metrics
            if m not in ("all", "seen methods") and m not in _trained_methods(workdir)
        ]
        row = {
            **point,
            "val_auc": evaluate.best_validation_auc(workdir),
            "test_auc_all": metrics["all"]["frame"]["auc"],
            "test_auc_seen": metrics["seen methods"]["frame"]["auc"],
        }
        for method in unseen:
            row[f"test_auc_{method}"] = metrics[method]["frame"]["auc"]
        rows.append(row)
    return _write_results(root, rows, list(grid_points[0]))


def _write_results(root: pathlib.Path, rows: list[dict], fields: list[str]) -> list[dict]:
    if not rows:
        return rows
    columns = list(dict.fromkeys(k for row in rows for k in row))
    lines = markdown_table(rows, lambda v: f"{v:.4f}" if isinstance(v, float) else str(v))
    (root / "results.md").write_text("\n".join(lines) + "\n")
    with open(root / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    (root / "results.json").write_text(json.dumps(rows, indent=2))
    plot(rows, fields, root / "results.png")
    print("\n".join(lines))
    return rows


def submit_setup(args) -> str:
    """Submits the one job that installs the platform into the checkout's .venv; every point
    depends on it, so no two jobs install into one .venv. Returns its job id ("" on failure)."""
    import subprocess

    workdir = pathlib.Path(args.workdir)
    script = slurm.setup_script(args.platform, args.repo, str(workdir), args.partition)
    path = workdir / "mkln-setup.sbatch"
    command = ["sbatch", "--parsable", str(path)]
    if args.dry_run:
        print(script)
        print("[dry-run] " + " ".join(command))
        return "<setup-job-id>"
    workdir.mkdir(parents=True, exist_ok=True)
    path.write_text(script)
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        print(f"error: sbatch of the setup job failed: {done.stderr.strip()}", file=sys.stderr)
        return ""
    job = done.stdout.strip().split(";")[0]
    print(f"+ {' '.join(command)}  (job {job}; every point waits for it)")
    return job


def submit_run(args, workdir, job_name: str, overrides, setup_job: str) -> int:
    """One run (a point, or the whole population) as a Slurm job that waits for the setup job
    and installs nothing itself."""
    slurm_args = [
        "--config",
        args.config,
        "--workdir",
        str(workdir),
        "--job_name",
        job_name[:64],
        f"--platform={args.platform}",
        f"--repo={args.repo}",
        "--no_setup",
        f"--dependency={setup_job}",
        *([f"--partition={args.partition}"] if args.partition else []),
        *(f"--config.{override}" for override in overrides),
    ]
    return slurm.main([*slurm_args, *(["--dry_run"] if args.dry_run else [])])


def _trained_methods(workdir: pathlib.Path) -> set[str]:
    """The point's training methods, from the config saved with its latest checkpoint."""
    for config_file in sorted((workdir / "student" / "checkpoints" / "latest").glob("*/config/*")):
        try:
            return set(json.loads(config_file.read_text())["data"]["train_methods"])
        except (ValueError, KeyError):
            continue
    return set()


def plot(rows: list[dict], fields: list[str], path: pathlib.Path) -> None:
    """One field: AUCs against its values. Two fields: a heatmap of test AUC (all methods)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    if len(fields) == 2:
        xs = sorted({r[fields[0]] for r in rows}, key=_number)
        ys = sorted({r[fields[1]] for r in rows}, key=_number)
        grid = [
            [
                next(
                    (r["test_auc_all"] for r in rows if r[fields[0]] == x and r[fields[1]] == y),
                    float("nan"),
                )
                for x in xs
            ]
            for y in ys
        ]
        image = ax.imshow(grid, cmap="viridis", origin="lower")
        ax.set_xticks(range(len(xs)), xs)
        ax.set_yticks(range(len(ys)), ys)
        ax.set_xlabel(fields[0])
        ax.set_ylabel(fields[1])
        for j, row in enumerate(grid):
            for i, value in enumerate(row):
                ax.text(i, j, f"{value:.3f}", ha="center", va="center", color="w")
        fig.colorbar(image, label="test frame AUC (all methods)")
    else:
        field = fields[0]
        ordered = sorted(rows, key=lambda r: _number(r[field]))
        xs = [r[field] for r in ordered]
        for key in [k for k in ordered[0] if k.endswith("auc") or k.startswith("test_auc")]:
            ax.plot(xs, [r[key] for r in ordered], marker="o", label=key)
        ax.set_xlabel(field)
        ax.set_ylabel("frame AUC")
        ax.legend()
    ax.set_title(path.parent.name)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _number(value: str):
    try:
        return (0, float(value))
    except ValueError:
        return (1, value)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=OVERRIDE_HELP)
    p.add_argument("--config", required=True)
    p.add_argument("--workdir", required=True, help="sweep folder; one subfolder per point")
    p.add_argument("--grid", action="append", default=[], help="field=v1,v2,... (repeatable)")
    p.add_argument("--reuse_teacher", default="", help="workdir with a finished teacher stage")
    p.add_argument("--runner", choices=("local", "slurm", "print"), default="local")
    beside = pathlib.Path(sys.executable).parent / "mkln"  # this environment's entry point
    p.add_argument(
        "--mkln", default=str(beside) if beside.exists() else "mkln", help="the mkln executable"
    )
    p.add_argument("--platform", choices=slurm.PLATFORMS, default="cuda12", help="slurm runner")
    p.add_argument("--partition", default="", help="slurm runner: the partition")
    p.add_argument("--repo", default=str(pathlib.Path(__file__).resolve().parents[2]))
    p.add_argument("--dry_run", action="store_true", help="print what would run")
    p.add_argument("--aggregate_only", action="store_true")
    p.add_argument(
        "--separate",
        action="store_true",
        help="one run per point even when every swept field is traced (no population)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = parse_args(parser(), argv)
    grid_points = points(parse_grid(args.grid))
    if not grid_points or not args.grid:
        print("error: give at least one --grid field=v1,v2", file=sys.stderr)
        return 2
    grid = parse_grid(args.grid)
    if is_population(grid) and not args.separate:
        return _run_population(args, grid_points)
    static = [f for f, _ in grid if not is_population([(f, [])])]
    why = f"{', '.join(static)} changes the compiled program" if static else "--separate"
    print(f"{len(grid_points)} point(s) under {args.workdir}, one run each ({why})")
    setup_job = ""
    if args.runner == "slurm" and not args.aggregate_only:
        setup_job = submit_setup(args)
        if not setup_job:
            return 1
    if not args.aggregate_only:
        for point in grid_points:
            workdir = pathlib.Path(args.workdir) / point_name(point)
            if args.reuse_teacher:
                source = pathlib.Path(args.reuse_teacher) / "teacher"
                print(
                    f"{'[dry-run] ' if args.dry_run else ''}copy {source} -> {workdir / 'teacher'}"
                )
                if not args.dry_run and not (workdir / "teacher").exists():
                    shutil.copytree(source, workdir / "teacher")
            if args.runner == "slurm":
                overrides = [*args.overrides, *(f"{k}={v}" for k, v in point.items())]
                code = submit_run(args, workdir, f"mkln-{point_name(point)}", overrides, setup_job)
            else:
                code = execute(point_commands(args, point), args.dry_run or args.runner == "print")
            if code:
                return code
        if args.dry_run or args.runner != "local":
            return 0
    aggregate(args, grid_points)
    return 0


def _run_population(args, grid_points: list[dict[str, str]]) -> int:
    workdir = pathlib.Path(args.workdir)
    print(
        f"{len(grid_points)} point(s), every swept field traced: one population run in "
        f"{workdir} (one program; the data, the augmented views and the teacher passes shared; "
        "--separate for one run per point)"
    )
    if not args.aggregate_only:
        if args.reuse_teacher:
            source = pathlib.Path(args.reuse_teacher) / "teacher"
            print(f"{'[dry-run] ' if args.dry_run else ''}copy {source} -> {workdir / 'teacher'}")
            if not args.dry_run and not (workdir / "teacher").exists():
                shutil.copytree(source, workdir / "teacher")
        if args.runner == "slurm":
            setup_job = submit_setup(args)
            if not setup_job:
                return 1
            overrides = [*args.overrides, population_override(grid_points)]
            name = f"mkln-population-{workdir.name}"
            return submit_run(args, workdir, name, overrides, setup_job)
        code = execute(
            population_commands(args, grid_points), args.dry_run or args.runner == "print"
        )
        if code or args.dry_run or args.runner != "local":
            return code
    aggregate_population(args, grid_points)
    return 0


if __name__ == "__main__":
    sys.exit(main())
