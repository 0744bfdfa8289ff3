"""Rows of the results gallery: which test images to show and what each row holds.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from anomaly_utils.data.images import detect_color_mode
from anomaly_utils.data.loading import load_images
from anomaly_utils.errors import DataError
from anomaly_utils.evaluation import thresholds


def stored_test_images(data_dir: str | os.PathLike, relative: np.ndarray) -> list[Path]:
    """The run's test images under ``data_dir`` (``relative``: the score file's ``paths``).

    Raises:
        DataError: some of them are gone (the gallery reads the images again).
    """
    paths = [Path(data_dir) / str(p) for p in relative]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise DataError(f"{len(missing)} test image(s) of this run are gone from '{data_dir}', "
                        f"e.g. '{missing[0]}'",
                        fix="pass the data_dir the run was made with, or restore the images")
    return paths


def verdicts(labels: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """"TP"/"FP"/"FN"/"TN" per image (N,) for ``score >= threshold`` = anomalous."""
    predicted = scores >= threshold
    out = np.where(predicted, np.where(labels == 1, "TP", "FP"),
                   np.where(labels == 1, "FN", "TN"))
    return out.astype("<U2")


VERDICTS = ("TP", "FN", "TN", "FP")


def count_verdicts(verdict: np.ndarray) -> dict[str, int]:
    """How many images got each verdict, every one of :data:`VERDICTS` in that order (0 too).

    Example:
        >>> count_verdicts(np.array(["TP", "TN", "TP"]))
        {'TP': 2, 'FN': 0, 'TN': 1, 'FP': 0}
    """
    return {v: int(np.count_nonzero(verdict == v)) for v in VERDICTS}


def clearest_detections(types: np.ndarray, scores: np.ndarray, verdict: np.ndarray,
                        per_type: int = 1) -> list[int]:
    """Indices of the highest-scoring true positives of each defect type."""
    picks = []
    for defect in sorted(set(types.tolist()) - {"good"}):
        members = np.flatnonzero((types == defect) & (verdict == "TP"))
        picks += members[np.argsort(-scores[members], kind="stable")][:per_type].tolist()
    return picks


def errors(verdict: np.ndarray, scores: np.ndarray, kind: str) -> list[int]:
    """Indices of every false positive ("FP") or false negative ("FN"), worst first."""
    members = np.flatnonzero(verdict == kind)
    order = np.argsort(-scores[members] if kind == "FP" else scores[members], kind="stable")
    return members[order].tolist()


def rows_for(indices: list[int], test: dict, paths: list, threshold: float,
             pixel_threshold: float, min_area: int, label: str = "",
             color_mode: str = "auto") -> list[dict]:
    """Gallery rows (see :func:`anomaly_utils.visualization.plots.gallery_rows`) for test
    images ``indices``.

    ``test`` is a test split's stored scores. With their ``recons`` (N, S, S, C) uint8, as
    ``load_scores(..., with_recons=True)`` returns them for an autoencoder, the images are
    read again from ``paths`` at the reconstructions' resolution S and in their colour mode;
    without (the statistics floor reconstructs nothing) at the maps' resolution, in
    ``color_mode`` ("auto": as the run detected it), and the rows have no ``recon``. No model
    is loaded.
    """
    if not indices:
        return []
    if "recons" in test:
        recons = test["recons"][indices].astype(np.float32) / 255.0
        size, channels = recons.shape[1], recons.shape[3]
        color_mode = "grayscale" if channels == 1 else "rgb"
    else:
        recons = [None] * len(indices)
        size = test["maps"].shape[1]
        color_mode = detect_color_mode([paths[i] for i in indices], color_mode)
    images, _, _ = load_images([paths[i] for i in indices], size, color_mode)
    maps = test["maps"][indices]
    predicted = thresholds.segment(maps, pixel_threshold, min_area=min_area)
    verdict = verdicts(test["labels"][indices], test["scores"][indices], threshold)
    return [{
        "image": images[k], "recon": recons[k], "map": maps[k],
        "mask": test["masks"][i] if test["has_mask"][i] else None, "pred": predicted[k],
        "error_map": test["error_maps"][i] if "error_maps" in test else None,
        "score": float(test["scores"][i]), "threshold": float(threshold),
        "verdict": str(verdict[k]), "title": f"{label}{test['types'][i]} #{i}",
    } for k, i in enumerate(indices)]
