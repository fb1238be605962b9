"""The method's ablation: one command trains every variant for several seeds and writes the table.

    mkln launch ablation --config=configs/demo.py --workdir=runs/ablation \
        [--seeds=0,1,2] [--variants=baseline,kd] [--config.student.steps=300] [--dry_run]

Variants (each a set of config overrides on top of --config and its overrides):
    baseline            the student alone: cross-entropy, no frequency augmentation
    freq_aug            + frequency-texture augmentation
    kd                  + Hinton KD from the fine-tuned teacher (clean input), no augmentation
    freq_aug+kd         both, the teacher seeing the clean image
    freq_aug+kd_view    both, the teacher seeing the student's augmented view (consistent
                        teaching)
    freq_aug+kd+mutual  both (clean teacher input), the student an RGB peer trained together
                        with a frequency peer (Deep Mutual Learning); the RGB peer is evaluated
    freq_aug+kd_view+mutual  the same with consistent teaching (not in the default set)
The teacher is fine-tuned once (with the config's seed) and shared by every variant and seed,
so the spread across seeds is the student's (initialisation, data order, augmentation draws).
Models are selected on validation (reals + training methods) and tested once; the table gives
mean and sample standard deviation over seeds. Writes results.{md,csv,json} and results.png.
"""

from __future__ import annotations

import argparse
import csv
import json
import pathlib
import statistics
import sys

from mkln_jax.launch.common import (
    OVERRIDE_HELP,
    execute,
    markdown_table,
    mkln_command,
    parse_args,
)
from mkln_jax.launch.sweep import _trained_methods

CLEAN = "distill.teacher_input=clean"
VIEW = "distill.teacher_input=view"
VARIANTS: dict[str, tuple[str, ...]] = {
    "baseline": ("distill.teachers=()", "student.frequency_augment=False"),
    "freq_aug": ("distill.teachers=()", "student.frequency_augment=True"),
    "kd": ("student.frequency_augment=False", CLEAN),
    "freq_aug+kd": ("student.frequency_augment=True", CLEAN),
    "freq_aug+kd_view": ("student.frequency_augment=True", VIEW),
    "freq_aug+kd+mutual": ("student.frequency_augment=True", CLEAN, "mutual.enabled=True"),
    "freq_aug+kd_view+mutual": ("student.frequency_augment=True", VIEW, "mutual.enabled=True"),
}
DEFAULT_VARIANTS = tuple(v for v in VARIANTS if v != "freq_aug+kd_view+mutual")
TEACHER = "teacher_shared"


def run_dir(root: pathlib.Path, variant: str, seed: int) -> pathlib.Path:
    return root / variant / f"seed{seed}"


def commands(args, variant: str, seed: int) -> list[list[str]]:
    workdir = str(run_dir(pathlib.Path(args.workdir), variant, seed))
    overrides = [*args.overrides, *VARIANTS[variant], f"seed={seed}", "stages=('student',)"]
    overrides.append(f"distill.teachers=('run:{pathlib.Path(args.workdir) / TEACHER}/teacher',)")
    if "distill.teachers=()" in VARIANTS[variant]:
        overrides.remove(overrides[-1])
    return [
        mkln_command(action, args.config, workdir, overrides, args.mkln)
        for action in ("train", "evaluate")
    ]


def teacher_command(args) -> list[str]:
    workdir = str(pathlib.Path(args.workdir) / TEACHER)
    return mkln_command(
        "train", args.config, workdir, [*args.overrides, "stages=('teacher',)"], args.mkln
    )


def summarise(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else 0.0


def aggregate(args, variants: list[str], seeds: list[int]) -> list[dict]:
    from mkln_jax import evaluate  # jax and the models: only when there is something to read

    root = pathlib.Path(args.workdir)
    rows, per_seed = [], []
    for variant in variants:
        collected: dict[str, list[float]] = {}
        for seed in seeds:
            workdir = run_dir(root, variant, seed)
            result = workdir / "eval" / "test.json"
            if not result.exists():
                print(f"not finished: {workdir}", file=sys.stderr)
                continue
            metrics = json.loads(result.read_text())["student"]["metrics"]
            trained = _trained_methods(workdir)
            unseen = [m for m in metrics if m not in ("all", "seen methods") and m not in trained]
            values = {
                "val AUC": evaluate.best_validation_auc(workdir),
                "test AUC all": metrics["all"]["frame"]["auc"],
                "test AUC seen": metrics["seen methods"]["frame"]["auc"],
                **{f"test AUC {m} (unseen)": metrics[m]["frame"]["auc"] for m in unseen},
                "test video AUC all": metrics["all"]["video"]["auc"],
            }
            per_seed.append({"variant": variant, "seed": seed, **values})
            for key, value in values.items():
                collected.setdefault(key, []).append(value)
        if collected:
            row = {"variant": variant, "seeds": len(next(iter(collected.values())))}
            for key, values in collected.items():
                row[key] = summarise(values)
            rows.append(row)
    if not rows:
        return rows
    lines = markdown_table(
        rows, lambda v: f"{v[0]:.4f} ± {v[1]:.4f}" if isinstance(v, tuple) else str(v)
    )
    (root / "results.md").write_text("\n".join(lines) + "\n")
    (root / "results.json").write_text(json.dumps({"summary": rows, "runs": per_seed}, indent=2))
    with open(root / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(per_seed[0]))
        writer.writeheader()
        writer.writerows(per_seed)
    plot(rows, root / "results.png")
    print("\n".join(lines))
    return rows


def plot(rows: list[dict], path: pathlib.Path) -> None:
    """Grouped bars: mean test AUC (all, seen, unseen) per variant, with the seed spread."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    keys = [k for k in rows[0] if k.startswith("test AUC")]
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(keys)
    x = np.arange(len(rows))
    for i, key in enumerate(keys):
        means = [r[key][0] if key in r else np.nan for r in rows]
        spreads = [r[key][1] if key in r else 0.0 for r in rows]
        ax.bar(x + i * width, means, width, yerr=spreads, capsize=3, label=key)
    ax.set_xticks(x + width * (len(keys) - 1) / 2, [r["variant"] for r in rows], rotation=15)
    ax.set_ylabel("frame AUC (test)")
    ax.set_ylim(0.5, 1.0)
    ax.legend(fontsize=8)
    ax.set_title(f"ablation, mean ± std over {rows[0]['seeds']} seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=OVERRIDE_HELP)
    p.add_argument("--config", required=True)
    p.add_argument("--workdir", required=True)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS))
    beside = pathlib.Path(sys.executable).parent / "mkln"
    p.add_argument("--mkln", default=str(beside) if beside.exists() else "mkln")
    p.add_argument("--dry_run", action="store_true")
    p.add_argument("--aggregate_only", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parse_args(parser(), argv)
    seeds = [int(s) for s in args.seeds.split(",") if s]
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not seeds:
        print(f"error: unknown variants {unknown}; known: {list(VARIANTS)}", file=sys.stderr)
        return 2
    print(f"{len(variants)} variant(s) x {len(seeds)} seed(s) under {args.workdir}")
    if not args.aggregate_only:
        uses_teacher = any("distill.teachers=()" not in VARIANTS[v] for v in variants)
        if uses_teacher and (code := execute([teacher_command(args)], args.dry_run)):
            return code
        for seed in seeds:
            for variant in variants:
                if code := execute(commands(args, variant, seed), args.dry_run):
                    return code
        if args.dry_run:
            return 0
    aggregate(args, variants, seeds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
