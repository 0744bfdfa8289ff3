"""Scoring: per-pixel anomaly maps from reconstructions, and image scores from maps.

How an image is scored:

1. Reconstruct it with the autoencoder, whole (:func:`reconstruct`) or as overlapping patches
   averaged back together (:func:`sliding_window_reconstruct`).
2. Compare input and reconstruction per pixel (:func:`anomaly_map`): ``1 - SSIM``
   (:func:`ssim_map`), squared or absolute error, gradient or low-pass colour error, or a
   weighted blend such as ``"0.5*ssim+0.5*gms+1*lowpass"``, optionally smoothed.
3. Reduce each map to one number (:func:`image_scores`): max, mean, or mean of the top-k %.

:func:`ssim_map` is also the training loss of the SSIM autoencoders, so it accepts TensorFlow
tensors and stays differentiable. It is the SSIM of Wang et al. (2004) as computed by
``skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, full=True)``: an 11-tap Gaussian window with scipy's 'reflect'
border, so the map is defined at every pixel including the borders.

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

import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .errors import ParameterError

_K1, _K2 = 0.01, 0.03
# The moment stack of one numpy chunk holds 5 * chunk * H * W * C float32 values; this keeps
# the peak memory of ssim_map on numpy input to a few hundred MB whatever N is.
_NUMPY_CHUNK_VALUES = 8_000_000
_MAP_KINDS = ("ssim", "l1", "l2", "gms", "lowpass")
# Blur of the "lowpass" component, pixels at model resolution, chosen on the carpet's
# validation sets among 1, 2, 4 and 8 (benchmarks/scoring_probes.py; docs/experiments.md,
# session 6).
LOWPASS_SIGMA = 2.0
# Gradient magnitude similarity (Xue et al. 2014) as RIAD uses it: its stability constant for
# images in [0, 1], and the scales (downsampling factors) of the multi-scale map.
GMS_C = 0.0026
GMS_SCALES = (1, 2, 4, 8)
# Prewitt's horizontal-gradient kernel, scaled to give 1 per pixel of a unit ramp (transpose:
# vertical); the map and AE-2's GMS loss share it.
PREWITT = np.array([[1, 0, -1], [1, 0, -1], [1, 0, -1]], np.float32) / 3.0
_SCORE_METHODS = ("max", "mean", "topk")


# --------------------------------------------------------------------------------------------
# SSIM
# --------------------------------------------------------------------------------------------


def _gaussian_kernel(sigma: float, radius: int) -> np.ndarray:
    """Normalised 1-D Gaussian taps, float64, shape (2 * radius + 1,), as scipy.ndimage builds."""
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    taps = np.exp(-0.5 * (offsets / sigma) ** 2)
    return taps / taps.sum()


def _reflect(idx: Any, n: Any, xp: Any) -> Any:
    """Fold indices into [0, n) as scipy's 'reflect' border does (d c b a | a b c d | d c b a).

    The symmetric extension is 2n-periodic, so a modulo folds any offset, even for n <= radius.
    ``xp`` is numpy or tensorflow.
    """
    idx = idx % (2 * n)
    return xp.where(idx < n, idx, 2 * n - 1 - idx)


@functools.lru_cache(maxsize=64)
def _blur_matrix(n: int, sigma: float, radius: int) -> np.ndarray:
    """(n, n) float32 matrix M with ``M @ v`` = 1-D Gaussian blur of v with 'reflect' borders."""
    taps = _gaussian_kernel(sigma, radius)
    matrix = np.zeros((n, n), dtype=np.float64)
    source = _reflect(np.arange(n)[:, None] + np.arange(-radius, radius + 1)[None, :], n, np)
    np.add.at(matrix, (np.repeat(np.arange(n), taps.size), source.ravel()), np.tile(taps, n))
    matrix = matrix.astype(np.float32)
    matrix.setflags(write=False)
    return matrix


def _blur_matrix_tf(n: Any, sigma: float, radius: int) -> Any:
    """Like :func:`_blur_matrix` for a size known only when the graph runs (dynamic H or W)."""
    import tensorflow as tf

    src = _reflect(tf.range(n)[:, None] + tf.range(-radius, radius + 1)[None, :], n, tf)
    taps = tf.constant(_gaussian_kernel(sigma, radius), tf.float32)
    return tf.einsum("itj,t->ij", tf.one_hot(src, n, dtype=tf.float32), taps)


def _tf32_in_effect() -> bool:
    """True where float32 matmuls may run as TF32 (10-bit mantissa): a GPU with TF32 enabled."""
    import tensorflow as tf

    return bool(tf.config.experimental.tensor_float_32_execution_enabled()
                and tf.config.list_physical_devices("GPU"))


def _split_tf32(t: Any) -> tuple[Any, Any]:
    """Split float32 ``t`` into hi + lo where hi is exactly representable in TF32."""
    import tensorflow as tf

    hi = tf.bitcast(tf.bitwise.bitwise_and(tf.bitcast(t, tf.int32), tf.constant(-8192, tf.int32)),
                    tf.float32)
    return hi, t - hi


def _matmul(a: Any, b: Any, precise: bool, transpose_b: bool = False) -> Any:
    """float32 matmul; with ``precise``, three TF32 products that together keep ~fp32 accuracy.

    TF32 rounds operands to 10 bits; emulated on a CPU, that moved SSIM by up to 5e-2 from
    skimage on textured images (the variance is a small difference of large moments), while
    hi*hi + hi*lo + lo*hi stayed at 3e-5 (float32: 2e-5).
    """
    import tensorflow as tf

    if not precise:
        return tf.linalg.matmul(a, b, transpose_b=transpose_b)
    a_hi, a_lo = _split_tf32(a)
    b_hi, b_lo = _split_tf32(b)
    return (tf.linalg.matmul(a_hi, b_hi, transpose_b=transpose_b)
            + tf.linalg.matmul(a_hi, b_lo, transpose_b=transpose_b)
            + tf.linalg.matmul(a_lo, b_hi, transpose_b=transpose_b))


def _ssim_tf(x: Any, y: Any, max_val: float, sigma: float, radius: int) -> Any:
    """SSIM map of float32 tensors (N, H, W, C) -> (N, H, W); traceable and differentiable."""
    import tensorflow as tf

    height, width = x.shape[1], x.shape[2]
    if height is not None and width is not None:
        m_h = tf.constant(_blur_matrix(height, sigma, radius))
        m_w = tf.constant(_blur_matrix(width, sigma, radius))
    else:
        m_h = _blur_matrix_tf(tf.shape(x)[1], sigma, radius)
        m_w = _blur_matrix_tf(tf.shape(x)[2], sigma, radius)
    precise = _tf32_in_effect()

    # (N, C, H, W): each channel plane is blurred as M_h @ plane @ M_w^T; all five moments in
    # one stacked batch so each pass is a single batched matmul.
    x = tf.transpose(x, [0, 3, 1, 2])
    y = tf.transpose(y, [0, 3, 1, 2])
    # (Co)variances are E[ab] - E[a]E[b], a float32 cancellation whose error grows with the
    # squared values: uncentred, a flat 0.8 area was off by 3e-4; centred on the plane mean,
    # by 2e-7. The shift cancels exactly in the variances and is added back to the means.
    centre = tf.stop_gradient(tf.reduce_mean(x + y, axis=[2, 3], keepdims=True) * 0.5)
    x = x - centre
    y = y - centre
    moments = tf.stack([x, y, x * x, y * y, x * y], axis=0)
    moments = _matmul(m_h, moments, precise)
    moments = _matmul(moments, m_w, precise, transpose_b=True)
    mu_x, mu_y, e_xx, e_yy, e_xy = tf.unstack(moments, axis=0)

    var_x = e_xx - mu_x * mu_x
    var_y = e_yy - mu_y * mu_y
    cov_xy = e_xy - mu_x * mu_y
    mu_x = mu_x + centre
    mu_y = mu_y + centre
    c1 = (_K1 * max_val) ** 2
    c2 = (_K2 * max_val) ** 2
    numerator = (2.0 * mu_x * mu_y + c1) * (2.0 * cov_xy + c2)
    denominator = (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    return tf.reduce_mean(numerator / denominator, axis=1)


def _check_ssim_params(max_val: float, sigma: float, win_size: int) -> int:
    """Validate SSIM parameters; return the kernel radius."""
    if not (isinstance(max_val, (int, float)) and math.isfinite(max_val) and max_val > 0):
        raise ParameterError(f"max_val must be a positive number, got {max_val!r}",
                             fix="pass the data range of the images, 1.0 for [0, 1] floats")
    if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
        raise ParameterError(f"sigma must be a positive number of pixels, got {sigma!r}",
                             fix="use the standard sigma=1.5")
    if isinstance(win_size, bool) or not isinstance(win_size, (int, np.integer)) \
            or win_size < 3 or win_size % 2 == 0:
        raise ParameterError(f"win_size must be an odd integer >= 3, got {win_size!r}",
                             fix="use the standard win_size=11")
    return int(win_size) // 2


def _check_pair(x_shape: Sequence[int | None], y_shape: Sequence[int | None], what: str) -> None:
    """Both shapes (N, H, W, C) with non-empty H, W, C, equal where known (None = dynamic)."""
    if len(x_shape) != 4 or 0 in x_shape[1:]:
        raise ParameterError(f"{what} needs image batches shaped (N, H, W, C) with H, W, C >= 1; "
                             f"got shape {tuple(x_shape)}",
                             fix="add batch/channel axes, e.g. x[None, ..., None]")
    if len(x_shape) != len(y_shape) or any(a is not None and b is not None and a != b
                                           for a, b in zip(x_shape, y_shape, strict=True)):
        raise ParameterError(f"{what} needs two batches of the same shape; got {tuple(x_shape)} "
                             f"and {tuple(y_shape)}", fix="compare each image with its own "
                             "reconstruction at the same resolution")


def ssim_map(x: Any, y: Any, max_val: float = 1.0, sigma: float = 1.5, win_size: int = 11) -> Any:
    """Per-pixel SSIM between two image batches, averaged over channels.

    Args:
        x, y: batches shaped (N, H, W, C), values in [0, max_val]; numpy arrays or TensorFlow
            tensors (any float dtype; computed in float32). Any H, W >= 1.
        max_val: data range (L in Wang et al.); C1 = (0.01 L)^2, C2 = (0.03 L)^2.
        sigma: standard deviation of the Gaussian window, in pixels.
        win_size: window width in pixels (odd); the kernel radius is ``win_size // 2``. The
            defaults give skimage's 11-tap window; for another sigma, skimage's window is
            ``2 * int(3.5 * sigma + 0.5) + 1``.

    Returns:
        (N, H, W) SSIM in [-1, 1] (1 = identical): float32 numpy for numpy input, a float32
        tf tensor for tensor input (differentiable; works in tf.function, XLA and Keras losses).

    Equals ``skimage.metrics.structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=max_val, channel_axis=-1, full=True)[1].mean(-1)``
    within 1e-4 at every pixel, borders included: ~1e-6 on natural textures, up to 6e-5 on
    binary images with large flat areas (float32 rounding of the blurred squares).
    ``tf.image.ssim`` (same window, VALID padding) equals the mean of this map over the
    interior ``[:, r:H-r, r:W-r]``, r = win_size // 2, and then over channels.

    The Gaussian blur is separable, and with the border reflection folded in it is a banded
    (H, H) matrix on the left and a (W, W) matrix on the right of each channel plane: two
    batched matmuls over the five stacked moments. On a 2-core CPU that is about as fast as
    ``tf.image.ssim`` (benchmarks/bench_ssim.py) and, unlike depthwise convolutions, stays fast
    under XLA. On a GPU with TF32 enabled each matmul is split into three TF32 products to
    keep float32 accuracy. Non-finite inputs give non-finite SSIM around them.

    Example:
        >>> import numpy as np
        >>> x = np.random.default_rng(0).random((1, 16, 16, 3), dtype=np.float32)
        >>> round(float(ssim_map(x, x).min()), 5)
        1.0
    """
    radius = _check_ssim_params(max_val, sigma, win_size)
    import tensorflow as tf

    if tf.is_tensor(x) or tf.is_tensor(y):
        x = tf.cast(x, tf.float32)
        y = tf.cast(y, tf.float32)
        _check_pair(x.shape.as_list() if x.shape.rank is not None else [None],
                    y.shape.as_list() if y.shape.rank is not None else [None], "ssim_map")
        return _ssim_tf(x, y, float(max_val), float(sigma), radius)

    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=np.float32)
    _check_pair(x.shape, y.shape, "ssim_map")
    n, height, width, channels = x.shape
    compiled = _compiled_ssim(float(max_val), float(sigma), radius, height, width, channels)
    chunk = max(1, _NUMPY_CHUNK_VALUES // max(1, 5 * height * width * channels))
    out = np.empty((n, height, width), dtype=np.float32)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        out[start:stop] = compiled(tf.constant(x[start:stop]), tf.constant(y[start:stop])).numpy()
    return out


@functools.lru_cache(maxsize=16)
def _compiled_ssim(max_val: float, sigma: float, radius: int, height: int, width: int,
                   channels: int) -> Any:
    """A tf.function of :func:`_ssim_tf` for one image size, traced once for any batch size."""
    import tensorflow as tf

    spec = tf.TensorSpec((None, height, width, channels), tf.float32)
    return tf.function(lambda x, y: _ssim_tf(x, y, max_val, sigma, radius),
                       input_signature=(spec, spec))


# --------------------------------------------------------------------------------------------
# Anomaly maps and image scores (numpy in, numpy out)
# --------------------------------------------------------------------------------------------


def _as_pair(x: Any, recon: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float32)
    recon = np.asarray(recon, dtype=np.float32)
    _check_pair(x.shape, recon.shape, what)
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
    """Per-pixel absolute error, mean over channels.

    Args:
        x, y: (N, H, W, C) images in [0, 1].

    Returns:
        (N, H, W) float32 in [0, 1].

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


def _split_term(term: str, kind: str) -> tuple[float | None, str]:
    """``"0.5*ssim"`` -> (0.5, "ssim"); ``"ssim"`` -> (None, "ssim")."""
    weight, star, name = term.strip().rpartition("*")
    if not star:
        return None, name
    try:
        return float(weight), name.strip()
    except ValueError:
        raise ParameterError(f"anomaly map kind {kind!r}: weight {weight.strip()!r} of "
                             f"{name.strip()!r} is not a number",
                             fix="write weighted terms as e.g. '0.5*ssim+0.5*gms'") from None


def map_components(kind: str, weights: Mapping[str, float] | Sequence[float] | None = None,
                   ) -> dict[str, float]:
    """The {component: weight} that ``kind`` and ``weights`` describe (see :func:`anomaly_map`).

    Raises:
        ParameterError: an unknown or repeated component, weights both inline and passed,
            some terms weighted and others not, or a weight that is negative or not finite.

    Example:
        >>> map_components("ssim+gms"), map_components("0.5*ssim + 1*lowpass")
        ({'ssim': 0.5, 'gms': 0.5}, {'ssim': 0.5, 'lowpass': 1.0})
    """
    terms = ([_split_term(t, kind) for t in kind.split("+")] if isinstance(kind, str) else [])
    parts = [name for _, name in terms]
    if not parts or any(p not in _MAP_KINDS for p in parts) or len(set(parts)) != len(parts):
        raise ParameterError(
            f"anomaly map kind {kind!r} is not known",
            fix=f"use one of {', '.join(_MAP_KINDS)} or a '+' blend of distinct ones, e.g. "
                "'ssim+l1' (equal weights) or '0.5*ssim+1*lowpass'")
    inline = [w for w, _ in terms if w is not None]
    if inline and (len(inline) != len(terms) or weights is not None):
        problem = ("weights only some of its terms" if weights is None
                   else "has inline weights, and weights were passed as well")
        raise ParameterError(f"anomaly map kind {kind!r} {problem}",
                             fix="weight every term inline (e.g. '0.5*ssim+0.5*gms') or none")
    if inline:
        values = inline
    elif weights is None:
        values = [1.0 / len(parts)] * len(parts)
    elif isinstance(weights, Mapping):
        if set(weights) != set(parts):
            raise ParameterError(
                f"weights {dict(weights)!r} must have exactly the components of kind {kind!r}",
                fix=f"pass e.g. {dict.fromkeys(parts, round(1 / len(parts), 3))}")
        values = [weights[p] for p in parts]
    else:
        values = list(weights)
        if len(values) != len(parts):
            raise ParameterError(
                f"kind {kind!r} has {len(parts)} component(s) but {len(values)} weight(s) were "
                "given", fix="pass one weight per component, in the order of kind")
    if any(not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0) for v in values) \
            or sum(values) <= 0:
        raise ParameterError(f"map weights must be finite, >= 0 and not all 0; got {values!r} "
                             f"(kind {kind!r})",
                             fix="pass e.g. '0.5*ssim+0.5*l1' or weights={'ssim': 0.5, 'l1': 0.5}")
    return dict(zip(parts, (float(v) for v in values), strict=True))


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


# --------------------------------------------------------------------------------------------
# Reconstruction
# --------------------------------------------------------------------------------------------


def _check_images(images: Any, what: str) -> np.ndarray:
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4 or 0 in images.shape:
        raise ParameterError(f"{what} needs a non-empty batch shaped (N, H, W, C); got shape "
                             f"{images.shape}",
                             fix="add batch/channel axes, e.g. x[None, ..., None]")
    return images


def _check_positive_int(value: Any, name: str, fix: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ParameterError(f"{name} must be an integer >= 1, got {value!r}", fix=fix)
    return int(value)


def _predict(model: Any, batch: np.ndarray) -> np.ndarray:
    """One forward pass in inference mode, as float32 numpy.

    A Keras model goes through ``predict_on_batch`` (a compiled tf.function, measured ~1.3x
    faster than an eager ``model(x, training=False)`` on AE-2 patches); other callables are
    called with ``training=False``.
    """
    import keras

    if isinstance(model, keras.Model):
        out = model.predict_on_batch(batch)
    else:
        out = model(batch, training=False)
    return np.asarray(out, dtype=np.float32)


def reconstruct(model: Any, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Reconstruct whole images with a Keras model, ``batch_size`` images per forward pass.

    Keras models run through ``predict_on_batch`` (inference mode, compiled), not
    ``model.predict`` per image.

    Args:
        model: a Keras model (or callable taking ``training=False``) mapping (B, H, W, C) to
            images of the same spatial size.
        images: (N, H, W, C) float images in [0, 1].
        batch_size: images per forward pass.

    Returns:
        (N, H, W, C_out) float32 reconstructions.

    Example:
        >>> import keras, numpy as np
        >>> identity = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Identity()])
        >>> reconstruct(identity, np.zeros((3, 8, 8, 1))).shape
        (3, 8, 8, 1)
    """
    batch_size = _check_positive_int(batch_size, "batch_size", "pass e.g. 32")
    images = _check_images(images, "reconstruct")
    parts = [_predict(model, images[i:i + batch_size]) for i in range(0, len(images), batch_size)]
    return np.concatenate(parts, axis=0)


def _window_starts(size: int, patch_size: int, stride: int) -> list[int]:
    """Top-left offsets along one axis; the last window is shifted to touch the far border."""
    starts = list(range(0, size - patch_size + 1, stride))
    if starts[-1] != size - patch_size:
        starts.append(size - patch_size)
    return starts


def _check_window(images: Any, patch_size: Any, stride: Any, batch_size: Any,
                  what: str) -> tuple[np.ndarray, int, int, int]:
    images = _check_images(images, what)
    patch_size = _check_positive_int(patch_size, "patch_size", "pass the model's input size")
    stride = _check_positive_int(stride, "stride", "pass e.g. patch_size // 4")
    batch_size = _check_positive_int(batch_size, "batch_size", "pass e.g. 64")
    if stride > patch_size:
        raise ParameterError(f"stride {stride} is larger than patch_size {patch_size}, which "
                             "leaves pixels no window covers", fix="use stride <= patch_size")
    height, width = images.shape[1:3]
    if patch_size > min(height, width):
        raise ParameterError(f"patch_size {patch_size} is larger than the images ({height}x"
                             f"{width})", fix="use a patch_size <= the image height and width")
    return images, patch_size, stride, batch_size


def _assemble(outputs: np.ndarray, n_images: int, height: int, width: int,
              windows: list[tuple[int, int]], patch_size: int) -> np.ndarray:
    """Average (n_images * len(windows), p, p, C) patch outputs back into full images."""
    per_image = outputs.reshape(n_images, len(windows), patch_size, patch_size, -1)
    total = np.zeros((n_images, height, width, per_image.shape[-1]), dtype=np.float64)
    count = np.zeros((height, width, 1), dtype=np.float64)
    for k, (top, left) in enumerate(windows):
        total[:, top:top + patch_size, left:left + patch_size] += per_image[:, k]
        count[top:top + patch_size, left:left + patch_size] += 1.0
    return (total / count).astype(np.float32)


def _check_patch_output(out: np.ndarray, n: int, patch_size: int) -> None:
    if out.ndim != 4 or out.shape[:3] != (n, patch_size, patch_size):
        raise ParameterError(
            f"the model maps {patch_size}x{patch_size} patches to shape {out.shape[1:]}, not to "
            "patches of the same size", fix="use an autoencoder whose output size equals its "
            "input size, with patch_size equal to its input size")


def sliding_window_reconstruct(model: Any, images: np.ndarray, patch_size: int, stride: int,
                               batch_size: int = 64) -> np.ndarray:
    """Reconstruct large images from overlapping square patches, batched across images.

    Windows lie on a grid of ``stride`` pixels; the last row and column of windows is shifted
    to touch the border, so every pixel is covered. All windows of all images go through the
    model ``batch_size`` patches at a time, and overlapping reconstructions are averaged per
    pixel (each pixel divided by the number of windows covering it).

    Args:
        model: a Keras model (or callable taking ``training=False``) mapping
            (B, patch_size, patch_size, C) to patches of the same spatial size.
        images: (N, H, W, C) float images in [0, 1], with patch_size <= H, W.
        patch_size: window side in pixels.
        stride: grid step in pixels, in [1, patch_size].
        batch_size: patches per forward pass.

    Returns:
        (N, H, W, C_out) float32 reconstructions.

    Example:
        >>> import keras, numpy as np
        >>> identity = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Identity()])
        >>> x = np.random.default_rng(0).random((2, 20, 20, 1), dtype=np.float32)
        >>> bool(np.allclose(sliding_window_reconstruct(identity, x, 8, 5), x))
        True
    """
    images, patch_size, stride, batch_size = _check_window(
        images, patch_size, stride, batch_size, "sliding_window_reconstruct")
    n, height, width = images.shape[:3]
    windows = [(top, left) for top in _window_starts(height, patch_size, stride)
               for left in _window_starts(width, patch_size, stride)]
    # Patches are cut per batch rather than all at once, so memory stays at one batch of
    # patches plus the outputs whatever the number of images.
    jobs = [(i, top, left) for i in range(n) for top, left in windows]
    outputs = []
    for start in range(0, len(jobs), batch_size):
        batch = np.stack([images[i, top:top + patch_size, left:left + patch_size]
                          for i, top, left in jobs[start:start + batch_size]])
        out = _predict(model, batch)
        _check_patch_output(out, len(batch), patch_size)
        outputs.append(out)
    return _assemble(np.concatenate(outputs), n, height, width, windows, patch_size)


GRID_SETS = 3  # disjoint mask sets per grid: each pass hides a third of the cells


def grid_cells(patch_size: int) -> tuple[int, ...]:
    """Cell sides of the inpainting grid masks for a patch size: patch/16, /8 and /4, pixels.

    Example:
        >>> grid_cells(64)
        (4, 8, 16)
    """
    return tuple(sorted({max(1, patch_size // k) for k in (16, 8, 4)}))


def grid_mask_sets(height: int, width: int, cell: int, sets: int = GRID_SETS,
                   seed: int = 0) -> np.ndarray:
    """Disjoint masks that together cover an image: (sets, H, W) float32 of 0 and 1.

    The image is cut into ``cell`` x ``cell`` squares and every square is given to one of
    ``sets`` masks at random (seeded by ``seed`` and ``cell``), so each mask hides about
    1 / ``sets`` of the image in a scattered pattern and every pixel is hidden exactly once.

    Example:
        >>> m = grid_mask_sets(8, 8, 2, sets=3)
        >>> m.shape, bool((m.sum(axis=0) == 1).all())
        ((3, 8, 8), True)
    """
    cell = _check_positive_int(cell, "cell", "pass a cell side in pixels, e.g. 8")
    sets = _check_positive_int(sets, "sets", "pass e.g. 3")
    owner = np.random.default_rng([seed, cell]).integers(0, sets, (-(-height // cell),
                                                                   -(-width // cell)))
    owner = np.repeat(np.repeat(owner, cell, axis=0), cell, axis=1)[:height, :width]
    return np.stack([(owner == j) for j in range(sets)]).astype(np.float32)


def inpaint_reconstruct(model: Any, images: np.ndarray, cell: int, sets: int = GRID_SETS,
                        seed: int = 0, batch_size: int = 32) -> np.ndarray:
    """Reconstruct every pixel from its surroundings only, for an inpainting model.

    For each of the :func:`grid_mask_sets` masks the model sees the images with that mask's
    cells zeroed, and its output is kept inside those cells only. Every pixel is thus
    predicted from an input in which it was hidden, so a defect cannot be copied through.
    Costs ``sets`` whole-image forward passes.

    Args:
        model: a fully convolutional Keras model trained with
            ``patch_dataset(..., corrupt_mode="grid")``, e.g. ``build_ae2(bottleneck="unet")``.
        images: (N, H, W, C) float images in [0, 1].
        cell: grid cell side, pixels.
        sets, seed: see :func:`grid_mask_sets`.
        batch_size: images per forward pass.

    Returns:
        (N, H, W, C) float32 reconstructions.

    Example:
        >>> import keras, numpy as np
        >>> mean = keras.Sequential([keras.Input((None, None, 1)),
        ...                          keras.layers.AveragePooling2D(3, 1, "same")])
        >>> inpaint_reconstruct(mean, np.ones((2, 12, 12, 1)), cell=4).shape
        (2, 12, 12, 1)
    """
    images = _check_images(images, "inpaint_reconstruct")
    fixed = tuple(getattr(model, "input_shape", (None, None, None))[1:3])
    if any(side not in (None, size) for side, size in zip(fixed, images.shape[1:3], strict=True)):
        raise ParameterError(
            f"inpaint_reconstruct runs the model on whole {images.shape[1]}x{images.shape[2]} "
            f"images, but it only takes {fixed[0]}x{fixed[1]} inputs",
            fix="use a fully convolutional model such as build_ae2(bottleneck='unet'), or "
                "score a patch model without inpaint_cells")
    masks = grid_mask_sets(images.shape[1], images.shape[2], cell, sets, seed)[..., None]
    out = np.zeros(images.shape, np.float32)
    for mask in masks:
        out += reconstruct(model, images * (1.0 - mask), batch_size) * mask
    return out


def naive_sliding_window_reconstruct(model: Any, images: np.ndarray, patch_size: int,
                                     stride: int, batch_size: int = 64) -> np.ndarray:
    """Reference for :func:`sliding_window_reconstruct`: ``model.predict`` on one patch at a time.

    Same windows and averaging, but one ``model.predict`` call per patch, which is how the
    original notebooks did it. Only for benchmarks/bench_inference.py and tests; it is orders
    of magnitude slower. ``batch_size`` is accepted for the same signature and ignored.
    """
    images, patch_size, stride, _ = _check_window(
        images, patch_size, stride, batch_size, "naive_sliding_window_reconstruct")
    n, height, width = images.shape[:3]
    windows = [(top, left) for top in _window_starts(height, patch_size, stride)
               for left in _window_starts(width, patch_size, stride)]
    outputs = []
    for i in range(n):
        for top, left in windows:
            patch = images[i:i + 1, top:top + patch_size, left:left + patch_size]
            out = np.asarray(model.predict(patch, verbose=0), dtype=np.float32)
            _check_patch_output(out, 1, patch_size)
            outputs.append(out)
    return _assemble(np.concatenate(outputs), n, height, width, windows, patch_size)
