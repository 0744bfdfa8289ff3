"""A run's report: the thresholds chosen on validation data and every test metric of each
model, as notebook 04 writes them to ``thresholds.json`` and ``metrics.json``.

The inputs are a model's stored scores (:func:`anomaly_utils.scoring.stored.load_scores`):
``val`` holds the validation normals (scores (V,), maps (V, E, E)), ``val_pseudo`` the same
images with pasted anomalies (labels, scores), ``test`` the test split (labels, scores,
maps, masks, ``has_mask``, types). Only validation data chooses a threshold; the test split
is measured once, at the end.

Example:
    >>> import numpy as np
    >>> settings = strategy_settings(percentile=99.0, k_std=3.0, target_fpr=0.05)
    >>> sorted(candidate_thresholds(np.linspace(0, 1, 101), settings))
    ['max', 'mean_std', 'percentile', 'target_fpr']
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from anomaly_utils.artifacts import write_json
from anomaly_utils.errors import ParameterError
from anomaly_utils.evaluation import metrics, thresholds

# The strategies that need only validation normals; "f1_optimal" also needs labelled ones.
NORMALS_ONLY = ("percentile", "mean_std", "max", "target_fpr")
HEADLINE = {  # the row labels of the report table, and where each number is in the report
    "image AUROC": ("image_auroc",),
    "AUROC 95% CI low": ("image_auroc_ci", 0),
    "AUROC 95% CI high": ("image_auroc_ci", 1),
    "pixel AUROC": ("pixel_auroc",),
    "AUPRO (FPR ≤ 0.3)": ("aupro",),
    "F1-max": ("f1_max",),
    "F1 at threshold": ("at_threshold", "f1"),
    "threshold": ("image_threshold",),
}


def strategy_settings(percentile: float, k_std: float, target_fpr: float) -> dict[str, dict]:
    """Each normals-only strategy with its setting, as :func:`thresholds.select_threshold`
    takes them (``percentile`` in %, ``target_fpr`` a fraction)."""
    return {"percentile": {"q": percentile}, "mean_std": {"k": k_std}, "max": {},
            "target_fpr": {"fpr": target_fpr}}


def candidate_thresholds(val_normal_scores: np.ndarray, settings: dict[str, dict],
                         labelled: dict[str, np.ndarray] | None = None) -> dict[str, float]:
    """The image threshold of every strategy, from validation data only.

    Args:
        val_normal_scores: (V,) scores of the validation normals.
        settings: :func:`strategy_settings`.
        labelled: optional pseudo-labelled validation scores (``labels`` (P,), ``scores``
            (P,)); adds ``"f1_optimal"``.
    """
    candidates = {strategy: thresholds.select_threshold(strategy, val_normal_scores=
                                                        val_normal_scores, **kwargs)
                  for strategy, kwargs in settings.items()}
    if labelled is not None:
        candidates["f1_optimal"] = thresholds.f1_optimal_threshold(labelled["labels"],
                                                                   labelled["scores"])
    return candidates


def final_metrics(test: dict[str, np.ndarray], *, n_boot: int, seed: int) -> dict[str, Any]:
    """Every threshold-free test metric (:func:`metrics.summarize`). Defect images without a
    mask count for image-level metrics only; the pixel metrics use the images with masks."""
    has = np.asarray(test["has_mask"], bool)
    every = bool(has.all())
    result = metrics.summarize(test["labels"], test["scores"],
                               test["masks"] if every else None, test["maps"] if every else None,
                               test["types"], n_boot=n_boot, seed=seed)
    if not every:
        result["pixel_auroc"] = metrics.pixel_auroc(test["masks"][has], test["maps"][has])
        result["aupro"] = metrics.aupro(test["masks"][has], test["maps"][has])
    return result


def whole_images(labels: np.ndarray, scores: np.ndarray, sources: list[str],
                 threshold: float) -> dict[str, Any]:
    """Image-level metrics of the source images of parts (``python -m anomaly_utils
    cut-parts``): each source's score is the highest of its parts' scores, and it is
    defective when one of its parts is.

    Args:
        labels: int (N,) labels of the parts, 1 = defective.
        scores: float (N,) image scores of the parts.
        sources: the source image of each part (N strings).
        threshold: the image threshold, in score units, that flags a part.

    Returns:
        ``{"images", "defective", "image_auroc", "at_threshold"}``: the number of source
        images and of defective ones, their AUROC and :func:`metrics.threshold_metrics` (a
        source is flagged when one of its parts is).
    """
    keys, group = np.unique(np.asarray(sources, dtype=str), return_inverse=True)
    if len(group) != len(scores) or len(group) != len(labels):
        raise ParameterError(f"{len(group)} sources for {len(scores)} scores and "
                             f"{len(labels)} labels: one of each per part is needed")
    best = np.full(len(keys), -np.inf)
    np.maximum.at(best, group, np.asarray(scores, float))
    defective = np.zeros(len(keys), np.int64)
    np.maximum.at(defective, group, np.asarray(labels, np.int64))
    return {"images": int(len(keys)), "defective": int(defective.sum()),
            "image_auroc": metrics.image_auroc(defective, best),
            "at_threshold": metrics.threshold_metrics(defective, best, threshold)}


def whole_images_text(reports: dict[str, dict]) -> str:
    """One line per candidate whose report has ``"whole_images"`` (:func:`whole_images`):
    how many source images, their AUROC and F1 at the candidate's threshold."""
    lines = []
    for name, report in reports.items():
        whole = report.get("whole_images")
        if whole:
            lines.append(f"{name}: {whole['images']} whole images ({whole['defective']} "
                         f"defective), image AUROC {metrics.shown(whole['image_auroc'], 3)}, "
                         f"F1 at threshold {metrics.shown(whole['at_threshold']['f1'], 3)}")
    return "\n".join(lines)


def model_report(scores: dict[str, dict], candidates: dict[str, float], strategy: str,
                 settings: dict[str, dict], *, pixel_percentile: float, min_defect_area: int,
                 n_boot: int, seed: int,
                 sources: list[str] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """One model's chosen thresholds and its report.

    Args:
        scores: ``{"val": ..., "test": ...}`` stored scores of the model.
        candidates: :func:`candidate_thresholds`; ``strategy`` picks the image threshold.
        pixel_percentile: percentile (%) of the validation normals' pixel scores.
        min_defect_area: smallest predicted region kept by the gallery, pixels at eval size.
        sources: where the test images are parts of larger ones, the source image of each
            (:func:`anomaly_utils.data.parts.part_sources`); adds ``"whole_images"``
            (:func:`whole_images`) to the report.

    Returns:
        ``(chosen, report)``: the ``thresholds.json`` entry and the ``metrics.json`` entry.

    Raises:
        ParameterError: ``strategy`` is "f1_optimal" without labelled validation data, or
            unknown.
    """
    if strategy not in candidates:
        if strategy == "f1_optimal":
            thresholds.f1_optimal_threshold(None, None)  # raises, naming the fix
        raise ParameterError(f"strategy must be one of {sorted(candidates)}, got {strategy!r}")
    test = scores["test"]
    image_threshold = candidates[strategy]
    pixel_threshold = thresholds.pixel_threshold(scores["val"]["maps"], q=pixel_percentile)
    chosen = {"image_threshold": image_threshold, "pixel_threshold": pixel_threshold,
              "strategy": strategy, "settings": settings.get(strategy, {}),
              "min_defect_area": min_defect_area}
    report = {**final_metrics(test, n_boot=n_boot, seed=seed),
              "image_threshold": image_threshold, "pixel_threshold": pixel_threshold,
              "strategy": strategy,
              "at_threshold": metrics.threshold_metrics(test["labels"], test["scores"],
                                                        image_threshold),
              "candidates": candidates}
    if sources is not None:
        report["whole_images"] = whole_images(test["labels"], test["scores"], sources,
                                              image_threshold)
    return chosen, report


def headline(reports: dict[str, dict]) -> dict[str, dict[str, float | None]]:
    """``{model: {row label: value}}``: the numbers of the report table (:data:`HEADLINE`)."""
    def pick(report, path):
        value = report
        for key in path:
            value = None if value is None else value[key]
        return value

    return {name: {label: pick(report, path) for label, path in HEADLINE.items()}
            for name, report in reports.items()}


def write_report(run_dir: str | os.PathLike, chosen: dict[str, dict], reports: dict[str, dict],
                 *, fingerprint: str, data_summary: dict, params: dict,
                 validation: dict[str, dict] | None = None,
                 choice: dict[str, Any] | None = None) -> None:
    """Write ``thresholds.json`` and ``metrics.json`` (with the dataset's fingerprint, counts
    and root, and the run's parameters) atomically into ``run_dir``.

    ``validation`` (``{candidate: selection.validation_metrics(...)}``) goes into each
    candidate's entry as ``"validation"``, and ``choice``
    (:func:`anomaly_utils.evaluation.selection.choose_candidate`) to ``"choice"``.
    """
    run_dir = Path(run_dir)
    reports = {name: {**report, **({"validation": validation[name]}
                                   if validation and name in validation else {})}
               for name, report in reports.items()}
    write_json(run_dir / "thresholds.json", chosen)
    write_json(run_dir / "metrics.json", {
        **reports,
        **({"choice": choice} if choice else {}),
        "dataset": {"fingerprint": fingerprint, "counts": data_summary.get("counts"),
                    "root": data_summary.get("root")},
        "params": params,
    })
