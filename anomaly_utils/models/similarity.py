"""Image similarity measures that AE-2 trains on and its anomaly maps read: SSIM and the
gradient-magnitude constants of GMS.

:func:`ssim_map` is the SSIM of Wang et al. (2004) as computed by
``skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, full=True)``: an 11-tap Gaussian window with scipy's 'reflect'
border, so the map is defined at every pixel including the borders. It accepts numpy arrays
and tensors of the Keras backend (TensorFlow, JAX or PyTorch), is written in ``keras.ops``,
and stays differentiable for the training losses. TensorFlow is imported only when it is the
backend.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import keras
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
    ``xp`` is numpy or ``keras.ops``.
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


def _blur_matrix_dynamic(n: Any, sigma: float, radius: int) -> Any:
    """Like :func:`_blur_matrix` for a size known only when the graph runs (a scalar tensor:
    TensorFlow's dynamic H or W; JAX and PyTorch always know the size)."""
    offsets = keras.ops.arange(-radius, radius + 1, dtype="int32")
    src = _reflect(keras.ops.arange(n, dtype="int32")[:, None] + offsets[None, :], n, keras.ops)
    taps = keras.ops.convert_to_tensor(_gaussian_kernel(sigma, radius).astype(np.float32))
    return keras.ops.einsum("itj,t->ij", keras.ops.one_hot(src, n, dtype="float32"), taps)


def _float32_matmul_rounds() -> bool:
    """True where the backend may round float32 matmul operands (the precision guard's test).

    TensorFlow and PyTorch: a GPU with TF32 (10-bit mantissa) enabled for float32 matmuls. JAX:
    any accelerator, since its default matmul precision there is TF32 on a GPU and bfloat16 on
    a TPU; on a CPU every backend multiplies in full float32.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.experimental.tensor_float_32_execution_enabled()
                    and tf.config.list_physical_devices("GPU"))
    if backend == "jax":
        import jax

        return jax.default_backend() != "cpu"
    if backend == "torch":
        import torch

        return bool(torch.cuda.is_available()
                    and (torch.backends.cuda.matmul.allow_tf32
                         or torch.get_float32_matmul_precision() != "highest"))
    return False


def _split_tf32(t: Any) -> tuple[Any, Any]:
    """Split float32 ``t`` into hi + lo, hi exactly representable in TF32 (11 significant bits,
    the low 13 mantissa bits zero) and lo = t - hi exact.

    Veltkamp's split, in plain float32 arithmetic, so it works on every backend and in graphs
    of unknown shape: with c = (2^13 + 1) t, hi = c - (c - t) is t rounded to 24 - 13 bits.
    Exact while |t| < 4e34 (c overflows beyond), far above any image moment.
    """
    c = t * 8193.0
    hi = c - (c - t)
    return hi, t - hi


def _matmul(a: Any, b: Any, precise: bool) -> Any:
    """float32 ``a @ b`` (broadcast over leading axes); with ``precise``, full float32 accuracy
    on hardware that would round the operands.

    JAX asks for its highest matmul precision. TensorFlow and PyTorch, which set TF32 for the
    whole process only, split each operand as hi + lo and add three products,
    hi*hi + hi*lo + lo*hi, each exact in TF32. TF32 rounds operands to 10 bits; emulated on a
    CPU, that moved SSIM by up to 5e-2 from skimage on textured images (the variance is a small
    difference of large moments), while the three products stayed at 3e-5 (float32: 2e-5).
    """
    if not precise:
        return keras.ops.matmul(a, b)
    if keras.backend.backend() == "jax":
        import jax

        with jax.default_matmul_precision("highest"):
            return keras.ops.matmul(a, b)
    a_hi, a_lo = _split_tf32(a)
    b_hi, b_lo = _split_tf32(b)
    return (keras.ops.matmul(a_hi, b_hi) + keras.ops.matmul(a_hi, b_lo)
            + keras.ops.matmul(a_lo, b_hi))


def _ssim_ops(x: Any, y: Any, max_val: float, sigma: float, radius: int,
              precise: bool | None = None) -> Any:
    """SSIM map of float32 tensors (N, H, W, C) -> (N, H, W) in ``keras.ops``: traceable
    (tf.function, XLA, jax.jit) and differentiable on every backend.

    ``precise`` (default: :func:`_float32_matmul_rounds`) turns on the precision guard of
    :func:`_matmul`.
    """
    height, width = x.shape[1], x.shape[2]
    if height is not None and width is not None:
        m_h = keras.ops.convert_to_tensor(_blur_matrix(height, sigma, radius))
        m_w_t = keras.ops.convert_to_tensor(_blur_matrix(width, sigma, radius).T)
    else:
        m_h = _blur_matrix_dynamic(keras.ops.shape(x)[1], sigma, radius)
        m_w_t = keras.ops.transpose(_blur_matrix_dynamic(keras.ops.shape(x)[2], sigma, radius))
    if precise is None:
        precise = _float32_matmul_rounds()

    # (N, C, H, W): each channel plane is blurred as M_h @ plane @ M_w^T; all five moments in
    # one stacked batch so each pass is a single batched matmul.
    x = keras.ops.transpose(x, (0, 3, 1, 2))
    y = keras.ops.transpose(y, (0, 3, 1, 2))
    # (Co)variances are E[ab] - E[a]E[b], a float32 cancellation whose error grows with the
    # squared values: uncentred, a flat 0.8 area was off by 3e-4; centred on the plane mean,
    # by 2e-7. The shift cancels exactly in the variances and is added back to the means.
    centre = keras.ops.stop_gradient(keras.ops.mean(x + y, axis=(2, 3), keepdims=True) * 0.5)
    x = x - centre
    y = y - centre
    moments = keras.ops.stack([x, y, x * x, y * y, x * y], axis=0)
    moments = _matmul(m_h, moments, precise)
    moments = _matmul(moments, m_w_t, precise)
    mu_x, mu_y, e_xx, e_yy, e_xy = (moments[i] for i in range(5))

    var_x = e_xx - mu_x * mu_x
    var_y = e_yy - mu_y * mu_y
    cov_xy = e_xy - mu_x * mu_y
    mu_x = mu_x + centre
    mu_y = mu_y + centre
    c1 = (_K1 * max_val) ** 2
    c2 = (_K2 * max_val) ** 2
    numerator = (2.0 * mu_x * mu_y + c1) * (2.0 * cov_xy + c2)
    denominator = (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    return keras.ops.mean(numerator / denominator, axis=1)


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


def _static_shape(t: Any) -> tuple[int | None, ...]:
    """The shape of a backend tensor as far as it is known (None: a dynamic size or rank)."""
    try:
        return tuple(t.shape)
    except (TypeError, ValueError):  # a TensorFlow tensor of unknown rank
        return (None,)


def ssim_map(x: Any, y: Any, max_val: float = 1.0, sigma: float = 1.5, win_size: int = 11) -> Any:
    """Per-pixel SSIM between two image batches, averaged over channels.

    Args:
        x, y: batches shaped (N, H, W, C), values in [0, max_val]; numpy arrays or tensors of
            the Keras backend (any float dtype; computed in float32). Any H, W >= 1.
        max_val: data range (L in Wang et al.); C1 = (0.01 L)^2, C2 = (0.03 L)^2.
        sigma: standard deviation of the Gaussian window, in pixels.
        win_size: window width in pixels (odd); the kernel radius is ``win_size // 2``. The
            defaults give skimage's 11-tap window; for another sigma, skimage's window is
            ``2 * int(3.5 * sigma + 0.5) + 1``.

    Returns:
        (N, H, W) SSIM in [-1, 1] (1 = identical): float32 numpy for numpy input, a float32
        backend tensor for tensor input (differentiable; works in tf.function, XLA, jax.jit
        and Keras losses).

    Equals ``skimage.metrics.structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=max_val, channel_axis=-1, full=True)[1].mean(-1)``
    at every pixel, borders included: ~1e-6 on natural textures, 6e-5 to 1.2e-4 (by the
    CPU's kernels) on binary images with large flat areas (float32 rounding of the blurred
    squares, divided by C2).
    ``tf.image.ssim`` (same window, VALID padding) equals the mean of this map over the
    interior ``[:, r:H-r, r:W-r]``, r = win_size // 2, and then over channels.

    The Gaussian blur is separable, and with the border reflection folded in it is a banded
    (H, H) matrix on the left and a (W, W) matrix on the right of each channel plane: two
    batched matmuls over the five stacked moments. On a 2-core CPU that is about as fast as
    ``tf.image.ssim`` (benchmarks/bench_ssim.py) and, unlike depthwise convolutions, stays fast
    under XLA. Where the backend may round float32 matmuls (TF32 on a GPU, bfloat16 on a TPU)
    the matmuls keep float32 accuracy (:func:`_matmul`). Non-finite inputs give non-finite SSIM
    around them.

    Example:
        >>> import numpy as np
        >>> x = np.random.default_rng(0).random((1, 16, 16, 3), dtype=np.float32)
        >>> round(float(ssim_map(x, x).min()), 5)
        1.0
    """
    radius = _check_ssim_params(max_val, sigma, win_size)
    if keras.ops.is_tensor(x) or keras.ops.is_tensor(y):
        x = keras.ops.cast(x, "float32")
        y = keras.ops.cast(y, "float32")
        check_image_pair(_static_shape(x), _static_shape(y), "ssim_map")
        return _ssim_ops(x, y, float(max_val), float(sigma), radius)

    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=np.float32)
    check_image_pair(x.shape, y.shape, "ssim_map")
    n, height, width, channels = x.shape
    compiled = _compiled_ssim(keras.backend.backend(), float(max_val), float(sigma), radius,
                              height, width, channels)
    chunk = max(1, _NUMPY_CHUNK_VALUES // max(1, 5 * height * width * channels))
    out = np.empty((n, height, width), dtype=np.float32)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        out[start:stop] = keras.ops.convert_to_numpy(compiled(
            keras.ops.convert_to_tensor(x[start:stop]),
            keras.ops.convert_to_tensor(y[start:stop])))
    return out


@functools.lru_cache(maxsize=16)
def _compiled_ssim(backend: str, max_val: float, sigma: float, radius: int, height: int,
                   width: int, channels: int) -> Any:
    """:func:`_ssim_ops` for one image size, compiled by the backend (numpy input only).

    TensorFlow: a tf.function traced once for any batch size; JAX: ``jax.jit`` (one trace
    per batch size, at most two per call of :func:`ssim_map`); PyTorch: eager, without
    autograd.
    """

    def ssim(x: Any, y: Any) -> Any:
        return _ssim_ops(x, y, max_val, sigma, radius)

    if backend == "tensorflow":
        import tensorflow as tf

        spec = tf.TensorSpec((None, height, width, channels), tf.float32)
        return tf.function(ssim, input_signature=(spec, spec))
    if backend == "jax":
        import jax

        return jax.jit(ssim)
    if backend == "torch":
        import torch

        return torch.no_grad()(ssim)
    return ssim
