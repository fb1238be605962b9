"""Detection metrics (AUC, EER, AP, ACC) and frame -> video aggregation, in numpy.

Our own implementations (a few lines each, no sklearn at run time); tests check them against
scikit-learn on random data, ties included.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np


def _check(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels).astype(np.int64).ravel()
    scores = np.asarray(scores, np.float64).ravel()
    if labels.shape != scores.shape:
        raise ValueError(f"labels {labels.shape} and scores {scores.shape} differ in shape")
    return labels, scores


def _counts(labels, scores):
    """(true positives, false positives, threshold) at each distinct score, highest first, and
    the numbers of positives and negatives."""
    labels, scores = _check(labels, scores)
    order = np.argsort(-scores, kind="mergesort")
    scores, labels = scores[order], labels[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]
    tps = np.cumsum(labels)[last_of_tie]
    fps = (last_of_tie + 1) - tps
    positives = labels.sum()
    return tps, fps, scores[last_of_tie], positives, labels.size - positives


def roc_curve(labels, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds), one point per distinct score, highest threshold first."""
    tps, fps, thresholds, positives, negatives = _counts(labels, scores)
    tpr = np.r_[0.0, tps / max(positives, 1)]
    fpr = np.r_[0.0, fps / max(negatives, 1)]
    return fpr, tpr, np.r_[np.inf, thresholds]


def auc(labels, scores) -> float:
    """Area under the ROC curve (ties count one half); nan when only one class is present."""
    labels, scores = _check(labels, scores)
    if labels.min(initial=1) == labels.max(initial=0):
        return float("nan")
    fpr, tpr, _ = roc_curve(labels, scores)
    return float(np.trapezoid(tpr, fpr))


def _eer_point(labels, scores) -> tuple[float, float]:
    """(EER, threshold): where the false-positive and false-negative rates cross, interpolated
    between the two ROC points around the crossing; the threshold is the score of the first
    point past it (calling score >= threshold fake gives FNR <= FPR there)."""
    fpr, tpr, thresholds = roc_curve(labels, scores)
    fnr = 1.0 - tpr
    diff = fnr - fpr  # decreasing from 1 to -1 along the curve
    i = int(np.flatnonzero(diff <= 0)[0])
    if i == 0 or diff[i] == 0:
        return float(fpr[i]), float(thresholds[i])
    t = diff[i - 1] / (diff[i - 1] - diff[i])
    return float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1])), float(thresholds[i])


def eer(labels, scores) -> float:
    """Equal error rate: where the false-positive and false-negative rates cross (interpolated)."""
    labels, scores = _check(labels, scores)
    if labels.min(initial=1) == labels.max(initial=0):
        return float("nan")
    return _eer_point(labels, scores)[0]


def eer_threshold(labels, scores) -> float:
    """The decision threshold at the EER point (`_eer_point`): P(fake) >= it is called fake."""
    labels, scores = _check(labels, scores)
    if labels.min(initial=1) == labels.max(initial=0):
        raise ValueError("the EER threshold needs both classes")
    return _eer_point(labels, scores)[1]


def fpr_threshold(labels, scores, target: float) -> float:
    """The lowest threshold whose false-positive rate (score >= threshold on reals) is at most
    `target`: the most fakes caught at that false-alarm budget."""
    labels, scores = _check(labels, scores)
    fpr, _, thresholds = roc_curve(labels, scores)
    ok = np.flatnonzero(fpr <= target)
    return float(thresholds[ok[-1]]) if ok[-1] > 0 else float(np.nextafter(scores.max(), np.inf))


# Calibration: scores are P(fake); `margins` are logit(fake) - logit(real), before the softmax.


def log_loss(labels, probs, eps: float = 1e-7) -> float:
    labels, probs = _check(labels, probs)
    p = np.clip(probs, eps, 1 - eps)
    return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log1p(-p)))


def brier(labels, probs) -> float:
    labels, probs = _check(labels, probs)
    return float(np.mean((probs - labels) ** 2))


def reliability(labels, probs, bins: int = 15) -> list[dict]:
    """Equal-width bins of P(fake): each bin's count, mean confidence and fraction of fakes."""
    labels, probs = _check(labels, probs)
    index = np.minimum((probs * bins).astype(np.int64), bins - 1)
    out = []
    for b in range(bins):
        inside = index == b
        n = int(inside.sum())
        out.append(
            {
                "low": b / bins,
                "high": (b + 1) / bins,
                "n": n,
                "confidence": float(probs[inside].mean()) if n else float("nan"),
                "fake_rate": float(labels[inside].mean()) if n else float("nan"),
            }
        )
    return out


def ece(labels, probs, bins: int = 15) -> float:
    """Expected calibration error of P(fake): the count-weighted mean over equal-width bins of
    |mean P(fake) - fraction of fakes| (Guo et al., 2017, on the positive class)."""
    labels, _ = _check(labels, probs)
    total = max(labels.size, 1)
    return float(
        sum(
            b["n"] / total * abs(b["confidence"] - b["fake_rate"])
            for b in reliability(labels, probs, bins)
            if b["n"]
        )
    )


def sigmoid(x) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return np.exp(-np.logaddexp(0.0, -x))


def fit_temperature(labels, margins) -> float:
    """Temperature scaling (Guo et al., 2017): the T > 0 minimising the log loss of
    sigmoid(margin / T), by golden-section search on log T in [1/100, 100] (the loss is
    unimodal in log T)."""
    labels, margins = _check(labels, margins)

    def loss(log_t: float) -> float:
        z = margins / np.exp(log_t)
        # -log sigmoid(z) for fakes, -log sigmoid(-z) for reals, stably
        return float(np.mean(np.logaddexp(0.0, np.where(labels == 1, -z, z))))

    lo, hi = np.log(0.01), np.log(100.0)
    ratio = (np.sqrt(5.0) - 1.0) / 2.0
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = loss(a), loss(b)
    for _ in range(80):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = loss(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = loss(b)
    return float(np.exp((lo + hi) / 2.0))


def calibration_summary(labels, probs) -> dict[str, float]:
    return {
        "log_loss": log_loss(labels, probs),
        "brier": brier(labels, probs),
        "ece": ece(labels, probs),
    }


def average_precision(labels, scores) -> float:
    """AP = sum_n (R_n - R_{n-1}) P_n over distinct thresholds (sklearn's definition)."""
    tps, fps, _, positives, _ = _counts(labels, scores)
    if positives == 0:
        return float("nan")
    precision = tps / (tps + fps)
    recall = tps / positives
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def accuracy(labels, scores, threshold: float = 0.5) -> float:
    labels, scores = _check(labels, scores)
    return float(np.mean((scores >= threshold).astype(np.int64) == labels))


def summary(labels, scores, threshold: float = 0.5) -> dict[str, float]:
    labels, scores = _check(labels, scores)
    return {
        "auc": auc(labels, scores),
        "eer": eer(labels, scores),
        "ap": average_precision(labels, scores),
        "acc": accuracy(labels, scores, threshold),
        "n": int(labels.size),
        "n_fake": int(labels.sum()),
    }


def _sklearn_roc_points(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) as scikit-learn's roc_curve returns them by default (drop_intermediate): the
    points where the curve turns, plus its ends and the origin."""
    tps, fps, _, positives, negatives = _counts(labels, scores)
    if tps.size > 2:
        keep = np.flatnonzero(np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True])
        tps, fps = tps[keep], fps[keep]
    return np.r_[0.0, fps / max(negatives, 1)], np.r_[0.0, tps / max(positives, 1)]


def deepfakebench_summary(labels, scores, video_ids) -> dict[str, float]:
    """Frame AUC, EER, AP and ACC and video AUC as DeepfakeBench computes them
    (training/metrics/utils.py, get_test_metrics): EER is the false-positive rate at the ROC
    point nearest FNR = FPR (no interpolation; scikit-learn's reduced point set), ACC counts
    score > 0.5 as fake, and a video's score is its frames' mean. Our own report interpolates the
    EER and calls score >= threshold fake."""
    labels, scores = _check(labels, scores)
    if labels.min(initial=1) == labels.max(initial=0):
        nan = float("nan")
        return {"auc": nan, "eer": nan, "ap": nan, "acc": nan, "video_auc": nan}
    fpr, tpr = _sklearn_roc_points(labels, scores)
    _, v_labels, v_scores = video_level(video_ids, labels, scores)
    return {
        "auc": auc(labels, scores),
        "eer": float(fpr[np.nanargmin(np.abs((1.0 - tpr) - fpr))]),
        "ap": average_precision(labels, scores),
        "acc": float(np.mean((scores > 0.5).astype(np.int64) == labels)),
        "video_auc": auc(v_labels, v_scores),
        "n": int(labels.size),
    }


def _cluster_draws(clusters, size: int, samples: int, seed: int):
    """`samples` bootstrap draws of example indices, whole clusters at a time."""
    if clusters is None:
        clusters = np.arange(size)
    clusters = np.asarray([video_of(c) for c in clusters])  # a video's faces go together
    names, inverse = np.unique(clusters, return_inverse=True)
    members = [np.flatnonzero(inverse == k) for k in range(names.size)]
    rng = np.random.default_rng(seed)
    for _ in range(samples):
        drawn = rng.integers(0, names.size, names.size)
        yield np.concatenate([members[k] for k in drawn])


def _percentiles(values: list[float], level: float) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    tail = (1.0 - level) / 2 * 100
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return float(lo), float(hi)


def bootstrap_interval(
    labels,
    scores,
    clusters=None,
    metric=auc,
    samples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of `metric`: whole clusters (videos) are resampled with
    replacement, since frames of one video are not independent; without clusters, single
    examples. Replicates where the metric is undefined (one class drawn) are dropped."""
    labels, scores = _check(labels, scores)
    values = []
    for idx in _cluster_draws(clusters, labels.size, samples, seed):
        value = metric(labels[idx], scores[idx])
        if np.isfinite(value):
            values.append(value)
    return _percentiles(values, level)


def paired_difference(
    labels,
    scores_a,
    scores_b,
    clusters=None,
    metric=auc,
    samples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """metric(b) - metric(a) on the same examples, with a paired bootstrap interval: each
    replicate draws one set of clusters (videos) and scores both on it, so what the two share
    (the hard and easy videos) cancels. Scores of shape [S, N] are S models (seeds) of one
    setting: the metric is averaged over them. Returns (difference, low, high)."""
    labels = np.asarray(labels)
    a = np.atleast_2d(np.asarray(scores_a, np.float64))
    b = np.atleast_2d(np.asarray(scores_b, np.float64))
    for scores in (*a, *b):
        _check(labels, scores)

    def mean_metric(group, idx):
        return float(np.mean([metric(labels[idx], s[idx]) for s in group]))

    values = []
    for idx in _cluster_draws(clusters, labels.size, samples, seed):
        value = mean_metric(b, idx) - mean_metric(a, idx)
        if np.isfinite(value):
            values.append(value)
    lo, hi = _percentiles(values, level)
    everything = np.arange(labels.size)
    return mean_metric(b, everything) - mean_metric(a, everything), lo, hi


AGGREGATIONS = ("mean", "max", "confident")


def aggregate(scores, rule: str = "mean") -> float:
    """A video's P(fake) from its frames' P(fake):
    "mean" (DeepfakeBench's video-level rule), "max" (one confident frame decides), or
    "confident": the DFDC winner's rule (Seferbekov, 2020): if more than 11 frames, and more
    than a 2.5th of them, exceed 0.8, the mean of those; else if more than 90% are below 0.2,
    the mean of those; else the mean of all."""
    scores = np.asarray(scores, np.float64).ravel()
    if scores.size == 0:
        return float("nan")
    if rule == "mean":
        return float(scores.mean())
    if rule == "max":
        return float(scores.max())
    if rule != "confident":
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {rule!r}")
    fakes = scores > 0.8
    if fakes.sum() > scores.size // 2.5 and fakes.sum() > 11:
        return float(scores[fakes].mean())
    reals = scores < 0.2
    if reals.sum() > 0.9 * scores.size:
        return float(scores[reals].mean())
    return float(scores.mean())


# Faces of one video prepared as their own tracks are stored as "<video id>#face<k>".
FACE_SUFFIX = "#face"


def video_of(video_id: str) -> str:
    """The video a stored id belongs to: "<video id>#face<k>" -> "<video id>"."""
    base, sep, k = str(video_id).rpartition(FACE_SUFFIX)
    return base if sep and k.isdigit() else str(video_id)


def video_level(
    video_ids, labels, scores, rule: str = "mean"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frame scores aggregated per video (`aggregate`, mean by default); where a video's faces
    were stored as tracks ("<id>#face<k>"), each face is aggregated and the video scores as its
    highest face, as `mkln predict` does. Returns (ids, labels, scores); a video's frames must
    agree on the label, since ids are keyed by method and name (two fakes never share an id)."""
    labels, scores = _check(labels, scores)
    grouped: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for i, vid in enumerate(video_ids):
        grouped[video_of(vid)][str(vid)].append(i)
    ids = sorted(grouped)
    out_labels, out_scores = [], []
    for vid in ids:
        idx = [i for track in grouped[vid].values() for i in track]
        video_labels = set(labels[idx].tolist())
        if len(video_labels) != 1:
            raise ValueError(f"video {vid!r} has frames with different labels {video_labels}")
        out_labels.append(video_labels.pop())
        out_scores.append(max(aggregate(scores[t], rule) for t in grouped[vid].values()))
    return np.asarray(ids), np.asarray(out_labels), np.asarray(out_scores)


def method_groups(labels, methods) -> dict[str, np.ndarray]:
    """A report's rows as masks: "all", then each method's fakes with all the reals."""
    labels = np.asarray(labels)
    methods = np.asarray([str(m) for m in methods])
    groups = {"all": np.ones(labels.size, bool)}
    for method in sorted(set(methods.tolist()) - {"real"}):
        groups[method] = (methods == method) | (labels == 0)
    return groups


def report(
    labels, scores, methods, video_ids, threshold: float = 0.5, bootstrap: int = 0, seed: int = 0
) -> dict[str, dict[str, dict[str, float]]]:
    """Frame- and video-level metrics overall and per forgery method (its fakes + all reals).

    Returns {"all" | method: {"frame": {...}, "video": {...}}}; with `bootstrap` > 0, each AUC
    also gets a 95% interval ("auc_ci") from that many resamples of videos.
    """
    labels, scores = _check(labels, scores)
    methods = np.asarray([str(m) for m in methods])
    video_ids = np.asarray([str(v) for v in video_ids])
    out = {}
    for name, keep in method_groups(labels, methods).items():
        _, v_labels, v_scores = video_level(video_ids[keep], labels[keep], scores[keep])
        frame = summary(labels[keep], scores[keep], threshold)
        video = summary(v_labels, v_scores, threshold)
        if bootstrap:
            frame["auc_ci"] = bootstrap_interval(
                labels[keep], scores[keep], video_ids[keep], samples=bootstrap, seed=seed
            )
            video["auc_ci"] = bootstrap_interval(v_labels, v_scores, samples=bootstrap, seed=seed)
        out[name] = {"frame": frame, "video": video}
    return out


def markdown_table(results: dict[str, dict[str, dict[str, float]]], notes: dict[str, str]) -> str:
    """One row per group: frame AUC / EER / AP / ACC and video AUC / ACC."""
    lines = [
        "| fakes | frame AUC | frame EER | frame AP | frame ACC | video AUC | video ACC | frames "
        "| videos |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, result in results.items():
        f, v = result["frame"], result["video"]
        label = f"{name} ({notes[name]})" if name in notes else name
        lines.append(
            f"| {label} | {_with_ci(f)} | {f['eer']:.4f} | {f['ap']:.4f} | {f['acc']:.4f} "
            f"| {_with_ci(v)} | {v['acc']:.4f} | {f['n']} | {v['n']} |"
        )
    if any("auc_ci" in r["frame"] for r in results.values()):
        lines.append(
            "\nAUC intervals: 95% percentile bootstrap, resampling whole videos "
            "(frames of one video are not independent)."
        )
    return "\n".join(lines)


def _with_ci(m: dict) -> str:
    if "auc_ci" not in m:
        return f"{m['auc']:.4f}"
    lo, hi = m["auc_ci"]
    return f"{m['auc']:.4f} [{lo:.3f}, {hi:.3f}]"
