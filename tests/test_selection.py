"""The candidate a run recommends: chosen on the pseudo-labelled validation set only."""

from __future__ import annotations

import numpy as np
import pytest

from anomaly_utils.errors import ParameterError
from anomaly_utils.evaluation.selection import (
    choose_by_validation,
    choose_candidate,
    selection_score,
    validation_metrics,
)


def _val_pseudo(separation: float, seed: int = 0) -> dict[str, np.ndarray]:
    """Four clean and four anomalous 16x16 maps; ``separation`` lifts the anomalous region."""
    rng = np.random.default_rng(seed)
    labels = np.array([0] * 4 + [1] * 4)
    masks = np.zeros((8, 16, 16), bool)
    masks[4:, 4:8, 4:8] = True
    maps = rng.random((8, 16, 16)).astype(np.float32) + separation * masks
    return {"labels": labels, "scores": maps.max(axis=(1, 2)), "masks": masks, "maps": maps}


def test_validation_metrics_rank_a_separating_candidate_higher():
    good, chance = validation_metrics(_val_pseudo(2.0)), validation_metrics(_val_pseudo(0.0))
    assert good["image_auroc"] == 1.0 and good["pixel_auroc"] == 1.0
    assert chance["pixel_auroc"] < 0.7 and good["aupro"] > chance["aupro"]


def test_without_anomalous_pixels_only_the_image_auroc_counts():
    v = _val_pseudo(2.0)
    v["masks"][:] = False
    metrics = validation_metrics(v)
    assert metrics["pixel_auroc"] is None and metrics["aupro"] is None
    assert selection_score(metrics) == metrics["image_auroc"]


def test_choice_is_the_best_mean_and_says_why():
    validation = {"floor": {"image_auroc": 0.95, "pixel_auroc": 0.90},
                  "ae1": {"image_auroc": 0.60, "pixel_auroc": 0.70},
                  "ae2": {"image_auroc": 0.90, "pixel_auroc": 0.91}}
    choice = choose_candidate(validation)
    assert choice["model"] == "floor" and choice["ranking"] == ["floor", "ae2", "ae1"]
    assert choice["scores"]["ae2"] == pytest.approx(0.905)
    assert "floor" in choice["reason"] and "ae2" in choice["reason"]


def test_ties_keep_the_report_order_and_missing_scores_are_skipped():
    validation = {"floor": {"image_auroc": 0.8, "pixel_auroc": None},
                  "ae1": {"image_auroc": None, "pixel_auroc": None},
                  "ae2": {"image_auroc": 0.8, "pixel_auroc": None}}
    choice = choose_candidate(validation)
    assert choice["model"] == "floor" and choice["ranking"] == ["floor", "ae2"]
    with pytest.raises(ParameterError, match="validation"):
        choose_candidate({"ae1": {"image_auroc": None, "pixel_auroc": None}})


def test_choose_by_validation_scores_each_candidate_on_the_same_set():
    v = _val_pseudo(2.0)
    seen = []

    class Result:
        def __init__(self, scores, maps):
            self.scores, self.maps = scores, maps

    def sharp(images):
        seen.append(images)
        return Result(v["scores"], v["maps"])

    def blind(images):
        seen.append(images)
        return Result(np.zeros(8), np.zeros((8, 16, 16), np.float32))

    images = np.zeros((8, 16, 16, 1), np.float32)
    choice, validation = choose_by_validation({"blind": blind, "sharp": sharp}, images,
                                              v["labels"], v["masks"])
    assert choice["model"] == "sharp" and validation["blind"]["image_auroc"] == 0.5
    assert len(seen) == 2 and all(s is images for s in seen)
