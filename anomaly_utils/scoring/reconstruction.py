"""Reconstructions of whole images: in one pass, as overlapping patches averaged back
together (sliding window), or by inpainting grid cells that are hidden in turn.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from anomaly_utils.errors import ParameterError
from anomaly_utils.training.masks import GRID_SETS, grid_mask_sets, require_positive_int


def _check_images(images: Any, what: str) -> np.ndarray:
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4 or 0 in images.shape:
        raise ParameterError(f"{what} needs a non-empty batch shaped (N, H, W, C); got shape "
                             f"{images.shape}",
                             fix="add batch/channel axes, e.g. x[None, ..., None]")
    return images


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
    batch_size = require_positive_int(batch_size, "batch_size", "pass e.g. 32")
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
    patch_size = require_positive_int(patch_size, "patch_size", "pass the model's input size")
    stride = require_positive_int(stride, "stride", "pass e.g. patch_size // 4")
    batch_size = require_positive_int(batch_size, "batch_size", "pass e.g. 64")
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
