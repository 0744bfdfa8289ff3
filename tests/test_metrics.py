"""Tests for anomaly_utils.evaluation.metrics: each metric against scikit-learn, a hand-computed example or a
slow, obviously-correct reference, plus the edge cases that must give None or a clear error."""

from __future__ import annotations

import json

import numpy as np
import pytest
from skimage.measure import label
from sklearn import metrics as sk
from sklearn.metrics import (
    average_precision_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from anomaly_utils.errors import ParameterError
from anomaly_utils.evaluation.metrics import (
    _rank_auroc,
    aupro,
    average_precision,
    bootstrap_auroc_ci,
    f1_max,
    image_auroc,
    per_defect_metrics,
    pixel_auroc,
    precision_recall_curve,
    roc_curve,
    summarize,
    threshold_metrics,
)


def random_image_data(seed: int, n: int = 40, levels: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Labels with both classes and quantised (tied) scores that are higher for anomalies."""
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < 0.4
    labels[:2] = [False, True]
    scores = np.round((rng.random(n) + 0.5 * labels) * levels) / levels
    return labels, scores


def random_pixel_data(
    seed: int, n: int = 4, size: int = 12, levels: int = 6
) -> tuple[np.ndarray, np.ndarray]:
    """Masks with several rectangular regions per image (some images defect-free) and quantised
    anomaly maps that are somewhat higher inside the defects."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), dtype=bool)
    for i in range(n):
        if rng.random() < 0.3:
            continue
        for _ in range(rng.integers(1, 4)):
            r, c = rng.integers(0, size - 1, size=2)
            h, w = rng.integers(1, 5, size=2)
            masks[i, r : r + h, c : c + w] = True
    if not masks.any():
        masks[0, 2:4, 2:5] = True
    maps = np.round((rng.random(masks.shape) + 0.4 * masks) * levels) / levels
    return masks, maps


def slow_aupro(masks: np.ndarray, maps: np.ndarray, fpr_limit: float) -> float:
    """Reference AUPRO: one binary prediction per distinct threshold, regions and FPR counted
    directly, curve clipped segment by segment at fpr_limit."""
    regions = []
    for i, mask in enumerate(masks):
        labelled = label(mask, connectivity=2)
        regions += [(i, labelled == r) for r in range(1, labelled.max() + 1)]
    normal = ~masks
    points = [(0.0, 0.0)]
    for t in sorted(np.unique(maps), reverse=True):
        predicted = maps >= t
        fpr = (predicted & normal).sum() / normal.sum()
        pro = np.mean([(predicted[i] & r).sum() / r.sum() for i, r in regions])
        points.append((fpr, pro))
    points.append((1.0, 1.0))
    area = 0.0
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:], strict=True):
        if x0 >= fpr_limit:
            break
        if x1 <= fpr_limit:
            area += (y0 + y1) / 2 * (x1 - x0)
        else:
            y_at_limit = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
            area += (y0 + y_at_limit) / 2 * (fpr_limit - x0)
    return area / fpr_limit


# --- image AUROC, average precision, F1 ---------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_image_auroc_and_average_precision_match_sklearn(seed):
    labels, scores = random_image_data(seed)
    assert image_auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert average_precision(labels, scores) == pytest.approx(
        average_precision_score(labels, scores), abs=1e-12
    )


@pytest.mark.parametrize("seed", range(5))
def test_roc_and_precision_recall_curves_match_sklearn(seed):
    labels, scores = random_image_data(seed)
    fpr, tpr, thresholds = roc_curve(labels, scores)
    expected = sk.roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, expected[0], atol=1e-12)
    np.testing.assert_allclose(tpr, expected[1], atol=1e-12)
    np.testing.assert_array_equal(thresholds, expected[2][1:])  # sklearn's first is +inf
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    sk_precision, sk_recall, sk_thresholds = sk.precision_recall_curve(labels, scores)
    kept = len(sk_thresholds)  # sklearn stops at the first threshold of full recall
    np.testing.assert_allclose(precision[:kept], sk_precision[:-1][::-1], atol=1e-12)
    np.testing.assert_allclose(recall[:kept], sk_recall[:-1][::-1], atol=1e-12)
    np.testing.assert_array_equal(thresholds[:kept], sk_thresholds[::-1])
    assert (recall[kept - 1:] == 1).all()
    assert roc_curve([1, 1], [0.1, 0.2]) is None
    assert precision_recall_curve([0, 0], [0.1, 0.2]) is None


def test_image_auroc_hand_example_and_constant_scores():
    assert image_auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert image_auroc([0, 1, 0, 1], [2.0, 2.0, 2.0, 2.0]) == pytest.approx(0.5)


@pytest.mark.parametrize("labels", [[0, 0, 0], [1, 1, 1]])
def test_single_class_gives_none(labels):
    scores = [0.1, 0.2, 0.3]
    assert image_auroc(labels, scores) is None
    assert average_precision(labels, scores) is None
    assert f1_max(labels, scores) == (None, None)
    assert bootstrap_auroc_ci(labels, scores, n_boot=10) is None


@pytest.mark.parametrize(
    ("labels", "scores", "fragment"),
    [
        ([0, 1, 1], [0.1, np.nan, 0.3], "scores contains 1 NaN"),
        ([0, 1, 1], [0.1, np.inf, 0.3], "scores contains 1 NaN or infinite"),
        ([0, 1, 2], [0.1, 0.2, 0.3], "labels must contain only 0 and 1"),
        ([0, 1, np.nan], [0.1, 0.2, 0.3], "labels must contain only 0 and 1"),
        ([0, 1], [0.1, 0.2, 0.3], "labels has 2 entries but scores has 3"),
        ([], [], "labels must be a non-empty 1-D array"),
        ([[0, 1]], [[0.1, 0.2]], "labels must be a non-empty 1-D array"),
        ([0, 1], ["a", "b"], "scores must be real numbers"),
    ],
)
def test_image_metrics_reject_bad_input(labels, scores, fragment):
    for metric in (image_auroc, average_precision, f1_max):
        with pytest.raises(ParameterError, match=fragment):
            metric(labels, scores)


def brute_force_f1_max(labels: np.ndarray, scores: np.ndarray) -> float:
    best = 0.0
    for t in np.unique(scores):
        best = max(best, f1_score(labels, scores >= t))
    return best


@pytest.mark.parametrize("seed", range(5))
def test_f1_max_matches_brute_force_and_its_threshold_reproduces_it(seed):
    labels, scores = random_image_data(seed)
    f1, threshold = f1_max(labels, scores)
    assert f1 == pytest.approx(brute_force_f1_max(labels, scores), abs=1e-12)
    assert threshold in scores
    assert threshold_metrics(labels, scores, threshold)["f1"] == pytest.approx(f1, abs=1e-12)


def test_f1_max_hand_example_and_constant_scores():
    assert f1_max([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx((0.8, 0.35))
    # One threshold only: everything flagged, precision 2/5, recall 1.
    assert f1_max([0, 0, 0, 1, 1], [1.0] * 5) == pytest.approx((2 * 0.4 / 1.4, 1.0))


def test_f1_max_prefers_the_highest_threshold_on_ties():
    # Thresholds 0.9 and 0.5 both give F1 = 2/3 (tp=1, fp=0, fn=1 vs tp=2, fp=2, fn=0).
    labels = np.array([1, 0, 0, 1])
    scores = np.array([0.9, 0.7, 0.6, 0.5])
    assert f1_max(labels, scores) == pytest.approx((2 / 3, 0.9))


# --- threshold metrics --------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
def test_threshold_metrics_match_sklearn(seed):
    labels, scores = random_image_data(seed)
    threshold = float(np.median(scores))
    result = threshold_metrics(labels, scores, threshold)
    predicted = scores >= threshold
    tn, fp, fn, tp = confusion_matrix(labels, predicted, labels=[0, 1]).ravel()
    assert (result["tp"], result["fp"], result["tn"], result["fn"]) == (tp, fp, tn, fn)
    assert result["precision"] == pytest.approx(precision_score(labels, predicted))
    assert result["recall"] == pytest.approx(recall_score(labels, predicted))
    assert result["f1"] == pytest.approx(f1_score(labels, predicted))
    assert result["accuracy"] == pytest.approx(np.mean(predicted == labels))
    assert result["fpr"] == pytest.approx(fp / (fp + tn))


def test_threshold_metrics_score_equal_to_threshold_is_anomalous():
    result = threshold_metrics([0, 1], [0.5, 0.7], 0.7)
    assert (result["tp"], result["fp"], result["tn"], result["fn"]) == (1, 0, 1, 0)


def test_threshold_metrics_zero_division_gives_none():
    nothing_flagged = threshold_metrics([0, 1], [0.1, 0.2], np.inf)
    assert nothing_flagged["precision"] is None
    assert nothing_flagged["recall"] == 0.0
    assert nothing_flagged["f1"] == 0.0
    all_normal = threshold_metrics([0, 0], [0.1, 0.2], 0.15)
    assert all_normal["recall"] is None
    assert all_normal["fpr"] == 0.5
    assert all_normal["f1"] == 0.0
    all_normal_quiet = threshold_metrics([0, 0], [0.1, 0.2], 1.0)
    assert all_normal_quiet["f1"] is None
    assert all_normal_quiet["accuracy"] == 1.0
    all_anomalous = threshold_metrics([1, 1], [0.1, 0.2], 0.15)
    assert all_anomalous["fpr"] is None


def test_threshold_metrics_rejects_nan_threshold():
    with pytest.raises(ParameterError, match="threshold must be a real number"):
        threshold_metrics([0, 1], [0.1, 0.2], float("nan"))


# --- pixel AUROC --------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_pixel_auroc_matches_sklearn_with_ties(seed):
    masks, maps = random_pixel_data(seed, levels=4)
    expected = roc_auc_score(masks.ravel(), maps.ravel())
    assert pixel_auroc(masks, maps) == pytest.approx(expected, abs=1e-12)
    assert pixel_auroc(masks.astype(np.uint8), maps.astype(np.float32)) == pytest.approx(
        roc_auc_score(masks.ravel(), maps.astype(np.float32).ravel()), abs=1e-12
    )


def test_pixel_auroc_none_cases():
    maps = np.random.default_rng(0).random((2, 4, 4))
    assert pixel_auroc(None, maps) is None
    assert pixel_auroc(np.zeros((2, 4, 4), bool), maps) is None
    assert pixel_auroc(np.ones((2, 4, 4), bool), maps) is None


def test_pixel_auroc_constant_map_is_half():
    masks, _ = random_pixel_data(1)
    assert pixel_auroc(masks, np.full(masks.shape, 0.3)) == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("masks", "maps", "fragment"),
    [
        (np.zeros((2, 4, 4)), np.zeros((2, 4, 5)), "masks has shape"),
        (np.zeros((4, 4)), np.zeros((4, 4)), "masks must be a non-empty 3-D array"),
        (np.full((1, 2, 2), 255), np.zeros((1, 2, 2)), "masks must contain only 0 and 1"),
        (np.zeros((1, 2, 2)), np.full((1, 2, 2), np.nan), "maps contains 4 NaN"),
    ],
)
def test_pixel_metrics_reject_bad_input(masks, maps, fragment):
    for metric in (pixel_auroc, aupro):
        with pytest.raises(ParameterError, match=fragment):
            metric(masks, maps)


# --- AUPRO --------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(24))
def test_aupro_matches_slow_reference(seed):
    levels = (3, 5, 10, 40)[seed % 4]
    fpr_limit = (0.3, 0.05, 1.0, 0.3, 0.2)[seed % 5]
    masks, maps = random_pixel_data(seed, levels=levels)
    expected = slow_aupro(masks, maps, fpr_limit)
    assert aupro(masks, maps, fpr_limit=fpr_limit) == pytest.approx(expected, abs=1e-6)


def test_aupro_known_values():
    masks, _ = random_pixel_data(3)
    assert aupro(masks, masks.astype(float)) == pytest.approx(1.0)
    assert aupro(masks, (~masks).astype(float)) == pytest.approx(0.0)
    # A constant map gives the diagonal from (0, 0) to (1, 1): area limit**2 / 2, over limit.
    assert aupro(masks, np.full(masks.shape, 7.0)) == pytest.approx(0.15)
    assert aupro(masks, np.full(masks.shape, 7.0), fpr_limit=1.0) == pytest.approx(0.5)


def test_aupro_uses_8_connectivity_within_each_image_only():
    masks = np.zeros((3, 5, 5), bool)
    masks[0, 0, 0:2] = True
    masks[0, 1, 2] = True  # touches (0, 1) diagonally: one region of 3 pixels
    maps = np.zeros(masks.shape)
    maps[0, 1, 2] = 1.0
    # PRO at the first step is 1/3 (4-connectivity would give two regions, mean overlap 1/2).
    first_step = 1 / 3
    expected = (first_step + (first_step + (1 - first_step) * 0.3)) / 2
    assert aupro(masks, maps) == pytest.approx(expected)

    stacked = np.zeros((2, 3, 3), bool)
    stacked[0, 0, 0] = True
    stacked[1, 0:2, 0:2] = True
    found_first_only = stacked.astype(float)
    found_first_only[1] = 0.0
    # Two regions (one per image), mean overlap 1/2; joined across images it would be 1/5.
    expected = (0.5 + (0.5 + 0.5 * 0.3)) / 2
    assert aupro(stacked, found_first_only) == pytest.approx(expected)


def test_aupro_none_cases_and_bad_limit():
    maps = np.random.default_rng(0).random((2, 4, 4))
    assert aupro(None, maps) is None
    assert aupro(np.zeros((2, 4, 4), bool), maps) is None
    assert aupro(np.ones((2, 4, 4), bool), maps) is None
    for bad in (0.0, -0.1, 1.5, float("nan"), "0.3"):
        with pytest.raises(ParameterError, match="fpr_limit must be a number in"):
            aupro(np.ones((2, 4, 4), bool), maps, fpr_limit=bad)


# --- bootstrap ----------------------------------------------------------------------------------


def test_rank_auroc_matches_sklearn_row_by_row():
    rng = np.random.default_rng(0)
    positives = np.round(rng.random((6, 7)) * 4) + 1
    negatives = np.round(rng.random((6, 9)) * 4)
    result = _rank_auroc(positives, negatives)
    y = np.r_[np.ones(7), np.zeros(9)]
    for row, value in enumerate(result):
        expected = roc_auc_score(y, np.r_[positives[row], negatives[row]])
        assert value == pytest.approx(expected, abs=1e-12)


def test_bootstrap_ci_is_deterministic_and_contains_the_estimate():
    labels, scores = random_image_data(7, n=60)
    first = bootstrap_auroc_ci(labels, scores, n_boot=500, seed=3)
    assert first == bootstrap_auroc_ci(labels, scores, n_boot=500, seed=3)
    assert first != bootstrap_auroc_ci(labels, scores, n_boot=500, seed=4)
    low, high = first
    assert 0.0 <= low < image_auroc(labels, scores) < high <= 1.0
    narrower = bootstrap_auroc_ci(labels, scores, n_boot=500, alpha=0.5, seed=3)
    assert low <= narrower[0] <= narrower[1] <= high


@pytest.mark.parametrize("alpha", [0.05, 0.2])
def test_bootstrap_ci_matches_a_slow_stratified_bootstrap(alpha):
    # Same generator calls as the implementation (all resamples fit in one chunk here).
    labels, scores = random_image_data(8, n=30)
    positives, negatives = scores[labels], scores[~labels]
    rng = np.random.default_rng(5)
    pos_draws = rng.integers(0, positives.size, size=(200, positives.size))
    neg_draws = rng.integers(0, negatives.size, size=(200, negatives.size))
    y = np.r_[np.ones(positives.size), np.zeros(negatives.size)]
    aurocs = [
        roc_auc_score(y, np.r_[positives[p], negatives[q]])
        for p, q in zip(pos_draws, neg_draws, strict=True)
    ]
    expected = np.quantile(aurocs, [alpha / 2, 1 - alpha / 2])
    result = bootstrap_auroc_ci(labels, scores, n_boot=200, alpha=alpha, seed=5)
    np.testing.assert_allclose(result, expected, atol=1e-12)


def test_bootstrap_ci_of_perfect_separation_is_one():
    assert bootstrap_auroc_ci([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9], n_boot=50) == (1.0, 1.0)


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        ({"n_boot": 0}, "n_boot must be a positive integer"),
        ({"n_boot": 2.5}, "n_boot must be a positive integer"),
        ({"alpha": 0.0}, "alpha must be a number in"),
        ({"alpha": 1.0}, "alpha must be a number in"),
    ],
)
def test_bootstrap_rejects_bad_settings(settings, fragment):
    with pytest.raises(ParameterError, match=fragment):
        bootstrap_auroc_ci([0, 1], [0.1, 0.2], **settings)


# --- per defect and summary ---------------------------------------------------------------------


def defect_dataset(seed: int = 0):
    masks, maps = random_pixel_data(seed, n=9, levels=5)
    types = np.array(["good", "good", "good", "cut", "cut", "hole", "hole", "hole", "cut"])
    masks[types == "good"] = False
    for i in np.flatnonzero(types != "good"):
        if not masks[i].any():
            masks[i, 1:3, 1:3] = True
    labels = (types != "good").astype(int)
    scores = maps.reshape(len(maps), -1).max(axis=1) + np.arange(9) * 0.01
    return labels, scores, types, masks, maps


def test_per_defect_metrics_compare_each_defect_with_the_normals():
    labels, scores, types, masks, maps = defect_dataset()
    result = per_defect_metrics(labels, scores, types, masks=masks, maps=maps)
    assert list(result) == ["cut", "hole"]
    for defect, n in (("cut", 3), ("hole", 3)):
        subset = (types == "good") | (types == defect)
        assert result[defect]["n"] == n
        assert result[defect]["image_auroc"] == pytest.approx(
            roc_auc_score(labels[subset], scores[subset])
        )
        assert result[defect]["pixel_auroc"] == pytest.approx(
            roc_auc_score(masks[subset].ravel(), maps[subset].ravel())
        )
        assert result[defect]["aupro"] == pytest.approx(
            slow_aupro(masks[subset], maps[subset], 0.3), abs=1e-6
        )


def test_per_defect_metrics_without_masks_or_normals():
    result = per_defect_metrics([1, 1, 1], [0.1, 0.2, 0.3], ["cut", "cut", "hole"])
    assert result == {
        "cut": {"image_auroc": None, "pixel_auroc": None, "aupro": None, "n": 2},
        "hole": {"image_auroc": None, "pixel_auroc": None, "aupro": None, "n": 1},
    }


@pytest.mark.parametrize(
    ("labels", "types", "extra", "fragment"),
    [
        ([0, 1], ["good", "good"], {}, r"labels\[1\] is 1 but defect_types\[1\] is 'good'"),
        ([0, 0], ["good", "cut"], {}, r"labels\[1\] is 0 but defect_types\[1\] is 'cut'"),
        ([0, 1], ["good"], {}, "defect_types must be 2 strings"),
        ([0, 1], [0, 1], {}, "defect_types must be 2 strings"),
        ([0, 1], ["good", "cut"], {"masks": np.zeros((2, 2, 2))}, "must be given together"),
    ],
)
def test_per_defect_metrics_rejects_inconsistent_input(labels, types, extra, fragment):
    with pytest.raises(ParameterError, match=fragment):
        per_defect_metrics(labels, [0.1, 0.2], types, **extra)


def test_summarize_has_exactly_the_documented_keys_and_consistent_values():
    labels, scores, types, masks, maps = defect_dataset(1)
    summary = summarize(labels, scores, masks, maps, types, n_boot=200, seed=1)
    assert list(summary) == [
        "image_auroc",
        "image_auroc_ci",
        "pixel_auroc",
        "aupro",
        "f1_max",
        "average_precision",
        "per_defect",
    ]
    assert summary["image_auroc"] == image_auroc(labels, scores)
    assert summary["image_auroc_ci"] == list(bootstrap_auroc_ci(labels, scores, 200, seed=1))
    assert summary["pixel_auroc"] == pixel_auroc(masks, maps)
    assert summary["aupro"] == aupro(masks, maps)
    assert summary["f1_max"] == f1_max(labels, scores)[0]
    assert summary["average_precision"] == average_precision(labels, scores)
    assert summary["per_defect"] == per_defect_metrics(labels, scores, types, masks, maps)
    assert json.loads(json.dumps(summary)) == summary


def test_summarize_without_pixels_or_second_class_writes_nulls():
    summary = summarize([0, 0, 0], [0.1, 0.2, 0.3], n_boot=10)
    assert summary == {
        "image_auroc": None,
        "image_auroc_ci": None,
        "pixel_auroc": None,
        "aupro": None,
        "f1_max": None,
        "average_precision": None,
        "per_defect": None,
    }
    assert json.dumps(summary).count("null") == 7
