"""Scoring a split with a trained model, and the evaluation report (JSON + markdown)."""

from __future__ import annotations

import csv
import json
import pathlib
import time

import jax
import ml_collections
import numpy as np

from mkln_jax import (
    config_lib,
    experiment,
    fileio,
    metrics,
    perturb,
    population,
    scoring,
    tracking,
)
from mkln_jax.input_pipeline import splits
from mkln_jax.logging_utils import MetricLogger


def evaluate_run(config: ml_collections.ConfigDict, workdir: str, split: str | None = None):
    """Scores `split` with the best teacher and student checkpoints; writes
    <workdir>/eval/<split>.json and .md and returns (results, markdown)."""
    config_lib.validate(config)
    split = split or config.eval.split
    mesh = experiment.make_mesh(config)
    source = splits.open_split(config.data, config_lib.data_dir(config), split)
    index = splits.split_index(config.data, config_lib.data_dir(config), split)
    results, sections = {}, []
    for stage in ["weights"] if config.eval.weights else config.stages:
        if stage == "weights":  # a detector from weights alone, e.g. DeepfakeBench's
            given = config_lib.parse_teacher(config.eval.weights)
            model, frozen, description = experiment.load_weights(config, given, mesh)
            best_step = None
        else:
            model, frozen, best_step = experiment.load_best(config, workdir, stage, mesh)
            description = experiment.describe_model(config, stage)
        eval_step = scoring.jit_eval_step(
            model, mesh, (frozen.params, frozen.batch_stats), with_margin=True
        )
        scored = scoring.predict_source(
            eval_step,
            frozen.params,
            frozen.batch_stats,
            source,
            mesh,
            config.eval.batch_size,
            progress=f"[evaluate] {stage} {split}",
        )
        probs, margins = scored[:, 0], scored[:, 1]
        results[stage], section = _stage_report(
            config, workdir, stage, split, index, probs, best_step, description
        )
        calibration = _calibration(config, workdir, stage, eval_step, frozen, mesh, split)
        if calibration is not None:
            results[stage]["calibration"], more = calibration(index.labels, margins)
            section += "\n\n" + more
        sections.append(section)
    markdown = "\n\n".join(sections)
    files = _write_report(config, workdir, split, results, markdown)
    for stage, result in results.items():
        _log_hparams(config, workdir, stage, split, result, files)
    return results, markdown


def _log_hparams(config, workdir, stage: str, split: str, result: dict, files=()) -> None:
    """The stage's config with its best validation and this split's AUCs into its TensorBoard
    log (HPARAMS tab): a sweep's runs side by side there; and, with `track.backends`, the same
    numbers and the report `files` to the stage's tracked run."""
    report = result["metrics"]
    scores = {
        "hparams/val_auc": best_validation_auc(workdir, stage),
        f"hparams/{split}_auc": report["all"]["frame"]["auc"],
        f"hparams/{split}_video_auc": report["all"]["video"]["auc"],
    }
    if "seen methods" in report:
        scores[f"hparams/{split}_auc_seen"] = report["seen methods"]["frame"]["auc"]
    logs = pathlib.Path(workdir) / stage / "logs"
    tracker = tracking.Tracker(config, logs, f"{pathlib.Path(workdir).resolve().name}/{stage}")
    logger = MetricLogger(logs, tracker)
    try:
        logger.hparams(config.to_dict(), scores, name=f"eval_{split}")
        tracker.files(files)
    finally:
        logger.close()


def _trained_methods(config) -> set[str]:
    # Cross-dataset (eval.trained_on, set by --eval_data): no method of the other dataset was
    # seen in training; weights from elsewhere (eval.weights): we do not know what was.
    if config.eval.get("trained_on") or config.eval.get("weights"):
        return set()
    return set(config.data.train_methods)


def _stage_report(
    config, workdir, stage: str, split: str, index, probs, best_step, description=None
):
    """(result, markdown section) of one stage's scores on a split."""
    description = description or experiment.describe_model(config, stage)
    picked = (
        f"best validation checkpoint, step {best_step}"
        if best_step is not None
        else "weights as given"
    )
    trained = _trained_methods(config)
    notes = {m: "seen in training" for m in trained}
    notes.update({m: "NOT seen in training" for m in config.data.methods if m not in trained})
    notes["all"] = "every method"
    report = metrics.report(
        index.labels,
        probs,
        index.methods,
        index.video_ids,
        config.eval.threshold,
        bootstrap=config.eval.bootstrap,
        seed=config.seed,
    )
    seen = np.isin(index.methods, ["real", *trained])
    if trained:
        report["seen methods"] = metrics.report(
            index.labels[seen],
            probs[seen],
            index.methods[seen],
            index.video_ids[seen],
            config.eval.threshold,
            bootstrap=config.eval.bootstrap,
            seed=config.seed,
        )["all"]
        notes["seen methods"] = "reals + " + ", ".join(sorted(trained))
    result = {
        "model": description,
        "checkpoint_step": best_step,
        "split": split,
        "dataset": splits.dataset_name(config.data),
        "train_methods": sorted(trained),
        "metrics": report,
    }
    section = f"### {stage}: {description} ({picked}), {split} split\n\n" + metrics.markdown_table(
        report, notes
    )
    result["video_auc_by_aggregation"], table = aggregation_table(index, probs)
    section += "\n\nVideo AUC by aggregation of frame scores (mean is the table's):\n\n" + table
    result["deepfakebench_definitions"], table = deepfakebench_table(index, probs)
    section += (
        "\n\nThe same scores under DeepfakeBench's definitions, for comparison with its "
        "tables:\nEER at the ROC point nearest FNR = FPR (not interpolated); ACC counts "
        "P(fake) > 0.5 (not >= the threshold);\nvideo score = mean of its frames.\n\n" + table
    )
    dfb = deepfakebench_number(pathlib.Path(workdir) / stage / "logs" / "metrics.jsonl")
    if dfb is not None and not config.eval.get("trained_on"):
        result["deepfakebench_compatible_top3_test_auc"] = dfb
        section += (
            f"\n\nDeepfakeBench-compatible number, for comparison with published tables "
            f"ONLY: mean of the top-3 test frame AUCs over the {dfb['evaluations']} "
            f"evaluations during training = {dfb['mean_top3']:.4f}. Those checkpoints were "
            "picked on the TEST set; the table above (checkpoint picked on validation) is "
            "the number to trust."
        )
    return result, section


def _calibration(config, workdir, stage: str, eval_step, frozen, mesh, split: str):
    """Temperature scaling and an EER-point threshold fitted on the model's own validation
    split: a function of (test labels, test logit margins) -> (result, markdown) that reports
    log loss, Brier score, ECE and ACC before and after, with a reliability plot; None when
    that validation split is not there."""
    own = config
    if config.eval.get("trained_on"):  # cross-dataset: calibrate on the training data's val
        own = config_lib.copy(config)
        with own.unlocked():
            own.data = ml_collections.ConfigDict(config.eval.trained_on)
    data, data_dir = own.data, config_lib.data_dir(own)
    try:
        val_source = splits.open_split(data, data_dir, "val")
        val_index = splits.split_index(data, data_dir, "val")
    except FileNotFoundError as err:  # no validation split here (e.g. cross-dataset elsewhere)
        if jax.process_index() == 0:
            print(f"[evaluate] {stage}: no calibration ({str(err).splitlines()[0][:160]})")
        return None
    val = scoring.predict_source(
        eval_step,  # the test split's, compiled once
        frozen.params,
        frozen.batch_stats,
        val_source,
        mesh,
        config.eval.batch_size,
    )[:, 1]
    temperature = metrics.fit_temperature(val_index.labels, val)
    threshold = metrics.eer_threshold(val_index.labels, metrics.sigmoid(val / temperature))

    def report(labels, margins):
        raw, calibrated = metrics.sigmoid(margins), metrics.sigmoid(margins / temperature)
        rows = {
            "raw": {
                **metrics.calibration_summary(labels, raw),
                "threshold": float(config.eval.threshold),
                "acc": metrics.accuracy(labels, raw, config.eval.threshold),
            },
            "calibrated": {
                **metrics.calibration_summary(labels, calibrated),
                "threshold": threshold,
                "acc": metrics.accuracy(labels, calibrated, threshold),
            },
        }
        result = {"temperature": temperature, "fitted_on": "val", "val_frames": int(val.size)}
        result.update(rows)
        name = f"{config.data.name}_{split}" if config.eval.get("trained_on") else split
        plot = pathlib.Path(workdir) / "eval" / f"reliability_{name}_{stage}.png"
        if jax.process_index() == 0:
            plot.parent.mkdir(parents=True, exist_ok=True)
            plot_reliability(labels, raw, calibrated, temperature, plot)
        keys = ("log_loss", "brier", "ece", "threshold", "acc")
        table = _markdown_table(
            ["P(fake)", "log loss", "Brier", "ECE", "threshold", "ACC"],
            [[k, *(r[key] for key in keys)] for k, r in rows.items()],
        )
        return result, (
            f"Calibration on {split} (temperature T = {temperature:.3f} and the EER-point "
            f"threshold fitted on {int(val.size)} validation frames; plot {plot.name}):\n\n" + table
        )

    return report


def plot_reliability(labels, raw, calibrated, temperature: float, path: pathlib.Path) -> None:
    """Reliability diagram: fraction of fakes against mean P(fake) per bin, before and after
    temperature scaling, with each bin's share of frames below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(4.5, 5.2), gridspec_kw={"height_ratios": [3, 1]}, sharex=True
    )
    top.plot([0, 1], [0, 1], color="grey", lw=0.8, label="perfect")
    for probs, style, name in ((raw, "o-", "raw"), (calibrated, "s--", f"T = {temperature:.2f}")):
        bins = [b for b in metrics.reliability(labels, probs) if b["n"]]
        top.plot(
            [b["confidence"] for b in bins],
            [b["fake_rate"] for b in bins],
            style,
            label=(f"{name} (ECE {metrics.ece(labels, probs):.3f})"),
        )
        bottom.bar(
            [(b["low"] + b["high"]) / 2 for b in bins],
            [b["n"] / len(labels) for b in bins],
            width=1 / 15,
            alpha=0.5,
        )
    top.set_ylabel("fraction fake")
    top.legend(fontsize=8)
    top.grid(alpha=0.3)
    bottom.set_xlabel("mean P(fake) in bin")
    bottom.set_ylabel("share")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _write_report(config, workdir, split: str, results: dict, markdown: str) -> list:
    out_dir = pathlib.Path(workdir) / "eval"
    if jax.process_index() == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        name = f"{config.data.name}_{split}" if config.eval.get("trained_on") else split
        (out_dir / f"{name}.json").write_text(json.dumps(results, indent=2))
        (out_dir / f"{name}.md").write_text(markdown + "\n")
        return [out_dir / f"{name}.json", out_dir / f"{name}.md"]
    return []


def dataset_label(config) -> str:
    """A dataset's name in reports (data.name), marked when it is cross-dataset."""
    name = config.data.name
    return f"{name} (cross-dataset)" if config.eval.get("trained_on") else name


def datasets_summary(runs, workdir, split: str) -> tuple[list[dict], str]:
    """One table over several datasets' `evaluate_run` results: a row per dataset and stage
    (frame AUC, video AUC, EER, ACC; DeepfakeBench's frame AUC and EER), then each stage's mean
    over the datasets (DeepfakeBench's "avg" row). Writes eval/summary_<split>.{md,json}."""
    rows = []
    for cfg, results in runs:
        for stage, result in results.items():
            ours = result["metrics"]["all"]
            theirs = result["deepfakebench_definitions"]["all"]
            rows.append(
                {
                    "dataset": dataset_label(cfg),
                    "stage": stage,
                    "frame_auc": ours["frame"]["auc"],
                    "video_auc": ours["video"]["auc"],
                    "eer": ours["frame"]["eer"],
                    "acc": ours["frame"]["acc"],
                    "dfb_eer": theirs["eer"],
                    "dfb_video_auc": theirs["video_auc"],
                }
            )
    keys = ("frame_auc", "video_auc", "eer", "acc", "dfb_eer", "dfb_video_auc")
    for stage in dict.fromkeys(r["stage"] for r in rows):
        mine = [r for r in rows if r["stage"] == stage]
        mean = {k: float(np.nanmean([r[k] for r in mine])) for k in keys}
        rows.append({"dataset": f"mean of {len(mine)}", "stage": stage, **mean})
    columns = ["dataset", "stage", "frame AUC", "video AUC", "EER", "ACC"]
    table = _markdown_table(
        [*columns, "DeepfakeBench EER", "DeepfakeBench video AUC"],
        [[r["dataset"], r["stage"], *(float(r[k]) for k in keys)] for r in rows],
    )
    markdown = f"### Summary over datasets, {split} split\n\n{table}"
    if jax.process_index() == 0:
        out = pathlib.Path(workdir) / "eval"
        out.mkdir(parents=True, exist_ok=True)
        (out / f"summary_{split}.json").write_text(json.dumps(rows, indent=2))
        (out / f"summary_{split}.md").write_text(markdown + "\n")
    return rows, markdown


def population_run(config: ml_collections.ConfigDict, workdir: str, split: str | None = None):
    """Every member of a student population on `split`, read and decoded once for all: each
    member's report in its own folder (members/<name>/eval/, as `evaluate_run` writes it), and
    one table in <workdir>/eval/population_<split>.{md,csv,json}: each member's settings, best
    validation AUC, test AUCs (all, seen methods, each unseen method), and its video AUC minus
    member 0's with a paired bootstrap interval over videos. Returns (rows, markdown)."""
    config_lib.validate(config)
    split = split or config.eval.split
    members = population.members(config)
    mesh = population.make_mesh(1, config.train.mesh_data, config.train.mesh_fsdp)
    source = splits.open_split(config.data, config_lib.data_dir(config), split)
    index = splits.split_index(config.data, config_lib.data_dir(config), split)
    frozen, steps = [], []
    for member in members:
        model, variables, best_step = experiment.load_best(
            member.config, population.member_workdir(workdir, member), "student", mesh
        )
        frozen.append(variables)
        steps.append(best_step)
    stacked = population.stack(frozen)
    shardings = population.state_shardings(stacked, mesh, config.train.fsdp_min_size)
    eval_step = population.jit_eval_step(model, mesh, shardings.params, shardings.batch_stats)
    probs = scoring.predict_source(
        eval_step,
        stacked.params,
        stacked.batch_stats,
        source,
        mesh,
        config.eval.batch_size,
        progress=f"[evaluate] population {split}",
    )
    trained = _trained_methods(config)
    per_video = [
        metrics.video_level(index.video_ids, index.labels, probs[:, k]) for k in range(len(members))
    ]
    video_labels = per_video[0][1]
    video_scores = np.stack([scores for _, _, scores in per_video])
    rows = []
    for k, member in enumerate(members):
        member_dir = population.member_workdir(workdir, member)
        result, section = _stage_report(
            member.config, member_dir, "student", split, index, probs[:, k], steps[k]
        )
        _write_report(member.config, member_dir, split, {"student": result}, section)
        _log_hparams(member.config, member_dir, "student", split, result)
        report = result["metrics"]
        samples = config.eval.bootstrap or 1000
        frame_diff = metrics.paired_difference(
            index.labels,
            probs[:, 0],
            probs[:, k],
            clusters=index.video_ids,
            samples=samples,
            seed=config.seed,
        )
        video_diff = metrics.paired_difference(
            video_labels, video_scores[0], video_scores[k], samples=samples, seed=config.seed
        )
        row = {
            "member": k,
            **member.settings,
            "best_step": steps[k],
            "val_auc": best_validation_auc(member_dir),
            "test_auc_all": report["all"]["frame"]["auc"],
        }
        if "seen methods" in report:
            row["test_auc_seen"] = report["seen methods"]["frame"]["auc"]
        for method in sorted(m for m in report if m not in ("all", "seen methods")):
            if method not in trained:
                row[f"test_auc_{method}"] = report[method]["frame"]["auc"]
        row["frame_auc_minus_member_0"] = frame_diff[0]
        row["frame_ci_low"], row["frame_ci_high"] = frame_diff[1:]
        row["video_auc"] = report["all"]["video"]["auc"]
        row["video_auc_minus_member_0"] = video_diff[0]
        row["video_ci_low"], row["video_ci_high"] = video_diff[1:]
        rows.append(row)
    markdown = _population_markdown(rows, split, len(video_labels))
    settings = _by_setting(config, members, rows, index, probs, video_labels, video_scores)
    if settings:
        markdown += "\n\n" + _settings_markdown(settings)
    out_dir = pathlib.Path(workdir) / "eval"
    if jax.process_index() == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        base = out_dir / f"population_{split}"
        if settings:
            fileio.atomic_write(
                out_dir / f"population_{split}_by_setting.json", json.dumps(settings, indent=2)
            )
        fileio.atomic_write(base.with_suffix(".json"), json.dumps(rows, indent=2))
        fileio.atomic_write(base.with_suffix(".md"), markdown + "\n")
        columns = list(dict.fromkeys(k for row in rows for k in row))
        with open(base.with_suffix(".csv"), "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
    return rows, markdown


def _by_setting(config, members, rows, index, probs, video_labels, video_scores) -> list[dict]:
    """With several seeds per setting: each setting's mean and standard deviation over its
    seeds, and its seed-averaged AUC minus the first setting's (frame level, and video level),
    with paired bootstrap intervals over videos (each draw scores every seed of both settings
    on the same videos). [] with one seed per setting."""
    groups: dict[tuple, list[int]] = {}
    for k, member in enumerate(members):
        groups.setdefault(member.overrides, []).append(k)
    if all(len(ks) == 1 for ks in groups.values()):
        return []
    first = next(iter(groups.values()))
    samples = config.eval.bootstrap or 1000
    out = []
    for overrides, ks in groups.items():
        frame = np.asarray([rows[k]["test_auc_all"] for k in ks])
        video = np.asarray([rows[k]["video_auc"] for k in ks])
        frame_diff = metrics.paired_difference(
            index.labels,
            probs[:, first].T,
            probs[:, ks].T,
            clusters=index.video_ids,
            samples=samples,
            seed=config.seed,
        )
        video_diff = metrics.paired_difference(
            video_labels, video_scores[first], video_scores[ks], samples=samples, seed=config.seed
        )
        out.append(
            {
                **dict(overrides),
                "seeds": len(ks),
                "test_auc_all_mean": float(frame.mean()),
                "test_auc_all_std": float(frame.std(ddof=1)) if len(ks) > 1 else 0.0,
                "frame_auc_minus_first": frame_diff[0],
                "frame_ci_low": frame_diff[1],
                "frame_ci_high": frame_diff[2],
                "video_auc_mean": float(video.mean()),
                "video_auc_std": float(video.std(ddof=1)) if len(ks) > 1 else 0.0,
                "video_auc_minus_first": video_diff[0],
                "video_ci_low": video_diff[1],
                "video_ci_high": video_diff[2],
            }
        )
    return out


def _settings_markdown(settings: list[dict]) -> str:
    fields = [k for k in settings[0] if k not in _SETTING_NUMBERS]
    heads = [
        "seeds",
        "test frame AUC",
        "frame AUC - first (95% CI)",
        "video AUC",
        "video AUC - first (95% CI)",
    ]
    lines = [
        "### By setting (mean +- std over seeds)",
        "",
        "| " + " | ".join([*fields, *heads]) + " |",
        "|" + "---|" * (len(fields) + len(heads)),
    ]
    for row in settings:
        cells = [str(row[f]) for f in fields] + [
            str(row["seeds"]),
            f"{row['test_auc_all_mean']:.4f} +- {row['test_auc_all_std']:.4f}",
            f"{row['frame_auc_minus_first']:+.4f} "
            f"[{row['frame_ci_low']:+.4f}, {row['frame_ci_high']:+.4f}]",
            f"{row['video_auc_mean']:.4f} +- {row['video_auc_std']:.4f}",
            f"{row['video_auc_minus_first']:+.4f} "
            f"[{row['video_ci_low']:+.4f}, {row['video_ci_high']:+.4f}]",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "AUC - first: this setting's AUC averaged over its seeds minus the first setting's, on "
        "the same test examples; the interval resamples videos and scores every seed of both "
        "settings on each draw.",
    ]
    return "\n".join(lines)


_SETTING_NUMBERS = {
    "seeds",
    "test_auc_all_mean",
    "test_auc_all_std",
    "frame_auc_minus_first",
    "frame_ci_low",
    "frame_ci_high",
    "video_auc_mean",
    "video_auc_std",
    "video_auc_minus_first",
    "video_ci_low",
    "video_ci_high",
}


def _population_markdown(rows: list[dict], split: str, videos: int) -> str:
    columns = list(dict.fromkeys(k for row in rows for k in row))

    def cell(value) -> str:
        if isinstance(value, float):
            return f"{value:+.4f}" if value < 0 else f"{value:.4f}"
        return str(value)

    lines = [
        f"### Population, {split} split ({len(rows)} members, {videos} videos)",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
    ]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    lines += [
        "",
        "frame/video_auc_minus_member_0: this member's frame- or video-level AUC minus member "
        "0's on the same test examples; *_ci_low/high: its 95% paired bootstrap interval "
        "(videos resampled, both members scored on each draw). Members share batches and "
        "augmentation draws, so the difference comes from their settings (and seeds, where "
        "they differ).",
    ]
    return "\n".join(lines)


def best_validation_auc(workdir, stage: str = "student") -> float:
    """The best validation AUC in a run's log (NaN when it logged none)."""
    path = pathlib.Path(workdir) / stage / "logs" / "metrics.jsonl"
    values = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                value = json.loads(line).get("val/auc")
            except ValueError:
                continue
            if value is not None:
                values.append(value)
    return max(values) if values else float("nan")


def robustness_run(config: ml_collections.ConfigDict, workdir: str, split: str | None = None):
    """Scores `split` with the best student (or teacher, if that is the only stage) under every
    perturbation of config.eval.perturbations at every severity; writes
    <workdir>/eval/robustness_<split>.{json,md,png} and returns (results, markdown)."""
    config_lib.validate(config)
    split = split or config.eval.split
    stage = "student" if "student" in config.stages else config.stages[0]
    mesh = experiment.make_mesh(config)
    source = splits.open_split(config.data, config_lib.data_dir(config), split)
    index = splits.split_index(config.data, config_lib.data_dir(config), split)
    model, frozen, best_step = experiment.load_best(config, workdir, stage, mesh)
    key = jax.random.key(config.seed)
    curves: dict[str, list[dict]] = {}
    total = sum(len(perturb.LEVELS[name]) for name in config.eval.perturbations)
    done, start = 0, time.time()
    for name in config.eval.perturbations:
        rows = []
        for severity, level in enumerate(perturb.LEVELS[name]):
            step_fn = scoring.jit_perturbed_eval_step(
                model, mesh, (frozen.params, frozen.batch_stats), name, severity
            )
            probs = scoring.predict_source(
                step_fn,
                frozen.params,
                frozen.batch_stats,
                source,
                mesh,
                config.eval.batch_size,
                key=jax.random.fold_in(key, severity),
            )
            report = metrics.report(index.labels, probs, index.methods, index.video_ids)
            rows.append(
                {
                    "severity": severity,
                    "level": level,
                    "frame_auc": report["all"]["frame"]["auc"],
                    "video_auc": report["all"]["video"]["auc"],
                    "frame_auc_by_method": {
                        m: r["frame"]["auc"] for m, r in report.items() if m != "all"
                    },
                }
            )
            done += 1
            eta = (time.time() - start) / done * (total - done)
            print(
                f"[robustness] {done}/{total} {name} severity {severity} ({level}): frame AUC "
                f"{rows[-1]['frame_auc']:.4f} | ETA {int(eta // 60)}m{int(eta % 60):02d}s",
                flush=True,
            )
        curves[name] = rows
    results = {
        "stage": stage,
        "model": experiment.describe_model(config, stage),
        "checkpoint_step": best_step,
        "split": split,
        "curves": curves,
    }
    lines = [
        f"### Robustness: {stage} {results['model']} (step {best_step}), {split} split, frame AUC "
        "(video AUC) over all methods, by severity (0 = clean)",
        "",
        "| perturbation | " + " | ".join(str(s) for s in range(6)) + " |",
        "|---|" + "---|" * 6,
    ]
    for name, rows in curves.items():
        cells = [f"{r['frame_auc']:.3f} ({r['video_auc']:.3f})<br>{r['level']}" for r in rows]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    markdown = "\n".join(lines)
    out_dir = pathlib.Path(workdir) / "eval"
    if jax.process_index() == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / f"robustness_{split}.json").write_text(json.dumps(results, indent=2))
        (out_dir / f"robustness_{split}.md").write_text(markdown + "\n")
        plot_robustness(curves, out_dir / f"robustness_{split}.png", results["model"])
        logs = pathlib.Path(workdir) / stage / "logs"
        tracker = tracking.Tracker(config, logs, f"{pathlib.Path(workdir).resolve().name}/{stage}")
        try:
            tracker.files(out_dir / f"robustness_{split}.{ext}" for ext in ("json", "md", "png"))
        finally:
            tracker.close()
    return results, markdown


def plot_robustness(curves: dict[str, list[dict]], path: pathlib.Path, title: str) -> None:
    """One panel per perturbation: frame and video AUC against its level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(curves)
    cols = min(3, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        # JPEG's level 0 means "not compressed": draw it at quality 100.
        levels = [100 if name == "jpeg" and r["level"] == 0 else r["level"] for r in curves[name]]
        ax.plot(levels, [r["frame_auc"] for r in curves[name]], "o-", label="frame AUC")
        ax.plot(levels, [r["video_auc"] for r in curves[name]], "s--", label="video AUC")
        ax.set_title(name)
        ax.set_ylim(0.4, 1.01)
        ax.axhline(0.5, color="grey", lw=0.5)
        ax.set_xlabel(
            {"jpeg": "quality (100 = not compressed)", "downscale": "factor"}.get(name, "level")
        )
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(f"robustness: {title}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def compare_runs(workdirs: list[str], split: str = "test", out: str = "") -> str:
    """Side-by-side table of several runs' evaluations (their eval/<split>.json and, where
    present, robustness curves); written to `out` (markdown) when given."""
    rows, robust = [], []
    for workdir in workdirs:
        path = pathlib.Path(workdir) / "eval" / f"{split}.json"
        if not path.exists():
            raise FileNotFoundError(
                f"{path} not found. Fix: run `mkln evaluate --workdir={workdir}` first."
            )
        for stage, result in _read_evaluation(path).items():
            m = result["metrics"]
            trained = set(result.get("train_methods", []))
            unseen = [k for k in m if k not in ("all", "seen methods", *trained)]
            if "train_methods" not in result:  # written before results recorded them
                unseen = []
            rows.append(
                [
                    workdir,
                    stage,
                    result.get("model", ""),
                    _cell(m["all"]["frame"]),
                    _cell(m.get("seen methods", m["all"])["frame"]),
                    ", ".join(f"{k} {_cell(m[k]['frame'])}" for k in unseen) or "-",
                    _cell(m["all"]["video"]),
                ]
            )
        rpath = pathlib.Path(workdir) / "eval" / f"robustness_{split}.json"
        if rpath.exists():
            curves = json.loads(rpath.read_text())["curves"]
            robust.append((workdir, {k: [r["frame_auc"] for r in v] for k, v in curves.items()}))
    lines = [
        f"### {split} split, frame AUC [95% interval]",
        "",
        "| run | stage | model | all | seen methods | unseen methods | video AUC (all) |",
        "|---|---|---|---|---|---|---|",
        *("| " + " | ".join(map(str, r)) + " |" for r in rows),
    ]
    if robust:
        names = sorted({n for _, c in robust for n in c})
        lines += [
            "",
            "### Robustness: frame AUC at severity 1..5 (mean)",
            "",
            "| run | " + " | ".join(names) + " |",
            "|---|" + "---|" * len(names),
        ]
        for workdir, curves in robust:
            cells = [f"{np.mean(curves[n][1:]):.3f}" if n in curves else "-" for n in names]
            lines.append(f"| {workdir} | " + " | ".join(cells) + " |")
    markdown = "\n".join(lines)
    if out:
        pathlib.Path(out).write_text(markdown + "\n")
    return markdown


def _read_evaluation(path: pathlib.Path) -> dict:
    """An eval/<split>.json written by `mkln evaluate`, checked for the fields compare reads."""
    try:
        results = json.loads(fileio.read_bytes_limited(path, 64 << 20, "evaluation file"))
        for result in results.values():
            result["metrics"]["all"]["frame"]["auc"]
            result["metrics"]["all"]["video"]["auc"]
    except fileio.UnsafeInputError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as err:
        raise fileio.UnsafeInputError(
            f"{path}: not a readable evaluation ({type(err).__name__}: {err}). Fix: rerun "
            "`mkln evaluate` for that run"
        ) from None
    return results


def _cell(m: dict) -> str:
    if "auc_ci" in m:
        return f"{m['auc']:.4f} [{m['auc_ci'][0]:.3f}, {m['auc_ci'][1]:.3f}]"
    return f"{m['auc']:.4f}"


def _markdown_table(columns, rows) -> str:
    """A markdown table; floats with four decimals."""
    cells = lambda row: " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row)
    return "\n".join(
        [f"| {' | '.join(columns)} |", "|" + "---|" * len(columns)]
        + [f"| {cells(row)} |" for row in rows]
    )


def aggregation_table(index, probs) -> tuple[dict, str]:
    """Video AUC of each aggregation rule (metrics.AGGREGATIONS) per group, and its table."""
    labels = np.asarray(index.labels)
    videos = np.asarray([str(v) for v in index.video_ids])
    groups = metrics.method_groups(labels, index.methods)
    out = {}
    for rule in metrics.AGGREGATIONS:
        out[rule] = {}
        for name, keep in groups.items():
            _, v_labels, v_scores = metrics.video_level(
                videos[keep], labels[keep], probs[keep], rule
            )
            out[rule][name] = metrics.auc(v_labels, v_scores)
    rows = [[name, *(out[r][name] for r in metrics.AGGREGATIONS)] for name in groups]
    return out, _markdown_table(["group", *metrics.AGGREGATIONS], rows)


def deepfakebench_table(index, probs) -> tuple[dict, str]:
    """DeepfakeBench's metrics ({group: summary}) overall and per method, and their table."""
    labels = np.asarray(index.labels)
    videos = np.asarray([str(v) for v in index.video_ids])
    out = {
        name: metrics.deepfakebench_summary(labels[keep], probs[keep], videos[keep])
        for name, keep in metrics.method_groups(labels, index.methods).items()
    }
    keys = ("auc", "eer", "ap", "acc", "video_auc")
    rows = [[name, *(m[k] for k in keys)] for name, m in out.items()]
    return out, _markdown_table(["group", "frame AUC", "EER", "AP", "ACC", "video AUC"], rows)


def deepfakebench_number(log_path: pathlib.Path) -> dict | None:
    """Mean of the top-3 logged test AUCs (eval.deepfakebench_report), or None."""
    if not log_path.exists():
        return None
    values = []
    for line in log_path.read_text().splitlines():
        value = json.loads(line).get("test_for_deepfakebench_report/auc")
        if value is not None:
            values.append(value)
    if not values:
        return None
    top = sorted(values, reverse=True)[:3]
    return {"mean_top3": float(np.mean(top)), "top3": top, "evaluations": len(values)}
