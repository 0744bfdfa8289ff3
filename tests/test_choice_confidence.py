"""How sure validation is of a choice: the paired bootstrap of evaluation.choice_confidence."""

from __future__ import annotations

import numpy as np
import pytest

from anomaly_utils.errors import ParameterError
from anomaly_utils.evaluation import metrics
from anomaly_utils.evaluation.choice_confidence import (
    PixelHistograms,
    bootstrap_choice,
    describe,
    image_auroc_lead,
    is_close_call,
    resample_weights,
    weighted_auroc,
    with_confidence,
)
from anomaly_utils.evaluation.selection import choose_candidate, selection_score, validation_metrics

N_CLEAN, N_PASTED, SIDE = 30, 60, 32
KINDS = np.array(["good"] * N_CLEAN + [f"kind{i % 3}" for i in range(N_PASTED)])
LABELS = (KINDS != "good").astype(int)


def _masks(rng) -> np.ndarray:
    masks = np.zeros((len(LABELS), SIDE, SIDE), bool)
    for i in np.flatnonzero(LABELS):
        r, c = rng.integers(0, SIDE - 8, 2)
        masks[i, r:r + rng.integers(2, 8), c:c + rng.integers(2, 8)] = True
    return masks


def _candidate(rng, masks, strength: float, kinds=KINDS, labels=LABELS) -> dict:
    """Validation arrays of a candidate whose maps lift the anomalous pixels by ``strength``
    standard deviations, stored as float16 like scores_val_pseudo.npz."""
    maps = (rng.normal(0, 1, masks.shape) + strength * masks).astype(np.float16)
    return {"labels": labels, "types": kinds, "masks": masks, "maps": maps,
            "has_mask": np.ones(len(labels), bool),
            "scores": maps.reshape(len(maps), -1).astype(np.float32).max(axis=1)}


@pytest.fixture
def arrays():
    rng = np.random.default_rng(0)
    masks = _masks(rng)
    return rng, masks


def test_weighted_auroc_is_the_auroc_of_the_repeated_images_ties_included():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 40)
    scores = rng.integers(0, 6, 40).astype(float)  # many ties
    counts = rng.integers(0, 4, 40)
    repeated = np.repeat(np.arange(40), counts)
    expected = metrics.image_auroc(labels[repeated], scores[repeated])
    got = weighted_auroc(labels, scores, np.vstack([counts, np.ones(40)]))
    assert got[0] == pytest.approx(expected, abs=1e-12)
    assert got[1] == pytest.approx(metrics.image_auroc(labels, scores), abs=1e-12)
    assert np.isnan(weighted_auroc(labels, scores, (labels == 1)[None] * 1.0))[0]


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_binned_pixel_auroc_is_within_2e_3_of_the_exact_one(arrays, dtype):
    rng, masks = arrays
    maps = (rng.normal(0, 1, masks.shape) + 0.8 * masks).astype(dtype)
    exact = metrics.pixel_auroc(masks, maps.astype(np.float32))
    binned = PixelHistograms(masks, maps).auroc(np.ones((1, len(masks))))[0]
    assert abs(binned - exact) < 2e-3
    # Weights are image counts: dropping images changes the value as dropping them does.
    keep = np.arange(len(masks)) % 2 == 0
    assert PixelHistograms(masks, maps).auroc(keep[None] * 1.0)[0] == pytest.approx(
        metrics.pixel_auroc(masks[keep], maps[keep].astype(np.float32)), abs=2e-3)


def test_resamples_keep_every_kind_s_count_and_follow_the_seed():
    weights = resample_weights(KINDS, 50, seed=3)
    assert weights.shape == (50, len(KINDS))
    for kind in np.unique(KINDS):
        members = np.equal(KINDS, kind)
        assert (weights[:, members].sum(axis=1) == members.sum()).all()
    assert np.array_equal(weights, resample_weights(KINDS, 50, seed=3))
    assert not np.array_equal(weights, resample_weights(KINDS, 50, seed=4))


def test_a_clearly_better_candidate_stays_first_and_a_close_call_is_reported_as_one(arrays):
    rng, masks = arrays
    strong, weak = _candidate(rng, masks, 2.0), _candidate(rng, masks, 0.3)
    clear = bootstrap_choice({"weak": weak, "strong": strong}, n_resamples=200)
    assert clear["first"] == "strong" and clear["runner_up"] == "weak"
    assert clear["first_share"]["strong"] > 0.95
    assert clear["lead"]["low"] > 0
    close = bootstrap_choice({"a": _candidate(rng, masks, 1.0), "b": _candidate(rng, masks, 1.0)},
                             n_resamples=200)
    assert 0.1 < close["first_share"]["a"] < 0.9
    assert close["lead"]["low"] < 0 < close["lead"]["high"]
    assert sum(close["first_share"].values()) == pytest.approx(1.0)


def test_identical_candidates_split_every_resample(arrays):
    rng, masks = arrays
    same = _candidate(rng, masks, 1.0)
    result = bootstrap_choice({"a": same, "b": dict(same)}, n_resamples=50)
    assert result["first_share"] == {"a": 0.5, "b": 0.5}
    assert result["lead"] == {"mean": 0.0, "low": 0.0, "high": 0.0}


def test_the_whole_set_score_is_the_selection_score_labelled_defects_included(arrays):
    rng, masks = arrays
    kinds = KINDS.astype("<U20")
    kinds[-10:] = "labelled/crack"
    candidate = _candidate(rng, masks, 1.0, kinds=kinds)
    candidate["has_mask"][-3:] = False
    result = bootstrap_choice({"c": candidate}, n_resamples=20)
    validation = validation_metrics(candidate)
    assert validation["labelled_defects"] == 10
    assert result["whole_set"]["c"] == pytest.approx(selection_score(validation), abs=2e-3)
    assert result["runner_up"] is None and result["lead"] is None
    assert result["first_share"] == {"c": 1.0}


def test_the_same_seed_gives_the_same_result_within_a_process(arrays):
    rng, masks = arrays
    candidates = {"a": _candidate(rng, masks, 1.0), "b": _candidate(rng, masks, 0.9)}
    assert bootstrap_choice(candidates, n_resamples=100, seed=7) == \
        bootstrap_choice(candidates, n_resamples=100, seed=7)


def test_with_confidence_follows_the_run_s_ranking_and_extends_its_reason(arrays):
    rng, masks = arrays
    candidates = {"floor": _candidate(rng, masks, 0.5), "ae2": _candidate(rng, masks, 1.5)}
    choice = choose_candidate({n: validation_metrics(a) for n, a in candidates.items()})
    result = with_confidence(choice, candidates, n_resamples=100)
    assert result["model"] == result["confidence"]["first"] == "ae2"
    assert result["reason"].startswith(choice["reason"])
    assert describe(result["confidence"]) in result["reason"]
    assert "ae2 first in" in result["reason"] and "(floor in" in result["reason"]
    # The ranking given wins over the module's own: the lead is then negative.
    forced = bootstrap_choice(candidates, ranking=["floor", "ae2"], n_resamples=100)
    assert forced["first"] == "floor" and forced["lead"]["mean"] < 0


def test_bad_input_is_refused_by_name(arrays):
    rng, masks = arrays
    a = _candidate(rng, masks, 1.0)
    other = {**a, "labels": np.roll(a["labels"], 1), "types": np.roll(a["types"], 1)}
    with pytest.raises(ParameterError, match="'a' and 'b' were not scored on the same"):
        bootstrap_choice({"a": a, "b": other})
    with pytest.raises(ParameterError, match="n_resamples"):
        bootstrap_choice({"a": a}, n_resamples=5)
    with pytest.raises(ParameterError, match="does not rank"):
        bootstrap_choice({"a": a, "b": dict(a)}, ranking=["a", "c"])


def test_the_blend_is_recommended_only_in_a_close_call_with_the_best(arrays):
    rng, masks = arrays
    best = _candidate(rng, masks, 1.2)
    close = {"ae2": best, "blend": _candidate(rng, masks, 1.15), "floor": _candidate(rng, masks, 0.2)}
    choice = choose_candidate({n: validation_metrics(a) for n, a in close.items()})
    plain = with_confidence(choice, close, n_resamples=200)
    hedged = with_confidence(choice, close, n_resamples=200, hedge="blend")
    first = plain["confidence"]["first"]
    assert plain["model"] == choice["model"] == first and plain["hedged"] is None
    assert first == "ae2" and is_close_call(hedged["confidence"], "blend")
    assert hedged["model"] == "blend" and hedged["score"] == choice["scores"]["blend"]
    assert hedged["hedged"] == {"over": "ae2", "lead": hedged["confidence"]["leads"]["blend"]}
    assert "recommended instead: blend" in hedged["reason"]
    # A blend that validation clearly ranks below the best is not recommended.
    clear = {"ae2": best, "blend": _candidate(rng, masks, 0.2)}
    choice = choose_candidate({n: validation_metrics(a) for n, a in clear.items()})
    result = with_confidence(choice, clear, n_resamples=200, hedge="blend")
    assert not is_close_call(result["confidence"], "blend")
    assert result["model"] == "ae2" and result["hedged"] is None


def test_every_candidate_s_lead_is_reported_against_the_first(arrays):
    rng, masks = arrays
    candidates = {"a": _candidate(rng, masks, 2.0), "b": _candidate(rng, masks, 1.0),
                  "c": _candidate(rng, masks, 0.1)}
    result = bootstrap_choice(candidates, n_resamples=100)
    assert set(result["leads"]) == {"b", "c"} and result["lead"] == result["leads"]["b"]
    assert result["leads"]["c"]["mean"] > result["leads"]["b"]["mean"] > 0
    assert not is_close_call(result, "c") and not is_close_call(result, "a")


# --------------------------------------------------------------------------- image-score lead


def test_image_auroc_lead_is_zero_for_the_same_scores_and_resolves_a_clear_win():
    rng = np.random.default_rng(3)
    noisy = {"labels": LABELS, "types": KINDS, "scores": rng.normal(0, 1, len(LABELS))}
    same = image_auroc_lead(noisy, noisy["scores"], n_resamples=200)
    assert same == {"mean": 0.0, "low": 0.0, "high": 0.0}
    clear = image_auroc_lead(noisy, LABELS + rng.normal(0, 0.1, len(LABELS)), n_resamples=200)
    assert 0 < clear["low"] <= clear["mean"] <= clear["high"] <= 1
    # Two scores of the same quality: the interval spans zero, and it is seeded.
    fair = {**noisy, "scores": LABELS + rng.normal(0, 1, len(LABELS))}
    close = LABELS + rng.normal(0, 1, len(LABELS))
    lead = image_auroc_lead(fair, close, n_resamples=200, seed=1)
    assert lead["low"] < 0 < lead["high"]
    assert lead == image_auroc_lead(fair, close, n_resamples=200, seed=1)


def test_image_auroc_lead_averages_pasted_and_labelled_defects_as_the_selection_does():
    """With labelled defects the AUROC judged is the mean of the pasted anomalies' and the
    labelled defects' (image_score.validation_image_auroc): on the whole set (every weight
    one, as a resample's mean approaches) the lead is the difference of those means."""
    rng = np.random.default_rng(4)
    kinds = KINDS.astype(object)
    kinds[-6:] = "labelled/dent"
    kinds = kinds.astype(str)
    own = LABELS + rng.normal(0, 0.8, len(LABELS))
    other = own.copy()
    other[-6:] += 5.0  # ranks the labelled defects above every normal, the pasted alike

    def judged(scores):
        metrics_ = validation_metrics({"labels": LABELS, "types": kinds, "scores": scores,
                                       "masks": np.zeros((len(LABELS), 2, 2), bool),
                                       "maps": np.zeros((len(LABELS), 2, 2))})
        return np.mean([metrics_["image_auroc"], metrics_["labelled_image_auroc"]])

    lead = image_auroc_lead({"labels": LABELS, "types": kinds, "scores": own}, other,
                            n_resamples=400)
    assert lead["mean"] == pytest.approx(judged(other) - judged(own), abs=0.02)
    assert lead["mean"] > 0.05


def test_image_auroc_lead_refuses_few_resamples_and_other_images():
    val = {"labels": LABELS, "scores": np.zeros(len(LABELS))}
    with pytest.raises(ParameterError, match="n_resamples"):
        image_auroc_lead(val, np.zeros(len(LABELS)), n_resamples=5)
    with pytest.raises(ParameterError, match="same validation images"):
        image_auroc_lead(val, np.zeros(len(LABELS) - 1))
