"""Per-pixel anomaly maps from an image and its reconstruction, and image scores from maps
(numpy in, numpy out).

1. :func:`anomaly_map` compares input and reconstruction per pixel: ``1 - SSIM``, squared or
   absolute error, gradient-magnitude or low-pass colour error, or a weighted blend such as
   ``"0.5*ssim+0.5*gms+1*lowpass"``, optionally smoothed.
2. :func:`image_scores` reduces each map to one number: max, mean, or mean of the top-k %.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> x = rng.random((2, 32, 32, 3), dtype=np.float32)
    >>> recon = np.clip(x + 0.05 * rng.standard_normal(x.shape), 0, 1).astype(np.float32)
    >>> maps = anomaly_map(x, recon, kind="ssim+l1")
    >>> maps.shape, image_scores(maps, method="topk", topk_percent=1.0).shape
    ((2, 32, 32), (2,))
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from anomaly_utils.errors import ParameterError
from anomaly_utils.models.similarity import GMS_C, GMS_SCALES, PREWITT, check_image_pair, ssim_map
from anomaly_utils.scoring.map_kinds import map_components

# Blur of the "lowpass" component, pixels at model resolution, chosen on the carpet's
# validation sets among 1, 2, 4 and 8 (docs/experiments.md, map kind).
LOWPASS_SIGMA = 2.0
_SCORE_METHODS = ("max", "mean", "topk")


def _as_pair(x: Any, recon: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float32)
    recon = np.asarray(recon, dtype=np.float32)
    check_image_pair(x.shape, recon.shape, what)
    return x, recon


def squared_error_map(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-pixel squared error, mean over channels.

    Args:
        x, y: (N, H, W, C) images in [0, 1].

    Returns:
        (N, H, W) float32 in [0, 1].

    Example:
        >>> import numpy as np
        >>> float(squared_error_map(np.zeros((1, 2, 2, 3)), np.full((1, 2, 2, 3), 0.5))[0, 0, 0])
        0.25
    """
    x, y = _as_pair(x, y, "squared_error_map")
    return np.square(x - y).mean(axis=-1, dtype=np.float32)


def absolute_error_map(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-pixel absolute error, mean over channels: shapes and range as
    :func:`squared_error_map`.

    Example:
        >>> import numpy as np
        >>> float(absolute_error_map(np.zeros((1, 2, 2, 3)), np.full((1, 2, 2, 3), 0.5))[0, 0, 0])
        0.5
    """
    x, y = _as_pair(x, y, "absolute_error_map")
    return np.abs(x - y).mean(axis=-1, dtype=np.float32)


def gms_error_map(x: np.ndarray, y: np.ndarray, scales: Sequence[int] = GMS_SCALES,
                  ) -> np.ndarray:
    """Multi-scale gradient magnitude dissimilarity, ``1 - GMS``, averaged over scales.

    At each scale the channel-mean image is downsampled by the factor (area averaging), its
    gradient magnitude taken with Prewitt filters, and ``GMS = (2 g_x g_y + c) /
    (g_x^2 + g_y^2 + c)`` compared per pixel (Xue et al. 2014; the multi-scale map of RIAD,
    Zavrtanik et al. 2021). Each ``1 - GMS`` map is resized back bilinearly. Unlike SSIM it
    ignores brightness and contrast and responds to edges that appear, vanish or move.

    Args:
        x, y: (N, H, W, C) images in [0, 1].
        scales: downsampling factors; a factor that would leave fewer than 3 pixels is skipped.

    Returns:
        (N, H, W) float32 in [0, 1]; 0 where the gradients agree.

    Example:
        >>> import numpy as np
        >>> x = np.zeros((1, 16, 16, 1), dtype=np.float32); x[:, :, 8:] = 1.0  # an edge
        >>> m = gms_error_map(x, np.full_like(x, 0.5))  # the edge is gone
        >>> bool(m[0, 4, 8] > 0.5), float(gms_error_map(x, x).max())
        (True, 0.0)
    """
    import cv2
    from scipy import ndimage

    x, y = _as_pair(x, y, "gms_error_map")
    n, height, width = x.shape[:3]
    prewitt = PREWITT[None]  # (1, 3, 3): no mixing across the image axis

    def magnitude(images: np.ndarray) -> np.ndarray:
        gx = ndimage.correlate(images, prewitt, mode="reflect")
        gy = ndimage.correlate(images, prewitt.transpose(0, 2, 1), mode="reflect")
        return np.sqrt(gx * gx + gy * gy)

    def resize(images: np.ndarray, size: tuple[int, int], interpolation: int) -> np.ndarray:
        return np.stack([cv2.resize(image, size, interpolation=interpolation)
                         for image in images])

    gray_x, gray_y = x.mean(axis=-1), y.mean(axis=-1)
    total = np.zeros((n, height, width), np.float32)
    used = 0
    for factor in scales:
        size = (width // factor, height // factor)
        if min(size) < 3:
            continue
        small_x, small_y = ((g if factor == 1 else resize(g, size, cv2.INTER_AREA))
                            for g in (gray_x, gray_y))
        mx, my = magnitude(small_x), magnitude(small_y)
        dissimilarity = 1.0 - (2 * mx * my + GMS_C) / (mx * mx + my * my + GMS_C)
        total += (dissimilarity if factor == 1
                  else resize(dissimilarity, (width, height), cv2.INTER_LINEAR))
        used += 1
    if used == 0:
        raise ParameterError(f"images of {width}x{height} are too small for a GMS map",
                             fix="use images of at least 3x3 pixels or another map kind")
    return np.clip(total / used, 0.0, 1.0).astype(np.float32, copy=False)


def lowpass_error_map(x: np.ndarray, y: np.ndarray, sigma: float = LOWPASS_SIGMA,
                      ) -> np.ndarray:
    """Low-pass colour error: ``|G_sigma * (x - y)|``, mean over channels.

    The *signed* difference is blurred before its magnitude is taken, so a texture
    reconstructed slightly out of phase (a residual that alternates in sign) averages out,
    while a shift of colour or brightness over an area does not. It is meant for colour
    stains that a texture's SSIM residual hides.

    Args:
        x, y: (N, H, W, C) images in [0, 1].
        sigma: standard deviation of the Gaussian blur, pixels (scipy.ndimage.gaussian_filter,
            'reflect' border).

    Returns:
        (N, H, W) float32 in [0, 1].

    Example:
        >>> import numpy as np
        >>> x = np.zeros((1, 16, 16, 1), dtype=np.float32)
        >>> wrong_phase = np.indices((16, 16)).sum(0)[None, ..., None] % 2 * 0.2 - 0.1
        >>> round(float(lowpass_error_map(x, x + wrong_phase).max()), 2)
        0.0
        >>> round(float(lowpass_error_map(x, x + 0.1)[0, 8, 8]), 2)  # a colour shift
        0.1
    """
    from scipy import ndimage

    x, y = _as_pair(x, y, "lowpass_error_map")
    if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
        raise ParameterError(f"the low-pass sigma must be a positive number of pixels, got "
                             f"{sigma!r}", fix=f"use the default {LOWPASS_SIGMA}")
    blurred = ndimage.gaussian_filter(x - y, sigma=(0, sigma, sigma, 0), mode="reflect")
    return np.abs(blurred).mean(axis=-1, dtype=np.float32)


def anomaly_map(x: np.ndarray, recon: np.ndarray, kind: str = "ssim",
                weights: Mapping[str, float] | Sequence[float] | None = None,
                smooth_sigma: float = 0.0) -> np.ndarray:
    """Per-pixel anomaly map from images and their reconstructions (larger = more anomalous).

    Components: ``"ssim"`` is ``1 - ssim_map`` clipped to [0, 2]; ``"l2"`` the squared and
    ``"l1"`` the absolute error (both in [0, 1], mean over channels); ``"gms"`` the multi-scale
    gradient magnitude dissimilarity of :func:`gms_error_map` and ``"lowpass"`` the low-pass
    colour error of :func:`lowpass_error_map` with sigma :data:`LOWPASS_SIGMA` (both in
    [0, 1]). A blend such as ``"ssim+l1"`` is the weighted sum of its components.

    Args:
        x, recon: (N, H, W, C) images and reconstructions in [0, 1].
        kind: one component or a '+'-joined blend of distinct components, each optionally
            weighted inline (``"0.5*ssim+0.5*gms+1*lowpass"``: all terms or none).
        weights: per-component weights, as {component: weight} or a sequence in the order of
            ``kind``, for a ``kind`` without inline weights; default equal weights summing
            to 1. Weights are not renormalised.
        smooth_sigma: standard deviation in pixels of a Gaussian smoothing applied to each map
            (scipy.ndimage.gaussian_filter, 'reflect' border); 0 turns it off.

    Returns:
        (N, H, W) float32, >= 0.

    Example:
        >>> import numpy as np
        >>> x = np.zeros((1, 16, 16, 1), dtype=np.float32)
        >>> float(anomaly_map(x, x + 0.5, kind="l1+l2", weights=[1.0, 1.0])[0, 0, 0])
        0.75
    """
    components = map_components(kind, weights)
    if not (isinstance(smooth_sigma, (int, float)) and math.isfinite(smooth_sigma)
            and smooth_sigma >= 0):
        raise ParameterError(f"smooth_sigma must be a number of pixels >= 0, got {smooth_sigma!r}",
                             fix="pass 0 to turn smoothing off, or e.g. 4")
    x, recon = _as_pair(x, recon, "anomaly_map")
    maps = np.zeros(x.shape[:3], dtype=np.float32)
    for name, weight in components.items():
        if name == "ssim":
            part = np.clip(1.0 - ssim_map(x, recon), 0.0, 2.0)
        elif name == "l2":
            part = squared_error_map(x, recon)
        elif name == "gms":
            part = gms_error_map(x, recon)
        elif name == "lowpass":
            part = lowpass_error_map(x, recon)
        else:
            part = absolute_error_map(x, recon)
        maps += np.float32(weight) * part
    if smooth_sigma > 0:
        from scipy import ndimage

        maps = ndimage.gaussian_filter(maps, sigma=(0.0, smooth_sigma, smooth_sigma),
                                       mode="reflect").astype(np.float32, copy=False)
    return maps


def _check_maps(maps: Any, what: str) -> np.ndarray:
    maps = np.asarray(maps, dtype=np.float32)
    if maps.ndim != 3 or 0 in maps.shape:
        raise ParameterError(f"{what} needs non-empty maps shaped (N, H, W); got shape "
                             f"{maps.shape}", fix="pass the output of anomaly_map")
    return maps


def image_scores(maps: np.ndarray, method: str = "max", topk_percent: float = 1.0) -> np.ndarray:
    """Reduce each anomaly map to one image score (larger = more anomalous).

    Args:
        maps: (N, H, W) anomaly maps.
        method: ``"max"`` (the peak pixel), ``"mean"`` (all pixels) or ``"topk"`` (the mean of
            the highest ``topk_percent`` % of pixels, at least one pixel).
        topk_percent: share of pixels for ``"topk"``, in (0, 100].

    Returns:
        (N,) float32 scores, in the units of the maps.

    Example:
        >>> import numpy as np
        >>> maps = np.arange(200, dtype=np.float32).reshape(2, 10, 10)
        >>> image_scores(maps, "topk", topk_percent=2.0).tolist()
        [98.5, 198.5]
    """
    if method not in _SCORE_METHODS:
        raise ParameterError(f"score method {method!r} is not known",
                             fix=f"use one of {', '.join(_SCORE_METHODS)}")
    if not (isinstance(topk_percent, (int, float)) and 0 < topk_percent <= 100):
        raise ParameterError(f"topk_percent must be in (0, 100], got {topk_percent!r}",
                             fix="pass e.g. 1.0 for the top 1 % of pixels")
    flat = _check_maps(maps, "image_scores").reshape(len(maps), -1)
    if method == "max":
        return flat.max(axis=1)
    if method == "mean":
        return flat.mean(axis=1, dtype=np.float32)
    k = max(1, math.ceil(flat.shape[1] * topk_percent / 100.0))
    top = np.partition(flat, flat.shape[1] - k, axis=1)[:, flat.shape[1] - k:]
    return top.mean(axis=1, dtype=np.float32)


def resize_maps(maps: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize anomaly maps with bilinear interpolation (cv2.INTER_LINEAR).

    Args:
        maps: (N, H, W) maps.
        size: output side in pixels, or (height, width).

    Returns:
        (N, size, size) or (N, height, width) float32.

    Example:
        >>> import numpy as np
        >>> resize_maps(np.ones((2, 8, 8)), 16).shape
        (2, 16, 16)
    """
    import cv2

    height, width = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
    if any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1
           for s in (height, width)):
        raise ParameterError(f"size must be a positive int or (height, width), got {size!r}",
                             fix="pass e.g. 256")
    maps = _check_maps(maps, "resize_maps")
    out = np.empty((len(maps), height, width), dtype=np.float32)
    for i, m in enumerate(maps):
        out[i] = cv2.resize(m, (int(width), int(height)), interpolation=cv2.INTER_LINEAR)
    return out
