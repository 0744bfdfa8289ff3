"""How sure the validation set is of a run's choice: a paired bootstrap over its images.

A run recommends the candidate with the highest selection score
(:func:`anomaly_utils.evaluation.selection.selection_score`) on one pseudo-labelled
validation set of a few hundred images. Another draw of validation normals and pasted
anomalies could rank two close candidates the other way, and a user deciding whether to
trust the choice needs to know when that is so. :func:`bootstrap_choice` resamples the
validation images with replacement, within each kind (the clean normals, every pasted kind,
every labelled defect type), so that every resample keeps the set's balance of kinds; every
candidate is judged on the same resample (paired), and the choice is made again. It reports
how often each candidate comes first and the spread of the chosen one's lead over the
runner-up.

:func:`image_auroc_lead` does the same for one candidate's two image scores (its own rule
and the scale-adaptive peak, :mod:`anomaly_utils.scoring.image_score`): the lead of one over
the other in the image AUROC the selection judges, with its interval.

Image AUROC on a resample is exact (weighted Mann-Whitney, ties counted half). Pixel AUROC
uses per-image histograms of the maps over shared quantile bins, so that a thousand
resamples cost one matrix product per candidate instead of a thousand sorts of millions of
pixels; pixels in one bin count as tied, which moves the pixel AUROC by less than 2e-3 at
the default bins (``tests/test_choice_confidence.py`` checks it against the exact metric).

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> labels = np.r_[np.zeros(20, int), np.ones(20, int)]
    >>> masks = np.zeros((40, 8, 8), bool); masks[20:, 2:5, 2:5] = True
    >>> good = {"labels": labels, "scores": labels + rng.normal(0, 0.3, 40),
    ...         "masks": masks, "maps": masks + rng.normal(0, 0.3, (40, 8, 8))}
    >>> noise = {**good, "scores": rng.normal(0, 1, 40), "maps": rng.normal(0, 1, (40, 8, 8))}
    >>> result = bootstrap_choice({"good": good, "noise": noise}, n_resamples=200)
    >>> result["first"], result["first_share"]["good"]
    ('good', 1.0)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from anomaly_utils.errors import ParameterError
from anomaly_utils.evaluation.selection import LABELLED, selection_score

DEFAULT_RESAMPLES = 1000
DEFAULT_BINS = 2048
INTERVAL = 0.90  # the central interval reported for the lead over the runner-up
_SAMPLE_FOR_EDGES = 1_000_000  # pixel values the shared quantile bin edges are taken from


def weighted_auroc(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC of ``scores`` for ``labels`` with each image counted ``weights`` times.

    Args:
        labels: (N,) 0/1; scores: (N,) float; weights: (R, N) non-negative counts, one row
            per resample.

    Returns:
        (R,) float64; NaN where a row weighs no positive or no negative image. Ties count
        half, as in :func:`anomaly_utils.evaluation.metrics.image_auroc`, which a row of ones
        reproduces.
    """
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, np.float64)
    order = np.argsort(scores, kind="mergesort")
    _, starts = np.unique(scores[order], return_index=True)
    w = np.asarray(weights, np.float64)[:, order]
    y = labels[order]
    positive = np.add.reduceat(w * y, starts, axis=1)  # (R, G) per distinct score, ascending
    negative = np.add.reduceat(w * ~y, starts, axis=1)
    return _area(positive, negative)


def _area(positive: np.ndarray, negative: np.ndarray) -> np.ndarray:
    """AUROC from (R, G) positive and negative weights per ascending score group."""
    below = np.cumsum(negative, axis=1) - negative
    pairs = positive.sum(axis=1) * negative.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, (positive * (below + 0.5 * negative)).sum(axis=1) / pairs,
                        np.nan)


class PixelHistograms:
    """Each image's anomalous and normal pixels counted per bin of its candidate's map.

    Args:
        masks: (P, E, E) bool, True = anomalous pixel.
        maps: (P, E, E) float, higher = more anomalous.
        bins: number of bins; their edges are quantiles of the map values, so each holds
            about as many pixels.
    """

    def __init__(self, masks: np.ndarray, maps: np.ndarray, bins: int = DEFAULT_BINS):
        maps = np.asarray(maps, np.float32).reshape(len(maps), -1)
        masks = np.asarray(masks, bool).reshape(len(maps), -1)
        values = maps.ravel()
        step = max(1, values.size // _SAMPLE_FOR_EDGES)
        edges = np.unique(np.quantile(values[::step], np.linspace(0, 1, bins + 1)[1:-1]))
        index = np.searchsorted(edges, maps, side="right")  # (P, E*E) in [0, len(edges)]
        size = len(edges) + 1
        pairs = list(zip(index, masks, strict=True))
        self.positive = np.stack([np.bincount(i[m], minlength=size) for i, m in pairs])
        self.negative = np.stack([np.bincount(i[~m], minlength=size) for i, m in pairs])

    def auroc(self, weights: np.ndarray) -> np.ndarray:
        """(R,) pixel AUROC of the images weighted by ``weights`` (R, P); NaN where a row
        weighs no anomalous or no normal pixel."""
        w = np.asarray(weights, np.float64)
        return _area(w @ self.positive, w @ self.negative)


def _kinds(val_pseudo: Mapping[str, np.ndarray]) -> np.ndarray:
    labels = np.asarray(val_pseudo["labels"])
    if "types" in val_pseudo:
        return np.asarray(val_pseudo["types"]).astype(str)
    return np.where(labels == 1, "anomalous", "good")


def resample_weights(kinds: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """(R, P) counts: each row draws, within every kind, as many images as the kind has,
    with replacement (seeded; the same seed, the same rows)."""
    rng = np.random.default_rng(seed)
    weights = np.zeros((n_resamples, len(kinds)))
    for kind in np.unique(kinds):
        members = np.flatnonzero(kinds == kind)
        draws = rng.integers(0, len(members), size=(n_resamples, len(members)))
        for r in range(n_resamples):
            weights[r, members] += np.bincount(draws[r], minlength=len(members))
    return weights


def _check(val_pseudo: Mapping[str, Mapping[str, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    if len(val_pseudo) < 1:
        raise ParameterError("no candidate to resample", fix="pass {candidate: val_pseudo}")
    first_name, first = next(iter(val_pseudo.items()))
    labels, kinds = np.asarray(first["labels"]), _kinds(first)
    for name, arrays in val_pseudo.items():
        if not (np.array_equal(np.asarray(arrays["labels"]), labels)
                and np.array_equal(_kinds(arrays), kinds)
                and np.asarray(arrays["masks"]).shape == np.asarray(first["masks"]).shape):
            raise ParameterError(
                f"candidates {first_name!r} and {name!r} were not scored on the same "
                f"validation images, so they cannot be compared image by image",
                fix="score every candidate on the run's shared validation set "
                    "(scores_val_pseudo.npz of one run, or of runs on the same data and seed)")
    return labels, kinds


def _check_resamples(n_resamples: Any) -> None:
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, int | np.integer) \
            or n_resamples < 10:
        raise ParameterError(f"n_resamples must be an int >= 10, got {n_resamples!r}",
                             fix=f"use {DEFAULT_RESAMPLES}")


def _image_sets(labels: np.ndarray, kinds: np.ndarray) -> dict[str, np.ndarray]:
    """The images each image AUROC of the selection is computed over, (P,) bool: the pasted
    anomalies with the clean normals (``image_auroc``) and, where the set has labelled
    defects, those with the clean normals (``labelled_image_auroc``)."""
    labelled = np.char.startswith(kinds, LABELLED)
    sets = {"image_auroc": ~labelled}
    if labelled.any():
        sets["labelled_image_auroc"] = labelled | (labels == 0)
    return sets


def _interval(lead: np.ndarray) -> dict[str, float]:
    """Mean and central :data:`INTERVAL` of a lead over the resamples, non-finite ones left
    out (NaN where none is finite)."""
    lead = lead[np.isfinite(lead)]
    if not len(lead):
        return dict.fromkeys(("mean", "low", "high"), float("nan"))
    tail = (1 - INTERVAL) / 2
    return {"mean": float(lead.mean()), "low": float(np.quantile(lead, tail)),
            "high": float(np.quantile(lead, 1 - tail))}


def bootstrap_choice(val_pseudo: Mapping[str, Mapping[str, np.ndarray]],
                     ranking: list[str] | None = None, n_resamples: int = DEFAULT_RESAMPLES,
                     seed: int = 0, bins: int = DEFAULT_BINS) -> dict[str, Any]:
    """How often each candidate would be chosen on resamples of the validation set.

    Args:
        val_pseudo: ``{candidate: arrays}`` in the report's order (ties go to the earlier
            candidate, as in :func:`~anomaly_utils.evaluation.selection.choose_candidate`),
            each as ``scores_val_pseudo.npz`` holds them: ``labels`` (P,), ``scores`` (P,),
            ``masks`` (P, E, E), ``maps`` (P, E, E), optionally ``types`` (P,) and
            ``has_mask`` (P,). Every candidate must have scored the same images.
        ranking: the run's ranking on the whole set, best first
            (:func:`~anomaly_utils.evaluation.selection.choose_candidate`'s, from the exact
            metrics); default: this module's own ranking of the whole set.
        n_resamples: bootstrap resamples, >= 10.
        seed: seeds the resampling.
        bins: histogram bins of the pixel AUROC.

    Returns:
        ``{"first": the candidate first on the whole set (``ranking[0]``), "runner_up",
        "first_share" ({candidate: fraction of resamples where it is first, ties split}),
        "whole_set" ({candidate: selection score on the whole set, with the binned pixel
        AUROC}), "lead" ({"mean", "low", "high"}: the first's selection score minus the
        runner-up's over the resamples,
        mean and central :data:`INTERVAL`; None with one candidate), "leads" (the same
        against every other candidate, ``{candidate: lead}``), "resamples", "interval",
        "seed"}``.

    Raises:
        ParameterError: fewer than 10 resamples, candidates scored on different images, or a
            ranking that names other candidates.
    """
    _check_resamples(n_resamples)
    labels, kinds = _check(val_pseudo)
    labelled = np.char.startswith(kinds, LABELLED)
    clean = labels == 0
    image_sets = _image_sets(labels, kinds)
    weights = np.vstack([np.ones(len(labels)),  # row 0: the whole set, as the run chose on it
                         resample_weights(kinds, n_resamples, seed)])
    names = list(val_pseudo)
    scores = np.empty((len(names), len(weights)))
    for c, name in enumerate(names):
        arrays = val_pseudo[name]
        has_mask = np.asarray(arrays.get("has_mask", np.ones(len(labels), bool)), bool)
        image_scores = np.asarray(arrays["scores"], np.float64)
        pixels = PixelHistograms(arrays["masks"], arrays["maps"], bins)
        metrics = {name: weighted_auroc(labels, image_scores, weights * members)
                   for name, members in image_sets.items()}
        metrics["pixel_auroc"] = pixels.auroc(weights * ~labelled)
        if labelled.any():
            metrics["labelled_pixel_auroc"] = pixels.auroc(
                weights * ((labelled & has_mask) | clean))
        for r in range(len(weights)):
            row = {k: None if np.isnan(v[r]) else float(v[r]) for k, v in metrics.items()}
            row["labelled_defects"] = int(labelled.sum())
            score = selection_score(row)
            scores[c, r] = np.nan if score is None else score
    scores = np.nan_to_num(scores, nan=-np.inf)
    if ranking is None:
        order = sorted(range(len(names)), key=lambda c: -scores[c, 0])  # stable: report order
    else:
        unknown = [name for name in ranking if name not in names]
        if unknown or len(ranking) < min(2, len(names)):
            raise ParameterError(f"ranking {ranking!r} does not rank the candidates {names}",
                                 fix="pass choose_candidate(...)['ranking']")
        order = [names.index(name) for name in ranking]
    first = order[0]
    best = scores[:, 1:].max(axis=0)
    winners = scores[:, 1:] == best  # ties split the resample between the tied
    share = (winners / winners.sum(axis=0)).sum(axis=1) / n_resamples
    result: dict[str, Any] = {
        "first": names[first], "runner_up": names[order[1]] if len(names) > 1 else None,
        "first_share": {name: float(share[c]) for c, name in enumerate(names)},
        "whole_set": {name: float(scores[c, 0]) for c, name in enumerate(names)},
        "lead": None, "resamples": int(n_resamples), "interval": INTERVAL, "seed": int(seed)}
    result["leads"] = {names[c]: _interval(scores[first, 1:] - scores[c, 1:])
                       for c in order[1:]}
    if len(names) > 1:
        result["lead"] = result["leads"][names[order[1]]]
    return result


def image_auroc_lead(val_pseudo: Mapping[str, np.ndarray], challenger: np.ndarray,
                     n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> dict[str, float]:
    """How far other image scores of one candidate lead its own in the image AUROC the
    selection judges, over bootstrap resamples of the validation images.

    The image AUROC is that of ``image_score.validation_image_auroc``: the pasted anomalies'
    against the clean normals, averaged with the labelled defects' where there are any. Both
    scores are judged on the same resample (paired), resampled within each kind as
    :func:`bootstrap_choice` does.

    Args:
        val_pseudo: ``labels`` (P,), the candidate's own ``scores`` (P,), optionally
            ``types`` (P,).
        challenger: (P,) the other scores of the same images.
        n_resamples: bootstrap resamples, >= 10.
        seed: seeds the resampling.

    Returns:
        ``{"mean", "low", "high"}``: the challenger's AUROC minus the own scores', mean and
        central :data:`INTERVAL` over the resamples (NaN where no resample has both an
        anomalous and a normal image).
    """
    _check_resamples(n_resamples)
    labels, kinds = np.asarray(val_pseudo["labels"]), _kinds(val_pseudo)
    own, other = (np.asarray(s, np.float64) for s in (val_pseudo["scores"], challenger))
    if not (own.shape == other.shape == labels.shape):
        raise ParameterError(f"image scores of shapes {own.shape} and {other.shape} for "
                             f"{labels.shape} validation images",
                             fix="score the same validation images with both rules")
    weights = resample_weights(kinds, n_resamples, seed)
    image_sets = _image_sets(labels, kinds).values()

    def judged(scores: np.ndarray) -> np.ndarray:  # (R,): the mean of the finite AUROCs
        values = np.vstack([weighted_auroc(labels, scores, weights * m) for m in image_sets])
        finite = np.isfinite(values)
        with np.errstate(invalid="ignore"):
            return np.where(finite, values, 0).sum(axis=0) / finite.sum(axis=0)

    return _interval(judged(other) - judged(own))


def describe(confidence: Mapping[str, Any]) -> str:
    """One sentence for the report: how often the first candidate stays first, its lead."""
    share = confidence["first_share"]
    text = (f"{confidence['first']} first in {share[confidence['first']]:.0%} of "
            f"{confidence['resamples']} bootstrap resamples of the validation images")
    runner_up, lead = confidence["runner_up"], confidence["lead"]
    if runner_up is not None:
        text += (f" ({runner_up} in {share[runner_up]:.0%}); its lead "
                 f"{lead['mean']:+.3f}, {confidence['interval']:.0%} interval "
                 f"[{lead['low']:+.3f}, {lead['high']:+.3f}]")
    return text


def is_close_call(confidence: Mapping[str, Any], other: str) -> bool:
    """True when the first candidate's lead over ``other`` is not resolved by validation:
    its :data:`INTERVAL` interval over the resamples reaches zero or below."""
    lead = (confidence.get("leads") or {}).get(other)
    return lead is not None and lead["low"] <= 0


def with_confidence(choice: Mapping[str, Any],
                    val_pseudo: Mapping[str, Mapping[str, np.ndarray]],
                    n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                    hedge: str | None = None) -> dict[str, Any]:
    """``choice`` (as :func:`~anomaly_utils.evaluation.selection.choose_candidate` returns
    it) with ``confidence``, the :func:`bootstrap_choice` of its ranking, and the reason
    extended by :func:`describe`.

    Args:
        hedge: a candidate that averages others (the blend of the floor and AE-2), or None.
            Where validation cannot tell it from the best candidate (:func:`is_close_call`),
            it is recommended instead: ``model`` and ``score`` become its own, and
            ``hedged`` records the candidate it replaced and that one's lead. An average of
            two detectors is the safer pick when the pasted anomalies cannot separate them,
            since the real defects may be unlike the pasted ones in either's favour.
    """
    confidence = bootstrap_choice(val_pseudo, ranking=list(choice["ranking"]),
                                  n_resamples=n_resamples, seed=seed)
    result = {**choice, "confidence": confidence, "hedged": None,
              "reason": f"{choice['reason']}; {describe(confidence)}"}
    first = confidence["first"]
    if hedge is not None and hedge != first and is_close_call(confidence, hedge):
        lead = confidence["leads"][hedge]
        result.update(
            model=hedge, score=choice["scores"][hedge],
            hedged={"over": first, "lead": lead},
            reason=f"{result['reason']}; recommended instead: {hedge} "
                   f"({choice['scores'][hedge]:.3f}), which validation cannot tell from "
                   f"{first} ({first}'s lead {lead['mean']:+.3f}, {INTERVAL:.0%} interval "
                   f"[{lead['low']:+.3f}, {lead['high']:+.3f}]) and which averages two "
                   f"detectors")
    return result
