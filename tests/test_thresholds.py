"""Tests for anomaly_utils.evaluation.thresholds: every strategy against numpy or a brute-force reference,
the refusal of the F1-optimal strategy without labelled defects, segmentation and the
dispatcher."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.measure import label

from anomaly_utils.errors import ParameterError
from anomaly_utils.evaluation.metrics import f1_max
from anomaly_utils.evaluation.thresholds import (
    STRATEGIES,
    f1_optimal_threshold,
    max_threshold,
    mean_std_threshold,
    percentile_threshold,
    pixel_threshold,
    segment,
    select_threshold,
    target_fpr_threshold,
)

REFUSAL = (
    "F1-optimal threshold needs a labelled validation set with defects.*choose "
    "percentile/mean_std/max/target_fpr, or pass labelled validation data "
    r"\(e\.g\. anomaly_utils\.data\.pseudo_anomalies\)"
)


def tied_scores(seed: int, n: int = 50, levels: int = 10) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.round(rng.gamma(2.0, size=n) * levels) / levels


# --- strategies on validation normals -----------------------------------------------------------


@pytest.mark.parametrize("q", [0.0, 50.0, 95.0, 99.0, 100.0])
def test_percentile_threshold_matches_numpy(q):
    scores = tied_scores(0)
    assert percentile_threshold(scores, q=q) == pytest.approx(np.percentile(scores, q))
    assert percentile_threshold(scores) == pytest.approx(np.percentile(scores, 99))


def test_mean_std_threshold_hand_example():
    assert mean_std_threshold([1.0, 3.0], k=2.0) == pytest.approx(4.0)
    assert mean_std_threshold([1.0, 3.0], k=0) == pytest.approx(2.0)
    scores = tied_scores(1)
    assert mean_std_threshold(scores) == pytest.approx(scores.mean() + 3 * scores.std())


def test_max_threshold_flags_no_validation_normal():
    scores = tied_scores(2)
    threshold = max_threshold(scores)
    assert threshold > scores.max()
    assert threshold == np.nextafter(scores.max(), np.inf)
    assert not (scores >= threshold).any()
    assert max_threshold(np.array([3, 1, 2])) == np.nextafter(3.0, np.inf)


def brute_force_target_fpr(scores: np.ndarray, fpr: float) -> float:
    candidates = sorted(set(scores.tolist())) + [np.nextafter(scores.max(), np.inf)]
    return next(t for t in candidates if np.mean(scores >= t) <= fpr)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("fpr", [0.01, 0.05, 0.1, 0.29, 0.5])
def test_target_fpr_threshold_is_the_smallest_with_fpr_at_most_target(seed, fpr):
    scores = tied_scores(seed, n=100, levels=(2, 10)[seed % 2])
    threshold = target_fpr_threshold(scores, fpr=fpr)
    assert threshold == brute_force_target_fpr(scores, fpr)
    assert np.mean(scores >= threshold) <= fpr
    lower = scores[scores < threshold]
    if lower.size:
        assert np.mean(scores >= lower.max()) > fpr


def test_target_fpr_threshold_ties():
    assert target_fpr_threshold([0.1, 0.2, 0.3, 0.4], fpr=0.25) == 0.4
    # The two tied top scores are 2/4 > 0.25 of the normals: the threshold moves above them.
    assert target_fpr_threshold([0.1, 0.2, 0.4, 0.4], fpr=0.25) == np.nextafter(0.4, np.inf)
    assert target_fpr_threshold([0.1, 0.2, 0.4, 0.4], fpr=0.5) == 0.4
    assert target_fpr_threshold([5.0] * 10, fpr=0.5) == np.nextafter(5.0, np.inf)


def test_pixel_threshold_matches_numpy():
    maps = np.random.default_rng(3).random((3, 8, 8))
    assert pixel_threshold(maps) == pytest.approx(np.percentile(maps.ravel(), 99))
    assert pixel_threshold(maps, q=50) == pytest.approx(np.median(maps))


# --- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "function", [percentile_threshold, mean_std_threshold, max_threshold, target_fpr_threshold]
)
@pytest.mark.parametrize(
    ("scores", "fragment"),
    [
        ([], "val_normal_scores must be a non-empty 1-D array"),
        ([[0.1, 0.2]], "val_normal_scores must be a non-empty 1-D array"),
        ([0.1, np.nan, 0.3], "val_normal_scores contains 1 NaN"),
        ([0.1, -np.inf], "val_normal_scores contains 1 NaN or infinite"),
        (["a"], "val_normal_scores must be real numbers"),
        (None, "val_normal_scores is missing"),
    ],
)
def test_normal_score_strategies_reject_bad_scores(function, scores, fragment):
    with pytest.raises(ParameterError, match=fragment):
        function(scores)


@pytest.mark.parametrize(
    ("function", "setting", "fragment"),
    [
        (percentile_threshold, {"q": -1}, r"q must be a number in \[0, 100\]"),
        (percentile_threshold, {"q": 100.5}, r"q must be a number in \[0, 100\]"),
        (percentile_threshold, {"q": float("nan")}, r"q must be a number in \[0, 100\]"),
        (pixel_threshold, {"q": 101}, r"q must be a number in \[0, 100\]"),
        (mean_std_threshold, {"k": -0.5}, r"k must be a number in \[0, inf\]"),
        (target_fpr_threshold, {"fpr": 0}, r"fpr must be a number in \(0, 1\)"),
        (target_fpr_threshold, {"fpr": 1}, r"fpr must be a number in \(0, 1\)"),
        (target_fpr_threshold, {"fpr": -0.1}, r"fpr must be a number in \(0, 1\)"),
        (target_fpr_threshold, {"fpr": "0.1"}, r"fpr must be a number in \(0, 1\)"),
    ],
)
def test_settings_out_of_range_are_rejected(function, setting, fragment):
    with pytest.raises(ParameterError, match=fragment):
        function(np.array([[0.1, 0.2]]) if function is pixel_threshold else [0.1, 0.2], **setting)


def test_pixel_threshold_rejects_nan_maps():
    maps = np.zeros((2, 3, 3))
    maps[1, 1, 1] = np.nan
    with pytest.raises(ParameterError, match="val_normal_maps contains 1 NaN"):
        pixel_threshold(maps)


# --- F1-optimal ---------------------------------------------------------------------------------


def test_f1_optimal_threshold_equals_f1_max_on_labelled_validation():
    rng = np.random.default_rng(4)
    labels = rng.random(60) < 0.3
    labels[:2] = [False, True]
    scores = np.round(rng.random(60) + 0.5 * labels, 1)
    assert f1_optimal_threshold(labels, scores) == f1_max(labels, scores)[1]
    assert f1_optimal_threshold([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.35)


@pytest.mark.parametrize("labels", [None, [0, 0, 0], [False, False, False]])
def test_f1_optimal_threshold_refuses_without_labelled_defects(labels):
    with pytest.raises(ParameterError, match=REFUSAL):
        f1_optimal_threshold(labels, [0.1, 0.2, 0.3])


def test_f1_optimal_threshold_rejects_other_bad_validation_sets():
    with pytest.raises(ParameterError, match="needs a labelled validation set with normals too"):
        f1_optimal_threshold([1, 1], [0.1, 0.2])
    with pytest.raises(ParameterError, match="val_labels has shape"):
        f1_optimal_threshold([0, 1, 1], [0.1, 0.2])
    with pytest.raises(ParameterError, match="val_labels must contain only 0 and 1"):
        f1_optimal_threshold([0, 2], [0.1, 0.2])
    with pytest.raises(ParameterError, match="val_scores contains 1 NaN"):
        f1_optimal_threshold([0, 1], [0.1, np.nan])


# --- segmentation -------------------------------------------------------------------------------


def slow_segment(maps: np.ndarray, threshold: float, min_area: int) -> np.ndarray:
    out = np.zeros(maps.shape, bool)
    for i, image in enumerate(maps):
        labelled = label(image >= threshold, connectivity=2)
        for r in range(1, labelled.max() + 1):
            region = labelled == r
            if region.sum() >= min_area:
                out[i] |= region
    return out


@pytest.mark.parametrize("min_area", [0, 1, 2, 3, 5])
def test_segment_matches_per_image_reference(min_area):
    maps = np.random.default_rng(min_area).random((3, 16, 16))
    result = segment(maps, 0.8, min_area=min_area)
    assert result.dtype == bool and result.shape == maps.shape
    np.testing.assert_array_equal(result, slow_segment(maps, 0.8, min_area))
    if min_area <= 1:
        np.testing.assert_array_equal(result, maps >= 0.8)


def test_segment_connectivity_and_images_kept_apart():
    maps = np.zeros((2, 4, 4))
    maps[0, 0, 0] = maps[0, 1, 1] = 1.0  # diagonal neighbours: one 8-connected component
    maps[1, 0, 0] = 1.0  # same position in the next image: its own component of 1 pixel
    result = segment(maps, 1.0, min_area=2)
    assert result[0, 0, 0] and result[0, 1, 1]
    assert not result[1].any()


@pytest.mark.parametrize(
    ("arguments", "fragment"),
    [
        ((np.zeros((4, 4)), 0.5), "maps must be a non-empty 3-D array"),
        ((np.full((1, 2, 2), np.nan), 0.5), "maps contains 4 NaN"),
        ((np.zeros((1, 2, 2)), float("nan")), "pixel_threshold must be a number"),
        ((np.zeros((1, 2, 2)), 0.5, -1), "min_area must be a non-negative integer"),
        ((np.zeros((1, 2, 2)), 0.5, 2.5), "min_area must be a non-negative integer"),
    ],
)
def test_segment_rejects_bad_input(arguments, fragment):
    with pytest.raises(ParameterError, match=fragment):
        segment(*arguments)


# --- dispatcher ---------------------------------------------------------------------------------


def test_strategies_are_the_documented_names():
    assert STRATEGIES == ("percentile", "mean_std", "max", "target_fpr", "f1_optimal")


def test_select_threshold_dispatches_to_each_strategy():
    normals = tied_scores(5)
    labels = np.r_[np.zeros(normals.size), np.ones(10)]
    scores = np.r_[normals, normals.max() + np.arange(10) - 3]
    everything = {
        "val_normal_scores": normals,
        "val_labels": labels,
        "val_scores": scores,
        "q": 95.0,
        "k": 2.0,
        "fpr": 0.05,
    }
    expected = {
        "percentile": percentile_threshold(normals, q=95.0),
        "mean_std": mean_std_threshold(normals, k=2.0),
        "max": max_threshold(normals),
        "target_fpr": target_fpr_threshold(normals, fpr=0.05),
        "f1_optimal": f1_optimal_threshold(labels, scores),
    }
    assert set(expected) == set(STRATEGIES)
    for strategy, value in expected.items():
        assert select_threshold(strategy, **everything) == value
    assert select_threshold("percentile", val_normal_scores=normals) == percentile_threshold(
        normals, q=99.0
    )


def test_select_threshold_unknown_strategy_lists_the_valid_ones():
    with pytest.raises(ParameterError) as info:
        select_threshold("otsu", val_normal_scores=[0.1, 0.2])
    message = str(info.value)
    assert "unknown threshold strategy 'otsu'" in message
    for name in STRATEGIES:
        assert name in message


def test_select_threshold_rejects_misspelled_arguments():
    with pytest.raises(ParameterError, match="unknown argument.*quantile"):
        select_threshold("percentile", val_normal_scores=[0.1, 0.2], quantile=90)


def test_select_threshold_missing_data_is_explained():
    with pytest.raises(ParameterError, match=REFUSAL):
        select_threshold("f1_optimal", val_scores=[0.1, 0.2], val_normal_scores=[0.1, 0.2])
    with pytest.raises(ParameterError, match="val_normal_scores is missing"):
        select_threshold("max", val_scores=[0.1, 0.2])
