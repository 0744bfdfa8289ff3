"""Choosing the candidate a run recommends, on validation data only.

Every candidate (AE-1, AE-2, the training-free statistics floor) scores the same
pseudo-labelled validation set, built once per run
(:mod:`anomaly_utils.scoring.validation_set`): the validation normals once clean, and copies
of them with synthetic anomalies, an equal number of each kind (``scores_val_pseudo.npz``). :func:`validation_metrics` measures
a candidate there; :func:`choose_candidate` ranks the candidates by the mean of the
validation image AUROC and pixel AUROC (both threshold-free, so no candidate is favoured by
the threshold strategy) and records the ranking and the reason. The test split never takes
part.

Example:
    >>> choice = choose_candidate({"ae2": {"image_auroc": 0.9, "pixel_auroc": 0.8},
    ...                            "floor": {"image_auroc": 0.7, "pixel_auroc": 0.9}})
    >>> choice["model"], choice["ranking"]
    ('ae2', ['ae2', 'floor'])
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from anomaly_utils.errors import ParameterError
from anomaly_utils.evaluation import metrics

SELECTION_METRICS = ("image_auroc", "pixel_auroc")  # averaged into the selection score


def validation_metrics(val_pseudo: dict[str, np.ndarray]) -> dict[str, float | None]:
    """Image AUROC, pixel AUROC and AUPRO of one candidate on its pseudo-labelled
    validation scores (``labels`` (P,), ``scores`` (P,), ``masks`` (P, E, E), ``maps``
    (P, E, E)); the pixel metrics are None when no validation pixel is anomalous."""
    masks = np.asarray(val_pseudo["masks"], bool)
    has_pixels = bool(masks.any())
    return {"image_auroc": metrics.image_auroc(val_pseudo["labels"], val_pseudo["scores"]),
            "pixel_auroc": metrics.pixel_auroc(masks, val_pseudo["maps"]) if has_pixels else None,
            "aupro": metrics.aupro(masks, val_pseudo["maps"]) if has_pixels else None}


def selection_score(validation: dict[str, float | None]) -> float | None:
    """The mean of the available :data:`SELECTION_METRICS`, or None if none is."""
    values = [validation.get(name) for name in SELECTION_METRICS]
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def choose_candidate(validation: dict[str, dict[str, float | None]]) -> dict[str, Any]:
    """The candidate with the highest :func:`selection_score` on validation.

    Args:
        validation: ``{candidate: validation_metrics(...)}`` in the order the report lists
            them; ties go to the earlier candidate.

    Returns:
        ``{"model", "score", "ranking" (best first), "scores" ({candidate: score}), "by",
        "reason"}``.

    Raises:
        ParameterError: no candidate has a validation score.
    """
    scores = {name: selection_score(v) for name, v in validation.items()}
    ranked = [name for name in validation if scores[name] is not None]
    if not ranked:
        raise ParameterError("no candidate has a validation image or pixel AUROC",
                             fix="score the pseudo-labelled validation set (notebooks 01-03)")
    ranked.sort(key=lambda name: -scores[name])  # stable: ties keep the report's order
    best = ranked[0]
    runner_up = ranked[1] if len(ranked) > 1 else None
    reason = (f"{best} has the highest validation mean of {' and '.join(SELECTION_METRICS)} "
              f"({scores[best]:.3f}")
    reason += f"; next {runner_up} {scores[runner_up]:.3f})" if runner_up else ")"
    return {"model": best, "score": scores[best], "ranking": ranked, "scores": scores,
            "by": "mean of validation " + " and ".join(SELECTION_METRICS), "reason": reason}


def choose_by_validation(score: Mapping[str, Callable[[np.ndarray], Any]], images: np.ndarray,
                         labels: np.ndarray, masks: np.ndarray
                         ) -> tuple[dict[str, Any], dict[str, dict[str, float | None]]]:
    """Score one pseudo-labelled validation set with each candidate and choose among them.

    Args:
        score: ``{candidate: function}``, each mapping ``images`` to a result with ``scores``
            (P,) and ``maps`` (P, E, E) (as ``Scorer.score`` does).
        images: (P, H, W, C) validation images; ``labels`` (P,) 1 = anomalous; ``masks``
            (P, E, E) bool.

    Returns:
        ``(choose_candidate(validation), validation)`` with ``validation`` as
        :func:`validation_metrics` gives it per candidate.
    """
    validation = {}
    for name, function in score.items():
        result = function(images)
        validation[name] = validation_metrics({"labels": labels, "scores": result.scores,
                                               "masks": masks, "maps": result.maps})
    return choose_candidate(validation), validation
