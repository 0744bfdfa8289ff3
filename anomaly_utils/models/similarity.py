"""Image similarity measures that AE-2 trains on and its anomaly maps read: SSIM and the
gradient-magnitude constants of GMS.

:func:`ssim_map` is the SSIM of Wang et al. (2004) as computed by
``skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, full=True)``: an 11-tap Gaussian window with scipy's 'reflect'
border, so the map is defined at every pixel including the borders. It accepts numpy arrays
and TensorFlow tensors, and stays differentiable for the training losses.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from anomaly_utils.errors import ParameterError

_K1, _K2 = 0.01, 0.03

# The moment stack of one numpy chunk holds 5 * chunk * H * W * C float32 values; this keeps
# the peak memory of ssim_map on numpy input to a few hundred MB whatever N is.
_NUMPY_CHUNK_VALUES = 8_000_000

# Gradient magnitude similarity (Xue et al. 2014) as RIAD uses it: its stability constant for
# images in [0, 1], and the scales (downsampling factors) of the multi-scale map.
GMS_C = 0.0026
GMS_SCALES = (1, 2, 4, 8)

# Prewitt's horizontal-gradient kernel, scaled to give 1 per pixel of a unit ramp (transpose:
# vertical); the map and AE-2's GMS loss share it.
PREWITT = np.array([[1, 0, -1], [1, 0, -1], [1, 0, -1]], np.float32) / 3.0


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


def check_image_pair(x_shape: Sequence[int | None], y_shape: Sequence[int | None], what: str) -> None:
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
        check_image_pair(x.shape.as_list() if x.shape.rank is not None else [None],
                    y.shape.as_list() if y.shape.rank is not None else [None], "ssim_map")
        return _ssim_tf(x, y, float(max_val), float(sigma), radius)

    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=np.float32)
    check_image_pair(x.shape, y.shape, "ssim_map")
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
