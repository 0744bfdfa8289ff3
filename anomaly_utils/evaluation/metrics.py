"""Evaluation metrics for image- and pixel-level anomaly detection.

One module because every metric shares the same input checks and the tie-exact grouping of
scores; the per-defect table and the summary are compositions of them.

Pure functions over numpy arrays with scikit-learn's argument order ``(y_true, y_score)``.
Conventions used throughout the lab:

1. A higher score means more anomalous; label ``1`` (or mask ``True``) marks an anomaly.
2. ``score >= threshold`` is predicted anomalous.
3. A metric that cannot be computed from the data given (only one class present, no masks, no
   defect regions) is returned as ``None``, so callers write JSON ``null`` instead of a
   misleading number.

Every curve is exact, ties included: the scores are grouped by distinct value once
(``np.unique``) and each group is processed as a whole, so the image metrics equal
scikit-learn's (``roc_auc_score``, ``average_precision_score``, ``precision_recall_curve``) to
float rounding. For 200 maps of 256x256 the pixel AUROC needs about 400 MB and 4-7 s on one
CPU core (scikit-learn's ``roc_auc_score``: 650 MB, 8.5 s). The module does not import
scikit-learn: ``sklearn.metrics`` costs 1.4 s of CPU to import, in every notebook kernel and
command that computes a metric; ``scipy.stats`` (0.5 s) is imported only by the bootstrap.

Example:
    >>> import numpy as np
    >>> image_auroc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    0.75
    >>> image_auroc(np.array([0, 0]), np.array([0.1, 0.2])) is None
    True
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from scipy import ndimage

from anomaly_utils.errors import ParameterError

NORMAL_TYPE = "good"
"""The defect type that marks a defect-free image (MVTec AD naming)."""

# Label each (H, W) slice of an (N, H, W) stack with 8-connectivity, as the MVTec AD evaluation
# code does, without joining regions across neighbouring images.
_PER_IMAGE_8_CONNECTED = np.zeros((3, 3, 3), dtype=bool)
_PER_IMAGE_8_CONNECTED[1] = True

# Bootstrap resamples are ranked in chunks of at most this many scores to bound memory.
_BOOTSTRAP_CHUNK_VALUES = 2_000_000


def _binary(values: Any, name: str, ndim: int) -> np.ndarray:
    """Return ``values`` as a bool array after checking shape and that it holds only 0/1."""
    arr = np.asarray(values)
    if arr.ndim != ndim or arr.size == 0:
        raise ParameterError(
            f"{name} must be a non-empty {ndim}-D array, got shape {arr.shape}",
            fix=f"pass {name} with shape {'(N,)' if ndim == 1 else '(N, H, W)'}",
        )
    if arr.dtype == bool:
        return arr
    if not np.issubdtype(arr.dtype, np.number):
        raise ParameterError(f"{name} must be bool or 0/1 numbers, got dtype {arr.dtype}")
    bad = ~np.isin(arr, (0, 1))
    if bad.any():
        raise ParameterError(
            f"{name} must contain only 0 and 1 (or bool); found {np.unique(arr[bad])[:5]}",
            fix=f"binarise it first, e.g. {name} > 0",
        )
    return arr.astype(bool)


def _finite(values: Any, name: str, ndim: int) -> np.ndarray:
    """Return ``values`` as a real-valued array after checking shape and that all are finite."""
    arr = np.asarray(values)
    if arr.ndim != ndim or arr.size == 0:
        raise ParameterError(
            f"{name} must be a non-empty {ndim}-D array, got shape {arr.shape}",
            fix=f"pass {name} with shape {'(N,)' if ndim == 1 else '(N, H, W)'}",
        )
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ParameterError(f"{name} must be real numbers, got dtype {arr.dtype}")
    bad = ~np.isfinite(arr)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ParameterError(
            f"{name} contains {int(bad.sum())} NaN or infinite values (first at index {first})",
            fix="check the scoring step that produced them",
        )
    return arr


def _pair(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate image-level ``labels`` (N,) and ``scores`` (N,) together."""
    y = _binary(labels, "labels", 1)
    s = _finite(scores, "scores", 1)
    if y.shape != s.shape:
        raise ParameterError(f"labels has {y.size} entries but scores has {s.size}")
    return y, s


def _pixel_pair(masks: Any, maps: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate ``masks`` (N, H, W) and anomaly ``maps`` (N, H, W) together."""
    m = _binary(masks, "masks", 3)
    a = _finite(maps, "maps", 3)
    if m.shape != a.shape:
        raise ParameterError(
            f"masks has shape {m.shape} but maps has shape {a.shape}",
            fix="pass one (H, W) map per ground-truth mask, at the mask's resolution",
        )
    return m, a


def _both_classes(y: np.ndarray) -> bool:
    return bool(y.any() and not y.all())


def _descending_groups(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Group index of every score, flattened (0 = highest distinct score), and the (G,)
    distinct scores, descending."""
    unique, inverse = np.unique(scores.ravel(), return_inverse=True)
    return (len(unique) - 1) - inverse.ravel(), unique[::-1]


def _cumulative_counts(y: np.ndarray, s: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True and false positives at every distinct threshold, highest first.

    Args:
        y: bool labels, any shape; ``s``: finite scores of the same shape.

    Returns:
        ``(tps, fps, thresholds)``, each (G,) for G distinct scores: the positives and the
        negatives with ``score >= thresholds[g]``, thresholds descending.
    """
    group, thresholds = _descending_groups(s)
    positives = np.bincount(group[y.ravel()], minlength=len(thresholds))
    negatives = np.bincount(group, minlength=len(thresholds)) - positives
    return np.cumsum(positives), np.cumsum(negatives), thresholds


def _rates(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)`` of ``y`` (bool, both classes) and ``s``: (G + 1,) rates
    from (0, 0) to (1, 1) and the (G,) distinct thresholds, descending."""
    tps, fps, thresholds = _cumulative_counts(y, s)
    return (np.concatenate(([0.0], fps / fps[-1])), np.concatenate(([0.0], tps / tps[-1])),
            thresholds)


def _roc_area(y: np.ndarray, s: np.ndarray) -> float:
    """Trapezoid area under the exact ROC curve of ``y`` (bool, both classes) and ``s``."""
    fpr, tpr, _ = _rates(y, s)
    return float(np.trapezoid(tpr, fpr))


def roc_curve(labels: np.ndarray, scores: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The ROC curve of image scores, one point per distinct score.

    Args:
        labels: (N,) bool or 0/1, 1 = anomalous image.
        scores: (N,) finite real anomaly scores.

    Returns:
        ``(fpr, tpr, thresholds)``: (G + 1,) rates from (0, 0) to (1, 1) and (G,) thresholds
        descending (point ``k + 1`` is ``score >= thresholds[k]``); ``None`` when only one
        class is present. scikit-learn's ``roc_curve`` without ``drop_intermediate``.

    Example:
        >>> fpr, tpr, thresholds = roc_curve([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
        >>> fpr.tolist(), tpr.tolist()
        ([0.0, 0.0, 0.5, 0.5, 1.0], [0.0, 0.5, 0.5, 1.0, 1.0])
    """
    y, s = _pair(labels, scores)
    if not _both_classes(y):
        return None
    return _rates(y, s)


def precision_recall_curve(labels: np.ndarray, scores: np.ndarray
                           ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Precision and recall of image scores at every distinct threshold.

    Args:
        labels: (N,) bool or 0/1, 1 = anomalous image.
        scores: (N,) finite real anomaly scores.

    Returns:
        ``(precision, recall, thresholds)``, each (G,), thresholds descending
        (``score >= thresholds[k]`` is anomalous); ``None`` when only one class is present.
        scikit-learn's curve holds the same points in reverse order, ends at recall 0 and
        precision 1, and leaves out the thresholds below the first one of full recall.

    Example:
        >>> precision, recall, _ = precision_recall_curve([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
        >>> precision.round(3).tolist(), recall.tolist()
        ([1.0, 0.5, 0.667, 0.5], [0.5, 0.5, 1.0, 1.0])
    """
    y, s = _pair(labels, scores)
    if not _both_classes(y):
        return None
    tps, fps, thresholds = _cumulative_counts(y, s)
    return tps / (tps + fps), tps / tps[-1], thresholds


def _partial_area(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoid area under the curve ``(x, y)`` from ``x[0]`` up to ``x_max``.

    ``x`` must be non-decreasing with ``x[-1] >= x_max``; the curve is linearly interpolated at
    ``x_max`` when ``x_max`` falls between two points (as in the MVTec AD evaluation code).
    """
    k = int(np.count_nonzero(x <= x_max))
    area = float(np.trapezoid(y[:k], x[:k]))
    if x[k - 1] < x_max:
        x0, y0, x1, y1 = x[k - 1], y[k - 1], x[k], y[k]
        y_at_max = y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)
        area += 0.5 * (y0 + y_at_max) * (x_max - x0)
    return area


def image_auroc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve of image scores (equal to scikit-learn's ``roc_auc_score``).

    Args:
        labels: (N,) bool or 0/1, 1 = anomalous image.
        scores: (N,) finite real anomaly scores, higher = more anomalous.

    Returns:
        AUROC in [0, 1] (ties count half), or ``None`` when only one class is present.

    Example:
        >>> image_auroc([0, 1, 1], [0.2, 0.9, 0.1])
        0.5
    """
    y, s = _pair(labels, scores)
    if not _both_classes(y):
        return None
    return _roc_area(y, s)


def shown(value: float | None, digits: int = 2) -> str:
    """A metric as the notebooks print it: rounded to ``digits``, or "n/a" when it could not
    be computed (for example a pixel metric on a dataset without masks).

    Example:
        >>> shown(0.8765), shown(None)
        ('0.88', 'n/a')
    """
    return "n/a" if value is None else f"{value:.{digits}f}"


def pixel_auroc(masks: np.ndarray | None, maps: np.ndarray) -> float | None:
    """Exact AUROC over all pixels of all images.

    Equal to ``roc_auc_score(masks.ravel(), maps.ravel())`` (ties count half) but grouped by
    distinct score, which uses about half the memory and time on large inputs.

    Args:
        masks: (N, H, W) bool or 0/1 ground truth, 1 = defect pixel; ``None`` if there are none.
        maps: (N, H, W) finite real anomaly maps, same shape as ``masks``.

    Returns:
        AUROC in [0, 1], or ``None`` when ``masks`` is ``None`` or all pixels have one class.

    Example:
        >>> import numpy as np
        >>> m = np.zeros((1, 2, 2), bool); m[0, 0, 0] = True
        >>> pixel_auroc(m, np.array([[[0.9, 0.1], [0.2, 0.9]]]))
        0.8333333333333334
    """
    if masks is None:
        return None
    m, a = _pixel_pair(masks, maps)
    if not _both_classes(m):
        return None
    return _roc_area(m, a)


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Average precision of image scores (equal to scikit-learn's ``average_precision_score``):
    the sum over thresholds, highest first, of the precision times the recall gained.

    Args:
        labels: (N,) bool or 0/1, 1 = anomalous image.
        scores: (N,) finite real anomaly scores.

    Returns:
        AP in [0, 1], or ``None`` when only one class is present.

    Example:
        >>> average_precision([0, 1, 1], [0.2, 0.9, 0.1])
        0.8333333333333333
    """
    curve = precision_recall_curve(labels, scores)
    if curve is None:
        return None
    precision, recall, _ = curve
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def f1_max(labels: np.ndarray, scores: np.ndarray) -> tuple[float | None, float | None]:
    """Best F1 over all thresholds of the precision-recall curve, and that threshold.

    ``score >= threshold`` is anomalous. When several thresholds reach the same best F1, the
    highest of them (fewest alarms) is returned. The threshold is fitted to these labels, so on
    a test set this is an optimistic upper bound, not a deployable threshold.

    Args:
        labels: (N,) bool or 0/1, 1 = anomalous image.
        scores: (N,) finite real anomaly scores.

    Returns:
        ``(f1, threshold)``: F1 in [0, 1] and a threshold equal to one of the scores; or
        ``(None, None)`` when only one class is present.

    Example:
        >>> f1_max([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
        (0.8, 0.35)
    """
    curve = precision_recall_curve(labels, scores)
    if curve is None:
        return None, None
    precision, recall, thresholds = curve
    denominator = precision + recall
    f1 = np.divide(
        2 * precision * recall, denominator, out=np.zeros_like(denominator), where=denominator > 0
    )
    best = int(np.argmax(f1))  # the first maximum: thresholds are descending
    return float(f1[best]), float(thresholds[best])


def aupro(
    masks: np.ndarray | None, anomaly_maps: np.ndarray, fpr_limit: float = 0.3
) -> float | None:
    """Normalised area under the per-region-overlap (PRO) curve up to a false-positive rate.

    As defined for MVTec AD (Bergmann et al., IJCV 2021):

    1. Each ground-truth mask is split into connected regions (8-connectivity, per image).
    2. For a threshold t, a region's overlap is the fraction of its pixels with
       ``map >= t``; PRO(t) is the mean overlap over all regions of all images, and FPR(t) the
       fraction of defect-free pixels (of all images) with ``map >= t``.
    3. The curve (FPR, PRO) over every distinct score, from (0, 0) (threshold above every
       score) to (1, 1) (the lowest score), is integrated with
       the trapezoid rule up to ``fpr_limit`` (interpolated at the limit) and divided by
       ``fpr_limit``.

    Exact at tied scores: pixels with equal scores are added to the curve as one group.

    Args:
        masks: (N, H, W) bool or 0/1 ground truth, 1 = defect pixel; ``None`` if there are none.
        anomaly_maps: (N, H, W) finite real anomaly maps, same shape as ``masks``.
        fpr_limit: upper FPR integration limit in (0, 1]; 0.3 is the MVTec AD standard.

    Returns:
        AUPRO in [0, 1] (1 = perfect, ``fpr_limit / 2`` for a constant map), or ``None`` when
        there are no defect regions or no defect-free pixels.

    Example:
        >>> import numpy as np
        >>> m = np.zeros((2, 4, 4), bool); m[0, 1:3, 1:3] = True
        >>> aupro(m, m.astype(float))
        1.0
        >>> aupro(m, np.zeros((2, 4, 4)))
        0.15
    """
    if not isinstance(fpr_limit, (int, float, np.number)) or not 0 < fpr_limit <= 1:
        raise ParameterError(f"fpr_limit must be a number in (0, 1], got {fpr_limit!r}")
    if masks is None:
        return None
    m, a = _pixel_pair(masks, anomaly_maps)
    regions, n_regions = ndimage.label(m, structure=_PER_IMAGE_8_CONNECTED)
    regions = regions.ravel()
    normal = regions == 0
    n_normal = int(np.count_nonzero(normal))
    if n_regions == 0 or n_normal == 0:
        return None
    area = np.bincount(regions)
    group, thresholds = _descending_groups(a)
    n_groups = len(thresholds)
    false_positives = np.bincount(group[normal], minlength=n_groups)
    in_region = ~normal
    overlap_gain = np.bincount(
        group[in_region], weights=1.0 / area[regions[in_region]], minlength=n_groups
    )
    fpr = np.concatenate(([0.0], np.cumsum(false_positives) / n_normal))
    pro = np.concatenate(([0.0], np.minimum(np.cumsum(overlap_gain) / n_regions, 1.0)))
    return float(_partial_area(fpr, pro, float(fpr_limit)) / fpr_limit)


def threshold_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, Any]:
    """Confusion counts and rates for one threshold; ``score >= threshold`` is anomalous.

    Args:
        labels: (N,) bool or 0/1, 1 = anomalous image.
        scores: (N,) finite real anomaly scores.
        threshold: decision threshold in score units (not NaN; +-inf allowed).

    Returns:
        ``{"tp", "fp", "tn", "fn"}`` as ints and ``{"precision", "recall", "f1", "accuracy",
        "fpr"}`` as floats in [0, 1]. A rate whose denominator is zero is ``None``, not 0.0:
        precision with no predicted anomalies, recall with no anomalies, fpr with no normals,
        and f1 = 2tp / (2tp + fp + fn) only when there are neither anomalies nor alarms.

    Example:
        >>> r = threshold_metrics([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], 0.35)
        >>> r["tp"], r["fp"], r["precision"], r["recall"]
        (2, 1, 0.6666666666666666, 1.0)
    """
    y, s = _pair(labels, scores)
    if not isinstance(threshold, (int, float, np.number)) or np.isnan(threshold):
        raise ParameterError(f"threshold must be a real number, got {threshold!r}")
    predicted = s >= threshold
    tp = int(np.count_nonzero(predicted & y))
    fp = int(np.count_nonzero(predicted & ~y))
    fn = int(np.count_nonzero(~predicted & y))
    tn = int(np.count_nonzero(~predicted & ~y))

    def ratio(numerator: int, denominator: int) -> float | None:
        return numerator / denominator if denominator else None

    return {
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "precision": ratio(tp, tp + fp),
        "recall": ratio(tp, tp + fn),
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
        "accuracy": (tp + tn) / y.size,
        "fpr": ratio(fp, fp + tn),
    }


def _rank_auroc(positives: np.ndarray, negatives: np.ndarray, axis: int = -1) -> np.ndarray:
    """AUROC (Mann-Whitney U with average ranks) of positive against negative scores along
    ``axis``, for every index of the other axes (scipy.stats.bootstrap's vectorized form)."""
    positives, negatives = np.moveaxis(positives, axis, -1), np.moveaxis(negatives, axis, -1)
    from scipy.stats import rankdata

    n_pos, n_neg = positives.shape[-1], negatives.shape[-1]
    ranks = rankdata(np.concatenate([positives, negatives], axis=-1), axis=-1)
    return (ranks[..., :n_pos].sum(axis=-1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def bootstrap_auroc_ci(
    labels: np.ndarray,
    scores: np.ndarray,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float] | None:
    """Percentile bootstrap confidence interval of the image AUROC (scipy.stats.bootstrap).

    Stratified: the anomalous and the normal scores are resampled independently, each with
    replacement at its own size, so each resample has both classes. Deterministic for a given
    seed.

    Args:
        labels: (N,) bool or 0/1, 1 = anomalous image.
        scores: (N,) finite real anomaly scores.
        n_boot: number of resamples (>= 1; 1000 or more for a stable interval).
        alpha: 1 - confidence level, in (0, 1); 0.05 gives a 95 % interval.
        seed: seed of the numpy generator that draws the resamples.

    Returns:
        ``(low, high)`` AUROC bounds in [0, 1], or ``None`` when only one class is present.

    Example:
        >>> low, high = bootstrap_auroc_ci([0, 0, 0, 1, 1, 1], [0.1, 0.3, 0.5, 0.4, 0.6, 0.9])
        >>> low <= image_auroc([0, 0, 0, 1, 1, 1], [0.1, 0.3, 0.5, 0.4, 0.6, 0.9]) <= high
        True
    """
    from scipy.stats import bootstrap

    y, s = _pair(labels, scores)
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ParameterError(f"n_boot must be a positive integer, got {n_boot!r}")
    if not isinstance(alpha, (int, float, np.number)) or not 0 < alpha < 1:
        raise ParameterError(f"alpha must be a number in (0, 1), got {alpha!r}")
    if not _both_classes(y):
        return None
    with warnings.catch_warnings():  # one resample has no spread; its interval is that value
        warnings.simplefilter("ignore", RuntimeWarning)
        result = bootstrap((s[y], s[~y]), _rank_auroc, n_resamples=int(n_boot),
                           method="percentile", confidence_level=1 - alpha, vectorized=True,
                           batch=max(1, _BOOTSTRAP_CHUNK_VALUES // s.size),
                           rng=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def _optional_pixels(
    masks: np.ndarray | None, maps: np.ndarray | None, n_images: int
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Validate the optional pixel inputs of the per-model summaries: both or neither."""
    if (masks is None) != (maps is None):
        raise ParameterError(
            "masks and maps must be given together",
            fix="pass both ground-truth masks and anomaly maps, or neither",
        )
    if masks is None:
        return None, None
    m, a = _pixel_pair(masks, maps)
    if len(m) != n_images:
        raise ParameterError(f"masks has {len(m)} images but labels has {n_images} entries")
    return m, a


def per_defect_metrics(
    labels: np.ndarray,
    scores: np.ndarray,
    defect_types: np.ndarray,
    masks: np.ndarray | None = None,
    maps: np.ndarray | None = None,
    *,
    fpr_limit: float = 0.3,
) -> dict[str, dict[str, Any]]:
    """Metrics of each defect type against the defect-free images.

    For every defect type d other than ``"good"``, the images of type d and all ``"good``
    images form a subset on which image AUROC, pixel AUROC and AUPRO are computed.

    Args:
        labels: (N,) bool or 0/1, 1 = anomalous; must be 0 exactly where the type is "good".
        scores: (N,) finite real anomaly scores.
        defect_types: (N,) strings, ``"good"`` for defect-free images.
        masks: optional (N, H, W) bool or 0/1 ground truth; needs ``maps``.
        maps: optional (N, H, W) finite real anomaly maps; needs ``masks``.
        fpr_limit: integration limit of :func:`aupro`.

    Returns:
        ``{defect: {"image_auroc", "pixel_auroc", "aupro", "n"}}`` sorted by defect name; ``n``
        is the number of images of that defect; a metric is ``None`` when it cannot be computed
        (no "good" images, or no masks given).

    Example:
        >>> r = per_defect_metrics([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], ["good", "good", "a", "b"])
        >>> r["a"]
        {'image_auroc': 0.5, 'pixel_auroc': None, 'aupro': None, 'n': 1}
    """
    y, s = _pair(labels, scores)
    types = np.asarray(defect_types)
    if types.shape != y.shape or not all(isinstance(t, str) for t in types.tolist()):
        raise ParameterError(
            f"defect_types must be {y.size} strings (one per image), got shape {types.shape}"
        )
    types = types.astype(str)
    inconsistent = y != (types != NORMAL_TYPE)
    if inconsistent.any():
        i = int(np.argmax(inconsistent))
        raise ParameterError(
            f"labels[{i}] is {int(y[i])} but defect_types[{i}] is {str(types[i])!r}",
            fix=f"label exactly the {NORMAL_TYPE!r} images 0 and every other defect type 1",
        )
    m, a = _optional_pixels(masks, maps, y.size)
    normal = types == NORMAL_TYPE
    result: dict[str, dict[str, Any]] = {}
    for defect in sorted(set(types[~normal].tolist())):
        subset = normal | (types == defect)
        result[defect] = {
            "image_auroc": image_auroc(y[subset], s[subset]),
            "pixel_auroc": None if m is None else pixel_auroc(m[subset], a[subset]),
            "aupro": None if m is None else aupro(m[subset], a[subset], fpr_limit=fpr_limit),
            "n": int(np.count_nonzero(types == defect)),
        }
    return result


def summarize(
    labels: np.ndarray,
    scores: np.ndarray,
    masks: np.ndarray | None = None,
    maps: np.ndarray | None = None,
    defect_types: np.ndarray | None = None,
    *,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    fpr_limit: float = 0.3,
) -> dict[str, Any]:
    """All threshold-free metrics of one model as a JSON-ready dict.

    Args:
        labels: (N,) bool or 0/1, 1 = anomalous image.
        scores: (N,) finite real anomaly scores.
        masks: optional (N, H, W) bool or 0/1 ground truth; needs ``maps``.
        maps: optional (N, H, W) finite real anomaly maps; needs ``masks``.
        defect_types: optional (N,) strings with ``"good"`` for normals, for ``per_defect``.
        n_boot, alpha, seed: settings of :func:`bootstrap_auroc_ci`.
        fpr_limit: integration limit of :func:`aupro`.

    Returns:
        Exactly the keys ``image_auroc``, ``image_auroc_ci`` (``[low, high]``), ``pixel_auroc``,
        ``aupro``, ``f1_max`` (the best F1 as a float; its threshold is fitted on these labels,
        so it is left out), ``average_precision`` and ``per_defect`` (see
        :func:`per_defect_metrics`); any of them ``None`` when it cannot be computed.

    Example:
        >>> summarize([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])["f1_max"]
        0.8
    """
    y, s = _pair(labels, scores)
    m, a = _optional_pixels(masks, maps, y.size)
    ci = bootstrap_auroc_ci(y, s, n_boot=n_boot, alpha=alpha, seed=seed)
    best_f1, _ = f1_max(y, s)
    return {
        "image_auroc": image_auroc(y, s),
        "image_auroc_ci": None if ci is None else list(ci),
        "pixel_auroc": None if m is None else pixel_auroc(m, a),
        "aupro": None if m is None else aupro(m, a, fpr_limit=fpr_limit),
        "f1_max": best_f1,
        "average_precision": average_precision(y, s),
        "per_defect": None
        if defect_types is None
        else per_defect_metrics(y, s, defect_types, masks=m, maps=a, fpr_limit=fpr_limit),
    }
