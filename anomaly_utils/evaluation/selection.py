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
# The kind prefix of a dataset's own labelled defects in a validation set; the data stage
# names them so (data.pseudo_anomalies.LABELLED), and evaluation imports no other stage.
LABELLED = "labelled/"


def _metrics_of(labels, scores, masks, maps, keep) -> tuple:
    """Image AUROC, pixel AUROC and AUPRO over the images ``keep`` selects; the pixel
    metrics are None when none of their pixels is anomalous."""
    masks, maps = masks[keep], maps[keep]
    has_pixels = bool(masks.any())
    return (metrics.image_auroc(labels[keep], scores[keep]),
            metrics.pixel_auroc(masks, maps) if has_pixels else None,
            metrics.aupro(masks, maps) if has_pixels else None)


def validation_metrics(val_pseudo: dict[str, np.ndarray]) -> dict[str, float | None]:
    """Image AUROC, pixel AUROC and AUPRO of one candidate on its validation scores.

    Args:
        val_pseudo: ``labels`` (P,), ``scores`` (P,), ``masks`` (P, E, E), ``maps``
            (P, E, E), and optionally ``types`` (P,) str and ``has_mask`` (P,) bool, as
            ``scores_val_pseudo.npz`` holds them.

    Returns:
        ``{"image_auroc", "pixel_auroc", "aupro"}`` of the clean normals against the pasted
        anomalies; ``labelled_defects``, the number of the dataset's own labelled defects
        (types ``labelled/<defect>``, from ``val/<defect>/``), and, where there are any,
        ``labelled_image_auroc`` and ``labelled_pixel_auroc`` of the clean normals against
        them (pixel metrics over images with a mask only; None where no pixel is anomalous).
    """
    labels = np.asarray(val_pseudo["labels"])
    scores = np.asarray(val_pseudo["scores"])
    masks = np.asarray(val_pseudo["masks"], bool)
    maps = np.asarray(val_pseudo["maps"])
    has_mask = np.asarray(val_pseudo.get("has_mask", np.ones(len(labels), bool)), bool)
    is_labelled = np.zeros(len(labels), bool)
    if "types" in val_pseudo:
        is_labelled = np.char.startswith(np.asarray(val_pseudo["types"]).astype(str), LABELLED)
    image, pixel, pro = _metrics_of(labels, scores, masks, maps, ~is_labelled)
    result = {"image_auroc": image, "pixel_auroc": pixel, "aupro": pro,
              "labelled_defects": int(is_labelled.sum())}
    if is_labelled.any():
        clean = labels == 0
        image, pixel, _ = _metrics_of(labels, scores, masks, maps,
                                      (is_labelled & has_mask) | clean)
        result["labelled_image_auroc"] = _metrics_of(labels, scores, masks, maps,
                                                     is_labelled | clean)[0]
        result["labelled_pixel_auroc"] = pixel
    return result


def _mean_of(validation: dict, prefix: str = "") -> float | None:
    values = [validation.get(prefix + name) for name in SELECTION_METRICS]
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def selection_score(validation: dict[str, float | None]) -> float | None:
    """The mean of the available :data:`SELECTION_METRICS` on the pasted anomalies, or None
    if none is. Where the dataset has labelled validation defects, the mean of that and the
    same mean on the labelled defects: a few real defects alone choose worse than with the
    pasted ones beside them (docs/experiments.md, "Labelled validation defects")."""
    pasted = _mean_of(validation)
    labelled = _mean_of(validation, "labelled_") if validation.get("labelled_defects") else None
    if labelled is None:
        return pasted
    return labelled if pasted is None else (pasted + labelled) / 2


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
    labelled = validation[best].get("labelled_defects") or 0
    on = (f"pasted anomalies and {labelled} labelled validation defects, half each" if labelled
          else "pasted validation anomalies")
    reason = (f"{best} has the highest validation mean of {' and '.join(SELECTION_METRICS)} "
              f"on {on} ({scores[best]:.3f}")
    reason += f"; next {runner_up} {scores[runner_up]:.3f})" if runner_up else ")"
    return {"model": best, "score": scores[best], "ranking": ranked, "scores": scores,
            "by": f"mean of validation {' and '.join(SELECTION_METRICS)} on {on}",
            "reason": reason}


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
