import numpy as np
import pytest
from sklearn import metrics as skm

from mkln_jax import metrics


@pytest.mark.parametrize("seed", range(5))
def test_metrics_equal_sklearn_on_random_scores_with_ties(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 300)
    scores = np.round(rng.uniform(size=300) * 0.6 + labels * 0.3, 2)  # rounding makes ties
    assert metrics.auc(labels, scores) == pytest.approx(skm.roc_auc_score(labels, scores))
    assert metrics.average_precision(labels, scores) == pytest.approx(
        skm.average_precision_score(labels, scores)
    )
    assert metrics.accuracy(labels, scores, 0.5) == pytest.approx(
        skm.accuracy_score(labels, scores >= 0.5)
    )
    fpr, tpr, _ = skm.roc_curve(labels, scores, drop_intermediate=False)
    ours_fpr, ours_tpr, _ = metrics.roc_curve(labels, scores)
    np.testing.assert_allclose(ours_fpr, fpr)
    np.testing.assert_allclose(ours_tpr, tpr)
    # EER: where FPR and FNR cross; sklearn's curve bounds it between neighbouring points.
    fnr = 1 - tpr
    i = np.flatnonzero(fnr - fpr <= 0)[0]
    low, high = sorted((fpr[i - 1], fpr[i]))
    assert low - 1e-12 <= metrics.eer(labels, scores) <= high + 1e-12


def test_eer_of_perfect_and_inverted_scores():
    labels = np.array([0, 0, 1, 1])
    assert metrics.eer(labels, np.array([0.1, 0.2, 0.8, 0.9])) == 0.0
    assert metrics.eer(labels, np.array([0.9, 0.8, 0.2, 0.1])) == 1.0


def test_single_class_gives_nan_auc():
    assert np.isnan(metrics.auc(np.ones(4), np.linspace(0, 1, 4)))


def test_video_ids_keep_methods_apart():
    # Two fakes share a file name under different methods: they must stay two videos.
    ids = ["self_blend/000_003", "self_blend/000_003", "upsampler/000_003", "real/000"]
    labels = [1, 1, 1, 0]
    scores = [0.9, 0.7, 0.2, 0.1]
    vids, v_labels, v_scores = metrics.video_level(ids, labels, scores)
    assert list(vids) == ["real/000", "self_blend/000_003", "upsampler/000_003"]
    np.testing.assert_allclose(v_scores, [0.1, 0.8, 0.2])
    np.testing.assert_array_equal(v_labels, [0, 1, 1])


def test_video_with_mixed_labels_is_an_error():
    with pytest.raises(ValueError, match="different labels"):
        metrics.video_level(["a", "a"], [0, 1], [0.1, 0.2])


def test_report_per_method_uses_that_methods_fakes_and_all_reals():
    methods = np.array(["real", "real", "m1", "m1", "m2", "m2"])
    labels = np.array([0, 0, 1, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.9, 0.8, 0.15, 0.05])
    ids = np.array(["real/a", "real/b", "m1/a", "m1/b", "m2/a", "m2/b"])
    out = metrics.report(labels, scores, methods, ids)
    assert out["m1"]["frame"]["auc"] == 1.0
    assert out["m2"]["frame"]["auc"] == pytest.approx(
        skm.roc_auc_score([0, 0, 1, 1], [0.1, 0.2, 0.15, 0.05])
    )
    assert out["all"]["frame"]["n"] == 6 and out["m1"]["frame"]["n"] == 4


def test_paired_difference_cancels_what_two_models_share():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 100)
    base = labels + rng.normal(0, 1.0, labels.size)  # hard and easy videos, shared
    better = base + labels * 0.5
    diff, lo, hi = metrics.paired_difference(labels, base, better, samples=300)
    assert diff == pytest.approx(metrics.auc(labels, better) - metrics.auc(labels, base))
    assert 0 < lo <= diff <= hi
    # Paired, the interval is narrower than the two unpaired intervals' overlap suggests.
    a_lo, a_hi = metrics.bootstrap_interval(labels, base, samples=300)
    assert hi - lo < (a_hi - a_lo)
    assert metrics.paired_difference(labels, base, base, samples=50) == (0.0, 0.0, 0.0)
    # Seeds of a setting: the metric averaged over them.
    two = np.stack([better, better + 0.01 * rng.normal(size=labels.size)])
    mean_diff, _, _ = metrics.paired_difference(labels, base, two, samples=50)
    expected = np.mean([metrics.auc(labels, s) for s in two]) - metrics.auc(labels, base)
    assert mean_diff == pytest.approx(expected)


def _deepfakebench_oracle(labels, scores, video_ids):
    """DeepfakeBench's definitions restated with scikit-learn (its own dependency)."""
    fpr, tpr, _ = skm.roc_curve(labels, scores, pos_label=1)
    eer = fpr[np.nanargmin(np.abs((1 - tpr) - fpr))]
    acc = np.mean((scores > 0.5).astype(int) == labels)
    videos = sorted(set(video_ids))
    v_scores = [np.mean(scores[video_ids == v]) for v in videos]
    v_labels = [int(labels[video_ids == v][0]) for v in videos]
    v_fpr, v_tpr, _ = skm.roc_curve(v_labels, v_scores)
    return {
        "auc": skm.auc(fpr, tpr),
        "eer": eer,
        "ap": skm.average_precision_score(labels, scores),
        "acc": acc,
        "video_auc": skm.auc(v_fpr, v_tpr),
    }


@pytest.mark.parametrize("seed", range(6))
def test_deepfakebench_definitions_match_its_formulas(seed):
    rng = np.random.default_rng(seed)
    n = 400
    video_ids = np.asarray([f"v{i // 8}" for i in range(n)])
    labels = (np.arange(n) // 8 % 3 != 0).astype(int)  # whole videos real or fake
    # coarse scores: many ties and straight ROC stretches, some exactly 0.5
    scores = np.round(np.clip(0.5 + 0.25 * (labels - 0.4) + rng.normal(0, 0.3, n), 0, 1), 1)
    ours = metrics.deepfakebench_summary(labels, scores, video_ids)
    theirs = _deepfakebench_oracle(labels, scores, video_ids)
    for key, value in theirs.items():
        assert ours[key] == pytest.approx(value, abs=1e-12), key
    # the two EER and ACC definitions differ on such data (why both are reported)
    assert (scores == 0.5).any()
    assert metrics.accuracy(labels, scores, 0.5) != ours["acc"]
    assert metrics.eer(labels, scores) != pytest.approx(ours["eer"], abs=1e-3)


def _rates(labels, scores, threshold):
    called = scores >= threshold
    return np.mean(called[labels == 0]), np.mean(~called[labels == 1])  # FPR, FNR


@pytest.mark.parametrize("seed", range(5))
def test_eer_threshold_sits_at_the_crossing_the_eer_reports(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 300)
    scores = np.round(rng.normal(labels * 1.2, 1.0), 2)
    t = metrics.eer_threshold(labels, scores)
    fpr, fnr = _rates(labels, scores, t)
    assert fnr <= fpr  # past the crossing at t ...
    above = np.min(scores[scores > t])
    fpr_above, fnr_above = _rates(labels, scores, above)
    assert fnr_above > fpr_above  # ... and not one score earlier
    assert fpr_above <= metrics.eer(labels, scores) <= fpr  # the EER lies between the two
    target = 0.05
    t = metrics.fpr_threshold(labels, scores, target)
    assert _rates(labels, scores, t)[0] <= target
    below = np.max(scores[scores < t])
    assert _rates(labels, scores, below)[0] > target


def test_temperature_scaling_undoes_over_confidence():
    rng = np.random.default_rng(0)
    true = rng.normal(0.0, 2.0, 4000)
    labels = (rng.random(true.size) < metrics.sigmoid(true)).astype(int)
    margins = 4.0 * true  # an over-confident model: right ranking, logits 4x too large
    raw = metrics.sigmoid(margins)
    t = metrics.fit_temperature(labels, margins)
    calibrated = metrics.sigmoid(margins / t)
    assert 3.4 < t < 4.6
    assert metrics.ece(labels, calibrated) < 0.5 * metrics.ece(labels, raw)
    assert metrics.log_loss(labels, calibrated) < metrics.log_loss(labels, raw)
    assert metrics.brier(labels, calibrated) < metrics.brier(labels, raw)
    assert metrics.auc(labels, calibrated) == pytest.approx(metrics.auc(labels, raw))
    bins = metrics.reliability(labels, calibrated)
    assert sum(b["n"] for b in bins) == labels.size


def test_video_aggregation_rules():
    assert metrics.aggregate([0.1, 0.9, 0.2], "mean") == pytest.approx(0.4)
    assert metrics.aggregate([0.1, 0.9, 0.2], "max") == pytest.approx(0.9)
    # confident (DFDC winner): > 11 frames and > a 2.5th of them above 0.8 -> their mean
    many = [0.95] * 12 + [0.1] * 8
    assert metrics.aggregate(many, "confident") == pytest.approx(0.95)
    assert metrics.aggregate([0.95] * 11 + [0.1] * 9, "confident") == pytest.approx(
        np.mean([0.95] * 11 + [0.1] * 9)
    )  # 11 confident frames are not enough
    reals = [0.05] * 19 + [0.6]
    assert metrics.aggregate(reals, "confident") == pytest.approx(0.05)  # > 90% below 0.2
    with pytest.raises(ValueError, match="aggregation"):
        metrics.aggregate([0.5], "median")


def test_a_video_stored_as_faces_scores_as_its_most_suspect_face():
    ids = ["v#face1", "v#face1", "v#face2", "v#face2", "w", "x#facet"]
    labels = [1, 1, 1, 1, 0, 0]
    scores = [0.2, 0.4, 0.9, 0.7, 0.1, 0.3]
    videos, v_labels, v_scores = metrics.video_level(ids, labels, scores)
    assert videos.tolist() == ["v", "w", "x#facet"]  # only "#face<digits>" marks a face
    np.testing.assert_allclose(v_scores, [0.8, 0.1, 0.3])
    assert v_labels.tolist() == [1, 0, 0]
    _, _, by_max = metrics.video_level(ids, labels, scores, rule="max")
    np.testing.assert_allclose(by_max, [0.9, 0.1, 0.3])
