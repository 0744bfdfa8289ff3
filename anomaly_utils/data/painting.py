"""What every pasted anomaly is painted with: shapes (blobs, curves), the working copy of an
image and its value range, and the write-back that changes no pixel outside the mask.

Shared by the validation kinds (:mod:`anomaly_utils.data.pseudo_anomalies`,
:mod:`anomaly_utils.data.real_like_anomalies`), the synthetic carpet's defects and the head's
training anomalies. Images are uint8 or float, shaped (H, W), (H, W, 1) or (H, W, 3).

Example:
    >>> m, d = blob_mask((32, 32), np.random.default_rng(0), (16, 16), 8)
    >>> bool(m[16, 16]), bool(m[0, 0])
    (True, False)
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from anomaly_utils.errors import ParameterError


def blob_mask(shape: tuple[int, int], rng: np.random.Generator, center: Sequence[float],
              radius: float, aspect: float = 1.0,
              irregularity: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """An irregular, rotated ellipse-like blob.

    Args:
        shape: (H, W) of the canvas in pixels.
        rng: source of the rotation and the boundary wobble.
        center: (x, y) in pixels.
        radius: mean radius along the major axis in pixels.
        aspect: minor/major axis ratio in (0, 1].
        irregularity: amplitude of the boundary wobble (0 = ellipse, ~0.6 = lumpy).

    Returns:
        ``(mask, depth)``: bool (H, W) and float32 (H, W) in [0, 1], 0 at and outside the edge
        rising to 1 at the centre.

    Example:
        >>> m, d = blob_mask((32, 32), np.random.default_rng(0), (16, 16), 8)
        >>> bool(m[16, 16]), bool(m[0, 0])
        (True, False)
    """
    h, w = shape
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    dx, dy = x - np.float32(center[0]), y - np.float32(center[1])
    ca, sa = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    px, py = dx * ca + dy * sa, (-dx * sa + dy * ca) / np.float32(aspect)
    theta = np.arctan2(py, px)
    r_edge = np.ones_like(theta)
    for k in range(2, 7):
        r_edge += irregularity / k**1.5 * rng.normal() * np.cos(k * theta + rng.uniform(0, 6.3))
    r_edge = np.float32(radius) * np.clip(r_edge, 0.5, None)
    depth = 1 - np.hypot(px, py) / r_edge
    return depth > 0, np.clip(depth, 0, 1)


def random_curve(rng: np.random.Generator, start: Sequence[float], length: float,
                 steps: int = 60, bend: float = 0.1) -> np.ndarray:
    """Points of a smooth random curve.

    Args:
        rng: source of the heading and the turns.
        start: (x, y) of the first point in pixels.
        length: arc length in pixels.
        steps: number of points.
        bend: standard deviation of the heading change per step, radians.

    Returns:
        float64 (steps, 2) array of (x, y) pixel coordinates (may leave the canvas).

    Example:
        >>> random_curve(np.random.default_rng(0), (5, 5), 20, steps=10).shape
        (10, 2)
    """
    heading = rng.uniform(0, 2 * np.pi)
    turn = np.convolve(np.cumsum(rng.normal(0, bend, steps)), np.ones(5) / 5, mode="same")
    angles = heading + turn
    offsets = np.cumsum(np.stack([np.cos(angles), np.sin(angles)], 1) * (length / steps), 0)
    return np.asarray(start, np.float64) + np.vstack([[0.0, 0.0], offsets])[:-1]


def distance_to_curve(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """float32 (H, W): Euclidean distance in pixels from each pixel to the polyline ``points``."""
    canvas = np.full(shape, 255, np.uint8)
    cv2.polylines(canvas, [np.rint(points).astype(np.int32)], False, 0, 1, cv2.LINE_8)
    return cv2.distanceTransform(canvas, cv2.DIST_L2, 5)


def as_work(image: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Validate ``image``; return float32 (H, W, C) plus the value range to stay within."""
    if not isinstance(image, np.ndarray):
        raise ParameterError(f"image must be a numpy array, got {type(image).__name__}",
                             fix="pass an (H, W), (H, W, 1) or (H, W, 3) array")
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3)):
        raise ParameterError(f"image must be shaped (H, W), (H, W, 1) or (H, W, 3), got "
                             f"{image.shape}", fix="pass one image, not a batch")
    if min(image.shape[:2]) < 8:
        raise ParameterError(f"image must be at least 8x8 pixels, got {image.shape[:2]}",
                             fix="use larger images")
    if image.dtype == np.uint8:
        lo, hi = 0.0, 255.0
    elif np.issubdtype(image.dtype, np.floating):
        if not np.isfinite(image).all():
            raise ParameterError("image contains NaN or inf values",
                                 fix="clean or re-load the image")
        lo, hi = float(image.min()), float(image.max())
        if lo >= 0 and hi <= 1:
            lo, hi = 0.0, 1.0
        elif hi - lo < 1e-6:
            hi = lo + 1.0
    else:
        raise ParameterError(f"image dtype must be uint8 or float, got {image.dtype}",
                             fix="convert with image.astype(np.float32) / 255")
    work = image.astype(np.float32)
    return (work[..., None] if image.ndim == 2 else work), lo, hi


def finish(image: np.ndarray, new: np.ndarray, mask: np.ndarray, lo: float,
            hi: float) -> tuple[np.ndarray, np.ndarray]:
    """Copy ``new`` into ``image`` inside ``mask`` only, in ``image``'s dtype and shape."""
    new = np.clip(new, lo, hi)
    if image.dtype == np.uint8:
        new = np.rint(new)
    new = new.reshape(image.shape[:2] + (-1,)).astype(image.dtype)
    out = image.copy()
    out[mask] = new[mask] if image.ndim == 3 else new[mask][:, 0]
    return out, mask


def checked_range(name: str, value: Sequence[float], upper: float | None = None) -> tuple[float, float]:
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ParameterError(f"{name} must be a (min, max) pair, got {value!r}",
                             fix=f"pass e.g. {name}=(0.05, 0.2)") from None
    if not (0 < a <= b) or (upper is not None and b > upper):
        limit = f" and max <= {upper}" if upper is not None else ""
        raise ParameterError(f"{name} must satisfy 0 < min <= max{limit}, got {value!r}",
                             fix=f"pass e.g. {name}=(0.05, 0.2)")
    return a, b


def direction(rng: np.random.Generator, region: np.ndarray, lo: float, hi: float) -> float:
    """+1 (brighter) or -1 (darker) for a change of ``region``'s pixels, usually towards the
    side of the value range [lo, hi] with more headroom."""
    mean = float(region.mean()) if region.size else (lo + hi) / 2
    toward_bright = (hi - mean) > (mean - lo)
    if rng.random() < 0.2 and min(hi - mean, mean - lo) > 0.25 * (hi - lo):
        toward_bright = not toward_bright
    return 1.0 if toward_bright else -1.0
