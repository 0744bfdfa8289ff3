"""Threshold strategies that turn anomaly scores into decisions.

Every strategy is fitted on validation data only, never on the test set, and returns a float
threshold in score units; ``score >= threshold`` is anomalous everywhere in the lab.

1. Image strategies need only the validation normals' scores: ``percentile`` (the original study
   used the 99th), ``mean_std``, ``max`` and ``target_fpr``.
2. ``f1_optimal`` needs a labelled validation set with defects (for example pseudo-anomalies);
   without one it refuses instead of silently falling back to something else.
3. Pixel decisions: :func:`pixel_threshold` from the validation normals' anomaly maps, and
   :func:`segment` to binarise maps and drop connected components smaller than ``min_area``.

:func:`select_threshold` picks an image strategy by name (see :data:`STRATEGIES`).

Example:
    >>> import numpy as np
    >>> normals = np.array([0.1, 0.2, 0.3, 0.4])
    >>> select_threshold("max", val_normal_scores=normals) > 0.4
    True
    >>> percentile_threshold(normals, q=50.0)
    0.25
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import ndimage

from anomaly_utils.errors import ParameterError
from anomaly_utils.evaluation.metrics import f1_max

STRATEGIES = ("percentile", "mean_std", "max", "target_fpr", "f1_optimal")
"""Names accepted by :func:`select_threshold`."""

# Components are 8-connected within each (H, W) map and never joined across images.
_PER_IMAGE_8_CONNECTED = np.zeros((3, 3, 3), dtype=bool)
_PER_IMAGE_8_CONNECTED[1] = True


def _scores(values: Any, name: str, ndim: int | None = 1) -> np.ndarray:
    """Return ``values`` as a float array after checking it exists, has ``ndim`` and is finite."""
    if values is None:
        raise ParameterError(f"{name} is missing", fix=f"pass {name}")
    arr = np.asarray(values)
    if arr.size == 0 or (ndim is not None and arr.ndim != ndim):
        raise ParameterError(f"{name} must be a non-empty {ndim}-D array, got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ParameterError(f"{name} must be real numbers, got dtype {arr.dtype}")
    bad = ~np.isfinite(arr)
    if bad.any():
        raise ParameterError(
            f"{name} contains {int(bad.sum())} NaN or infinite values",
            fix="check the scoring step that produced them",
        )
    return arr


def _number(value: Any, name: str, low: float, high: float, *, open_interval: bool) -> float:
    """Check that ``value`` is a real number in [low, high] (or (low, high) when open)."""
    ok = isinstance(value, (int, float, np.number)) and not isinstance(value, bool)
    if ok and not np.isnan(value):
        inside = low < value < high if open_interval else low <= value <= high
        if inside:
            return float(value)
    brackets = f"({low:g}, {high:g})" if open_interval else f"[{low:g}, {high:g}]"
    raise ParameterError(f"{name} must be a number in {brackets}, got {value!r}")


def percentile_threshold(val_normal_scores: np.ndarray, q: float = 99.0) -> float:
    """The q-th percentile of the validation normals' scores.

    Needs: scores of defect-free validation images only. Linear interpolation between scores
    (numpy's default), so roughly (100 - q) % of validation normals score at or above it.

    Args:
        val_normal_scores: (N,) finite real scores of validation normals.
        q: percentile in [0, 100]; 99 as in the original study.

    Example:
        >>> percentile_threshold([1.0, 2.0, 3.0], q=50)
        2.0
    """
    scores = _scores(val_normal_scores, "val_normal_scores")
    q = _number(q, "q", 0, 100, open_interval=False)
    return float(np.percentile(scores, q))


def mean_std_threshold(val_normal_scores: np.ndarray, k: float = 3.0) -> float:
    """Mean plus ``k`` standard deviations (population std, ddof=0) of the validation normals.

    Needs: scores of defect-free validation images only.

    Args:
        val_normal_scores: (N,) finite real scores of validation normals.
        k: number of standard deviations, >= 0.

    Example:
        >>> mean_std_threshold([1.0, 3.0], k=2)
        4.0
    """
    scores = _scores(val_normal_scores, "val_normal_scores")
    k = _number(k, "k", 0, np.inf, open_interval=False)
    return float(np.mean(scores) + k * np.std(scores))


def max_threshold(val_normal_scores: np.ndarray) -> float:
    """Just above the highest validation normal score.

    Needs: scores of defect-free validation images only. Returns the next float above the
    maximum, so that under the ``score >= threshold`` rule no validation normal is flagged.

    Args:
        val_normal_scores: (N,) finite real scores of validation normals.

    Example:
        >>> 0.5 < max_threshold([0.1, 0.5]) < 0.5000001
        True
    """
    scores = _scores(val_normal_scores, "val_normal_scores")
    return float(np.nextafter(np.max(scores).astype(np.float64), np.inf))


def target_fpr_threshold(val_normal_scores: np.ndarray, fpr: float = 0.01) -> float:
    """Smallest threshold whose false-positive rate on the validation normals is <= ``fpr``.

    Needs: scores of defect-free validation images only. Candidates are the distinct scores and
    the next float above the maximum; the FPR of a candidate t is the fraction of validation
    normals with ``score >= t``. Ties: a threshold flags every score equal to it, so when a group
    of tied scores would push the FPR over ``fpr`` the threshold moves above the whole group,
    and the achieved FPR may be lower than asked (e.g. 0 when all scores are equal).

    Args:
        val_normal_scores: (N,) finite real scores of validation normals.
        fpr: target false-positive rate in (0, 1).

    Example:
        >>> target_fpr_threshold([0.1, 0.2, 0.3, 0.4], fpr=0.25)
        0.4
    """
    scores = _scores(val_normal_scores, "val_normal_scores")
    fpr = _number(fpr, "fpr", 0, 1, open_interval=True)
    values, counts = np.unique(scores.astype(np.float64), return_counts=True)
    flagged_at_or_above = np.cumsum(counts[::-1])[::-1]
    allowed = flagged_at_or_above / scores.size <= fpr
    if not allowed.any():
        return float(np.nextafter(values[-1], np.inf))
    return float(values[int(np.argmax(allowed))])


def f1_optimal_threshold(val_labels: np.ndarray | None, val_scores: np.ndarray) -> float:
    """The threshold that maximises F1 on a labelled validation set.

    Needs: a labelled validation set containing both normals and defects (for example normals
    plus pseudo-anomalies). It never falls back to the test set or to another strategy.

    Args:
        val_labels: (N,) bool or 0/1, 1 = anomalous validation image.
        val_scores: (N,) finite real scores of the same images.

    Raises:
        ParameterError: ``val_labels`` is missing or holds no defects or no normals.

    Example:
        >>> f1_optimal_threshold([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
        0.35
    """
    refusal = (
        "F1-optimal threshold needs a labelled validation set with defects "
        "(val_labels {}); choose percentile/mean_std/max/target_fpr, or pass labelled "
        "validation data (e.g. anomaly_utils.data.pseudo_anomalies)"
    )
    if val_labels is None:
        raise ParameterError(refusal.format("is None"))
    labels = np.asarray(val_labels)
    scores = _scores(val_scores, "val_scores")
    if labels.shape != scores.shape:
        raise ParameterError(
            f"val_labels has shape {labels.shape} but val_scores has shape {scores.shape}"
        )
    if labels.dtype != bool and not (
        np.issubdtype(labels.dtype, np.number) and np.isin(labels, (0, 1)).all()
    ):
        raise ParameterError("val_labels must contain only 0 and 1 (or bool)")
    if not labels.any():
        raise ParameterError(refusal.format("has no defects"))
    if labels.all():
        raise ParameterError(
            "F1-optimal threshold needs a labelled validation set with normals too "
            "(val_labels are all defects); add the validation normals' scores"
        )
    _, threshold = f1_max(labels, scores)
    assert threshold is not None  # both classes are present
    return threshold


def pixel_threshold(val_normal_maps: np.ndarray, q: float = 99.0) -> float:
    """The q-th percentile of all pixel scores of the validation normals' anomaly maps.

    Needs: anomaly maps of defect-free validation images only.

    Args:
        val_normal_maps: (N, H, W) (any shape) finite real anomaly maps of validation normals.
        q: percentile in [0, 100].

    Example:
        >>> import numpy as np
        >>> pixel_threshold(np.arange(8.0).reshape(2, 2, 2), q=50)
        3.5
    """
    maps = _scores(val_normal_maps, "val_normal_maps", ndim=None)
    q = _number(q, "q", 0, 100, open_interval=False)
    return float(np.percentile(maps, q))


def segment(maps: np.ndarray, pixel_threshold: float, min_area: int = 0) -> np.ndarray:
    """Binarise anomaly maps and drop connected defect components smaller than ``min_area``.

    A pixel is defective when ``map >= pixel_threshold``. Components are 8-connected within each
    image (as in the AUPRO evaluation) and never span two images.

    Args:
        maps: (N, H, W) finite real anomaly maps.
        pixel_threshold: threshold in map units (see :func:`pixel_threshold`).
        min_area: smallest component kept, in pixels (>= 0; 0 and 1 keep everything).

    Returns:
        (N, H, W) bool masks, True = defect pixel.

    Example:
        >>> import numpy as np
        >>> m = np.zeros((1, 4, 4)); m[0, 0, 0] = 1; m[0, 2:4, 2:4] = 1
        >>> int(segment(m, 0.5, min_area=2).sum())
        4
    """
    arr = _scores(maps, "maps", ndim=3)
    _number(pixel_threshold, "pixel_threshold", -np.inf, np.inf, open_interval=True)
    if isinstance(min_area, bool) or not isinstance(min_area, (int, np.integer)) or min_area < 0:
        raise ParameterError(f"min_area must be a non-negative integer, got {min_area!r}")
    masks = arr >= pixel_threshold
    if min_area <= 1 or not masks.any():
        return masks
    components, _ = ndimage.label(masks, structure=_PER_IMAGE_8_CONNECTED)
    keep = np.bincount(components.ravel()) >= min_area
    keep[0] = False
    return keep[components]


_STRATEGY_FUNCTIONS: dict[str, Callable[..., float]] = {
    "percentile": percentile_threshold,
    "mean_std": mean_std_threshold,
    "max": max_threshold,
    "target_fpr": target_fpr_threshold,
    "f1_optimal": f1_optimal_threshold,
}


def _parameters(function: Callable[..., float]) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(function).parameters)


def select_threshold(strategy: str, **data_and_settings: Any) -> float:
    """Fit the image threshold strategy named ``strategy``.

    Pass all the data and settings you have; each strategy takes the ones it needs and ignores
    those of the other strategies. A name that no strategy knows (a typo) is an error.

    Args:
        strategy: one of :data:`STRATEGIES`.
        **data_and_settings: any of ``val_normal_scores``, ``val_labels``, ``val_scores``,
            ``q``, ``k``, ``fpr``.

    Returns:
        The threshold; ``score >= threshold`` is anomalous.

    Example:
        >>> select_threshold("percentile", val_normal_scores=[1.0, 2.0, 3.0], q=50, k=3.0)
        2.0
    """
    if strategy not in _STRATEGY_FUNCTIONS:
        raise ParameterError(
            f"unknown threshold strategy {strategy!r}",
            fix=f"choose one of {', '.join(STRATEGIES)}",
        )
    known = {name for f in _STRATEGY_FUNCTIONS.values() for name in _parameters(f)}
    unknown = sorted(set(data_and_settings) - known)
    if unknown:
        raise ParameterError(
            f"select_threshold got unknown argument(s) {', '.join(unknown)}",
            fix=f"use only {', '.join(sorted(known))}",
        )
    parameters = _parameters(_STRATEGY_FUNCTIONS[strategy])
    arguments = {name: data_and_settings[name] for name in parameters if name in data_and_settings}
    for name, parameter in parameters.items():
        if name not in arguments and parameter.default is inspect.Parameter.empty:
            arguments[name] = None  # each strategy explains what its missing data means
    return _STRATEGY_FUNCTIONS[strategy](**arguments)
