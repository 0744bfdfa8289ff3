"""The statistics floor: a training-free candidate scored beside the autoencoders.

No network: each pixel is described by a few local statistics, Gaussians are fitted to them
over the defect-free training pixels, and a pixel's anomaly is its Mahalanobis distance.

1. Each image is normalised per channel (``normalize``, :data:`NORMALISATIONS`), so that a
   brighter or darker exposure of the same surface is no anomaly: by its own mean and
   standard deviation (``"standard"``), or divided by its mean (``"gain"``: an exposure
   that scales every intensity alike is undone, the image's contrast is kept, so that a
   large band of another texture does not lower the contrast of the rest of the image).
2. Features, per channel and box window w (odd, pixels at the input resolution): local mean,
   local standard deviation and the local mean of the Sobel gradient over w x w, by
   ``gradient`` (:data:`GRADIENT_FEATURES`): its magnitude (rotation-invariant, for textures
   that appear at any orientation), or the absolute horizontal and vertical components apart
   (``"directional"``: a change of a streak's or a weave's direction at the same contrast,
   which the magnitude cannot see). By default the windows scale with the image: 1/16, 1/8
   and 1/4 of its side rounded down to odd (7, 15, 31 at 128 px); notebook 01 also tries them
   twice as wide (:data:`WINDOW_SCALES`). D = F x len(windows) x C features, F = 3
   (magnitude) or 4 (directional).
3. Statistics, by ``variant`` (:data:`FLOOR_VARIANTS`):

   - ``"positional"``: one Gaussian per cell of a ``grid`` x ``grid`` partition (2 x 2 px
     cells at 128 px), for aligned objects such as registered solar cells.
   - ``"global"``: one Gaussian over all pixels, shift-invariant, for textures.

   Means and covariances are accumulated over every training pixel in batches, in float64,
   without subsampling or randomness, and shrunk: ``cov + shrinkage * trace(cov) / D * I``.
4. Map, by ``form`` (:data:`FLOOR_FORMS`): the Mahalanobis distance of each pixel (in
   standard deviations; ``"gaussian"``), or, for the positional variant, the distance in
   the same whitened coordinates to the nearest of the cell's training pixels
   (``"nearest"``, :mod:`anomaly_utils.scoring.pixel_bank`: a cell whose normals are
   several clouds is not one wide Gaussian); resized to ``eval_size`` and smoothed by a
   Gaussian of ``smooth_sigma`` eval pixels.
5. Optionally (``eigen_side``), the map is averaged with the eigen-image residual
   (:mod:`anomaly_utils.scoring.eigen_residual`), which sees what is wrong with an image as a
   whole rather than with a neighbourhood; each map is first standardised by its mean and
   standard deviation on defect-free training images.
6. Image score: the peak of the map after a ``score_window`` x ``score_window`` mean filter,
   so that no single hot pixel decides an image.

The defaults were chosen on the pseudo-labelled validation sets of the synthetic carpet,
magnetic_tile and ELPV mono and poly (``experiments/floor_variants.py``); a run fits every
variant and gradient kind, then the wider windows, then the nearest-pixel form, then the
eigen-image sides, and keeps
the floor its own validation set prefers (notebook 01, :func:`anomaly_utils.scoring.floor_choice.fit_floor`).

One module because the features, the fitted cells and the saved files must agree exactly
(feature order, cell layout, shrinkage redone on load); apart, each would reach into the
others' internals.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> train = rng.normal(0.5, 0.05, (8, 64, 64, 1)).clip(0, 1).astype(np.float32)
    >>> test = train[:2].copy(); test[1, 20:28, 20:28] = 1.0
    >>> result = StatisticsFloor(eval_size=64).fit(train).score(test)
    >>> result.maps.shape, bool(result.scores[1] > result.scores[0])
    ((2, 64, 64), True)
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from threadpoolctl import threadpool_limits

from anomaly_utils.artifacts import load_npz, read_json, save_npz, write_json
from anomaly_utils.cpus import cpu_share
from anomaly_utils.errors import ArtifactError, LabError, ParameterError
from anomaly_utils.scoring.eigen_residual import ARRAY_NAMES, AUTO, EigenResidual, standardised
from anomaly_utils.scoring.pixel_bank import ARRAY_NAMES as BANK_ARRAYS
from anomaly_utils.scoring.pixel_bank import PixelBank, bank_images
from anomaly_utils.scoring.stored import ScoreResult

FLOOR_VARIANTS: tuple[str, ...] = ("positional", "global")
GRADIENT_FEATURES: tuple[str, ...] = ("magnitude", "directional")
FLOOR_FORMS: tuple[str, ...] = ("gaussian", "nearest")
NORMALISATIONS: tuple[str, ...] = ("standard", "gain", "none")
CHOSEN_NORMALISATIONS: tuple[str, ...] = ("standard", "gain")  # what notebook 01's "auto" tries
_MIN_MEAN = 0.01  # floor of an image's mean intensity when dividing by it
_PER_WINDOW = {"magnitude": 3, "directional": 4}  # features per channel and window
WINDOW_FRACTIONS = (1 / 16, 1 / 8, 1 / 4)  # default windows, as fractions of the image side
# The largest window's share of the image side for each scale notebook 01 tries (the other two
# windows are half and a quarter of it); 0.25 gives WINDOW_FRACTIONS.
WINDOW_SCALES: tuple[float, ...] = (0.25, 0.5)
DEFAULT_SMOOTH_SIGMA = 2.0
DEFAULT_SCORE_WINDOW = 5
DEFAULT_GRID = 64
DEFAULT_SHRINKAGE = 0.001
_FORMAT = 1
_CONFIG_FILE = "statistics_floor.json"
_ARRAYS_FILE = "statistics_floor.npz"
_BATCH_PIXELS = 1 << 20  # image pixels per batch: the features take 4 x D bytes each
_SCORE_PIXELS = 1 << 14  # pixels per slice of the distance computation (2-5 MB in float64)
_STATS_IMAGES = 64  # training images (evenly spaced) whose maps standardise a fused floor
_MEMO_IMAGE_SETS = 2  # the validation set and the split scored after it, see _maps_memo


def default_windows(side: int, largest: float = WINDOW_FRACTIONS[-1]) -> tuple[int, ...]:
    """The box windows for images of ``side`` pixels: ``largest`` of the side, half and a
    quarter of that (by default :data:`WINDOW_FRACTIONS`), rounded down to odd, at least 1,
    without repeats.

    Example:
        >>> default_windows(128), default_windows(256), default_windows(20)
        ((7, 15, 31), (15, 31, 63), (1, 3))
        >>> default_windows(256, largest=0.5)
        (31, 63, 127)
    """
    fractions = (largest / 4, largest / 2, largest)
    return tuple(sorted({max(1, 2 * int(side * f / 2) - 1) for f in fractions}))


def window_scales(value: Any) -> tuple[float, ...]:
    """The window scales ``floor_windows`` asks for: ``"auto"`` -> :data:`WINDOW_SCALES`, a
    number in (0, 1] (or its digits, as ``-p`` passes it) -> (that share of the side,).

    Raises:
        ParameterError: anything else.
    """
    if value == AUTO:
        return WINDOW_SCALES
    if isinstance(value, str) and value.replace(".", "", 1).isdigit():  # -p passes "0.5"
        value = float(value)
    if not _is_number(value) or not 0 < value <= 1:
        raise ParameterError(f"floor_windows must be 'auto' or the largest window's share of "
                             f"the image side in (0, 1], got {value!r}",
                             fix=f"use 'auto' (tries {', '.join(map(str, WINDOW_SCALES))})")
    return (float(value),)


def floor_windows_problem(value: Any) -> str | None:
    """What is wrong with a ``floor_windows`` value, or None (notebook 01's parameter check)."""
    try:
        window_scales(value)
    except ParameterError:
        return "must be 'auto' or the largest window's share of the image side, in (0, 1]"
    return None


def gain_normalised(image: np.ndarray) -> np.ndarray:
    """An (H, W, C) float32 image in [0, 1] divided by its per-channel mean (at least 0.01),
    minus 1, float32: the floor's input with ``normalize="gain"``."""
    mean = np.maximum(np.asarray(cv2.mean(image)[:image.shape[-1]], np.float32),
                      np.float32(_MIN_MEAN))
    return image / mean - np.float32(1)


def _normalisation(value: Any) -> str:
    """``normalize`` as one of :data:`NORMALISATIONS`; True and False (floors saved before
    the gain normalisation) are ``"standard"`` and ``"none"``."""
    if isinstance(value, (bool, np.bool_)):
        return "standard" if value else "none"
    if isinstance(value, str) and value in NORMALISATIONS:
        return value
    raise ParameterError(f"normalize must be one of {', '.join(NORMALISATIONS)}, got {value!r}",
                         fix="pass normalize='standard'")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.number)) and not isinstance(value, bool) \
        and math.isfinite(value)


def _check_int(name: str, value: Any, low: int, fix: str, odd: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low \
            or (odd and value % 2 == 0):
        what = "an odd integer" if odd else "an integer"
        raise ParameterError(f"{name} must be {what} >= {low}, got {value!r}", fix=fix)
    return int(value)


def _check_windows(windows: Any) -> tuple[int, ...] | None:
    if windows is None:
        return None
    fix = "pass odd box sizes in pixels such as (7, 15, 31), or None for the default"
    if isinstance(windows, (int, np.integer, str)) or not isinstance(windows, Sequence) \
            or not windows:
        raise ParameterError(f"windows must be a non-empty tuple of odd box sizes, got "
                             f"{windows!r}", fix=fix)
    windows = tuple(_check_int("each of windows", w, 1, fix, odd=True) for w in windows)
    if len(set(windows)) != len(windows):
        raise ParameterError(f"windows repeats a size: {windows}", fix="list each size once")
    return windows


def as_unit_images(images: Any, name: str = "images") -> np.ndarray:
    """Check and convert images to float32 (N, H, W, C) in [0, 1].

    Args:
        images: (N, H, W, C) with C = 1 or 3 and N >= 1; uint8, or float in [0, 1].
        name: the argument's name in the error messages.

    Raises:
        ParameterError: another shape, dtype or range, naming ``name``.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ParameterError(
            f"{name} must be shaped (N, H, W, C) with C = 1 (grayscale) or 3 (RGB), got "
            f"{images.shape}", fix="stack the images along axis 0; give grayscale images a "
            "channel axis with images[..., None]")
    if images.shape[0] == 0 or images.shape[1] == 0 or images.shape[2] == 0:
        raise ParameterError(f"{name} holds no images or no pixels (shape {images.shape})",
                             fix="pass at least one image")
    if images.dtype == np.uint8:
        return images.astype(np.float32) / np.float32(255)
    if not np.issubdtype(images.dtype, np.floating):
        raise ParameterError(f"{name} has dtype {images.dtype}",
                             fix="pass uint8 images, or float images scaled to [0, 1]")
    images = images.astype(np.float32, copy=False)
    if not np.isfinite(images).all():
        raise ParameterError(f"{name} holds NaN or infinite values",
                             fix="pass finite images in [0, 1]")
    if images.min() < 0 or images.max() > 1:
        raise ParameterError(f"{name} must be in [0, 1], got values in "
                             f"[{images.min()}, {images.max()}]",
                             fix="divide uint8 images by 255 (or pass them as uint8)")
    return images


def _edges(size: int, cells: int) -> np.ndarray:
    """Boundaries of ``cells`` near-equal cells along an axis of ``size`` pixels."""
    return np.linspace(0, size, cells + 1).round().astype(int)


class StatisticsFloor:
    """Local statistics, Gaussians over the training pixels, Mahalanobis distance.

    See the module docstring for the method. Fit on defect-free images, then score images of
    the same size and colour mode.

    Args:
        variant: ``"positional"`` (one Gaussian per grid cell) or ``"global"`` (one for all
            pixels); see :data:`FLOOR_VARIANTS`.
        windows: odd box sizes, pixels at the input resolution; ``None``:
            :func:`default_windows` of the training images' shorter side.
        eval_size: side of the returned maps, pixels.
        smooth_sigma: Gaussian smoothing of the maps, eval pixels (0 = none).
        score_window: odd side of the mean filter before the peak, eval pixels (1 = the peak
            pixel itself).
        grid: cells per side of the positional variant, at most one per pixel (the global
            variant has one cell).
        normalize: each image's normalisation per channel before the features, one of
            :data:`NORMALISATIONS` (True and False: ``"standard"`` and ``"none"``).
        shrinkage: covariance shrinkage towards the mean variance, in (0, 1].
        gradient: ``"magnitude"`` or ``"directional"`` gradient features; see
            :data:`GRADIENT_FEATURES`.
        eigen_side: side in pixels of the eigen-image residual averaged into the map, or
            None for the local statistics alone.
        form: ``"gaussian"`` or ``"nearest"`` (positional only); see :data:`FLOOR_FORMS`.
    """

    def __init__(self, variant: str = "positional", windows: Sequence[int] | None = None,
                 eval_size: int = 128, smooth_sigma: float = DEFAULT_SMOOTH_SIGMA,
                 score_window: int = DEFAULT_SCORE_WINDOW, grid: int = DEFAULT_GRID,
                 normalize: str | bool = "standard", shrinkage: float = DEFAULT_SHRINKAGE,
                 gradient: str = "magnitude", eigen_side: int | None = None,
                 form: str = "gaussian"):
        for ok, message, fix in (
            (variant in FLOOR_VARIANTS, f"variant {variant!r} is not known",
             f"use one of {', '.join(FLOOR_VARIANTS)}"),
            (_is_number(smooth_sigma) and smooth_sigma >= 0, f"smooth_sigma must be a number "
             f"of eval pixels >= 0, got {smooth_sigma!r}", f"use {DEFAULT_SMOOTH_SIGMA}"),
            (_is_number(shrinkage) and 0 < shrinkage <= 1,
             f"shrinkage must be in (0, 1], got {shrinkage!r}", f"use {DEFAULT_SHRINKAGE}"),
            (isinstance(gradient, str) and gradient in GRADIENT_FEATURES,
             f"gradient {gradient!r} is not known", f"use one of {', '.join(GRADIENT_FEATURES)}"),
            (isinstance(form, str) and form in FLOOR_FORMS, f"form {form!r} is not known",
             f"use one of {', '.join(FLOOR_FORMS)}"),
            (form != "nearest" or variant == "positional", "the nearest-pixel form needs the "
             f"positional variant, got {variant!r}", "use variant='positional' or "
             "form='gaussian'")):
            if not ok:
                raise ParameterError(message, fix=fix)
        self.variant = variant
        self.windows = _check_windows(windows)
        self.eval_size = _check_int("eval_size", eval_size, 1, "pass e.g. 128")
        self.smooth_sigma = float(smooth_sigma)
        self.score_window = _check_int("score_window", score_window, 1,
                                       f"use {DEFAULT_SCORE_WINDOW}", odd=True)
        self.grid = _check_int("grid", grid, 1, f"use {DEFAULT_GRID}")
        self.normalize = _normalisation(normalize)
        self.shrinkage = float(shrinkage)
        self.gradient = gradient
        self.eigen_side = None if eigen_side is None else EigenResidual(eigen_side).side
        self.form = form
        # Set by fit (or load):
        self.bank: PixelBank | None = None  # the nearest-pixel form's training pixels
        self.eigen: EigenResidual | None = None
        # (2,) mean and std of the training images' maps, which standardise them before the
        # eigen-images are averaged in; computed by the first with_eigen, shared by its copies
        self.map_stats: np.ndarray | None = None
        self.image_shape: tuple[int, int, int] | None = None  # (H, W, C) fitted on
        self.used_windows: tuple[int, ...] | None = None  # windows, or the default's sizes
        self.n_train = 0
        self.mean: np.ndarray | None = None  # (GH, GW, D) float64
        self.covariance: np.ndarray | None = None  # (GH, GW, D, D) float64, shrunk
        self._raw_covariance: np.ndarray | None = None  # before shrinkage, as saved
        self._whiten: np.ndarray | None = None  # (GH, GW, D, D): z = (x - mean) @ whiten
        # The local maps of the last image sets scored, keyed by their bytes: notebook 01
        # scores its validation set with the same local maps in each stage and again among the
        # stored scores (:meth:`_eval_maps`). with_eigen's copies share it: same local maps.
        self._maps_memo: dict[tuple, np.ndarray] = {}

    # -- features ---------------------------------------------------------------------------

    def n_features(self, windows: Sequence[int], channels: int) -> int:
        """D, the features per pixel: per channel and window, 3 (magnitude) or 4."""
        return _PER_WINDOW[self.gradient] * len(windows) * channels

    def features(self, images: np.ndarray, windows: Sequence[int]) -> np.ndarray:
        """Per-pixel features of float32 (N, H, W, C) images in [0, 1].

        Returns:
            (N, H, W, D) float32 (:meth:`n_features`): per channel and window, the local
            mean, the local standard deviation and the local mean Sobel gradient (magnitude,
            or absolute x then y component), in units of the normalised image
            (``normalize``; with ``"none"`` of [0, 1] intensity).
        """
        n, height, width, channels = images.shape
        out = np.empty((n, height, width, self.n_features(windows, channels)), np.float32)
        # Planes are written channel-first, then interleaved in one copy: writing each plane
        # into the channels-last array directly is a strided write, 5x slower (measured:
        # 12.8 against 2.6 ms for 36 planes of 256 x 256).
        planes = np.empty((out.shape[-1], height, width), np.float32)
        directional = self.gradient == "directional"
        border = cv2.BORDER_REFLECT
        for i, image in enumerate(images):
            if self.normalize == "standard":
                image = standardised(image)
            elif self.normalize == "gain":
                image = gain_normalised(image)
            k = 0
            for c in range(channels):
                plane = np.ascontiguousarray(image[..., c], dtype=np.float32)
                square = plane * plane
                gx = cv2.Sobel(plane, cv2.CV_32F, 1, 0, ksize=3, borderType=border)
                gy = cv2.Sobel(plane, cv2.CV_32F, 0, 1, ksize=3, borderType=border)
                # not cv2.magnitude: its result depends on the arrays' memory alignment
                gradients = (np.abs(gx), np.abs(gy)) if directional \
                    else (np.sqrt(gx * gx + gy * gy),)
                for w in windows:
                    mean = cv2.blur(plane, (w, w), borderType=border)
                    variance = cv2.blur(square, (w, w), borderType=border) - mean * mean
                    planes[k] = mean
                    np.sqrt(np.maximum(variance, 0), out=planes[k + 1])
                    for g, gradient in enumerate(gradients, start=k + 2):
                        cv2.blur(gradient, (w, w), dst=planes[g], borderType=border)
                    k += 2 + len(gradients)
            out[i] = planes.transpose(1, 2, 0)
        return out

    def _batches(self, images: np.ndarray,
                 windows: Sequence[int]) -> Iterator[tuple[int, np.ndarray]]:
        """``(start, features of images[start:start + step])`` for each batch, in order; where
        more than one CPU is usable the next batch's features are computed in a thread while
        the caller works on this one (OpenCV's filters run outside the interpreter lock):
        ``fit_floor`` on the carpet 36-39 s instead of 52-67 s on 2 CPUs, about as before on
        magnetic_tile, whose per-cell loops keep the interpreter busy."""
        step = max(1, _BATCH_PIXELS // (images.shape[1] * images.shape[2]))
        starts = range(0, len(images), step)
        if cpu_share() < 2 or len(starts) < 2:
            for start in starts:
                yield start, self.features(images[start:start + step], windows)
            return
        with ThreadPoolExecutor(1) as pool:
            ahead = pool.submit(self.features, images[:step], windows)
            for k, start in enumerate(starts):
                feats = ahead.result()
                if k + 1 < len(starts):
                    after = starts[k + 1]
                    ahead = pool.submit(self.features, images[after:after + step], windows)
                yield start, feats

    def _grid_shape(self, height: int, width: int) -> tuple[int, int]:
        if self.variant == "global":
            return 1, 1
        return min(self.grid, height), min(self.grid, width)

    def _cells(self, height: int, width: int) -> Iterator[tuple[int, int, slice, slice]]:
        rows, cols = self._grid_shape(height, width)
        row_edges, col_edges = _edges(height, rows), _edges(width, cols)
        for i in range(rows):
            for j in range(cols):
                yield (i, j, slice(row_edges[i], row_edges[i + 1]),
                       slice(col_edges[j], col_edges[j + 1]))

    # -- fitting and scoring ----------------------------------------------------------------

    def fit(self, train_images: np.ndarray) -> StatisticsFloor:
        """Fit the Gaussians on defect-free images.

        Args:
            train_images: (N, H, W, C) uint8, or float in [0, 1]; C = 1 or 3; N >= 1.

        Returns:
            ``self``, fitted (refitting replaces the earlier fit).

        Raises:
            ParameterError: wrong shape, dtype or range; fewer than 2 pixels per cell.
        """
        images = as_unit_images(train_images, "train_images")
        n, height, width, channels = images.shape
        windows = self.windows or default_windows(min(height, width))
        d = self.n_features(windows, channels)
        grid = self._grid_shape(height, width)
        shift = np.zeros((*grid, d))
        total = np.zeros((*grid, d))
        outer = np.zeros((*grid, d, d))
        count = np.zeros(grid)
        for start, feats in self._batches(images, windows):
            for i, j, rows, cols in self._cells(height, width):
                x = feats[:, rows, cols].reshape(-1, d).astype(np.float64)
                if start == 0:  # centre on a first estimate, so the sums of squares stay exact
                    shift[i, j] = x.mean(axis=0)
                x -= shift[i, j]
                total[i, j] += x.sum(axis=0)
                outer[i, j] += x.T @ x
                count[i, j] += len(x)
        if count.min() < 2:
            raise ParameterError(
                f"train_images: {n} image(s) of {height}x{width} px give {int(count.min())} "
                f"pixel per cell of the {grid[0]}x{grid[1]} grid; a covariance needs 2",
                fix="pass more training images or a smaller grid")
        mean = total / count[..., None]
        raw_cov = (outer - count[..., None, None] * mean[..., :, None] * mean[..., None, :]) \
            / (count[..., None, None] - 1)
        self.image_shape, self.used_windows = (height, width, channels), windows
        self._set(shift + mean, raw_cov, n)
        self.eigen, self.map_stats, self._maps_memo = None, None, {}
        self.bank = self._bank_of(images) if self.form == "nearest" else None
        if self.eigen_side is not None:
            self._fit_eigen(images)
        return self

    def with_eigen(self, side: int, train_images: np.ndarray) -> StatisticsFloor:
        """A copy of this fitted floor with the eigen-image residual of ``side`` pixels
        averaged into its maps (the Gaussians are shared, not refitted).

        Args:
            side: the eigen-images' side, pixels.
            train_images: the images this floor was fitted on.
        """
        images = self._checked(train_images)
        if self.map_stats is None:  # the same for every side: computed once
            self.map_stats = self._map_stats_of(images)
        fused = copy.copy(self)
        fused.eigen_side = EigenResidual(side).side
        fused._fit_eigen(images)
        return fused

    def with_nearest(self, train_images: np.ndarray) -> StatisticsFloor:
        """A copy of this fitted positional floor in the nearest-pixel form: the same
        Gaussians whiten the features, the bank holds ``train_images``' pixels.

        Args:
            train_images: the images this floor was fitted on.
        """
        images = self._checked(train_images)
        if self.variant != "positional":
            raise ParameterError("the nearest-pixel form needs the positional variant, this "
                                 f"floor is {self.variant!r}", fix="fit a positional floor")
        nearest = copy.copy(self)
        nearest.form, nearest.eigen_side, nearest.eigen, nearest.map_stats = \
            "nearest", None, None, None
        nearest._maps_memo = {}  # other maps than this Gaussian form's
        nearest.bank = nearest._bank_of(images)
        return nearest

    def _bank_of(self, images: np.ndarray) -> PixelBank:
        """The whitened features of each cell's centre pixel in the bank's training images
        (:func:`~anomaly_utils.scoring.pixel_bank.bank_images`)."""
        kept = bank_images(len(images))
        cells = list(self._cells(*images.shape[1:3]))
        parts: list[list[np.ndarray]] = [[] for _ in cells]
        with threadpool_limits(1, user_api="blas"):  # small products, as in _raw_maps
            # images[kept] would copy every image (190 MB for magnetic_tile) to keep them all
            bank = images if len(kept) == len(images) else images[kept]
            for _, feats in self._batches(bank, self.used_windows):
                for c, (i, j, rows, cols) in enumerate(cells):
                    centre = feats[:, (rows.start + rows.stop - 1) // 2,
                                   (cols.start + cols.stop - 1) // 2]
                    z = (centre.astype(np.float64) - self.mean[i, j]) @ self._whiten[i, j]
                    parts[c].append(z.astype(np.float32))
        return PixelBank.of_cells([np.concatenate(p) for p in parts], [kept] * len(cells))

    def _map_stats_of(self, images: np.ndarray) -> np.ndarray:
        """Mean and standard deviation of the maps of up to :data:`_STATS_IMAGES` evenly
        spaced training images, (2,) float64 (in the nearest-pixel form each image's own
        pixels are left out of the bank, or its distances would be those of a copy)."""
        rows = np.unique(np.linspace(0, len(images) - 1, _STATS_IMAGES).round().astype(int))
        maps = self._computed_maps(images[rows], rows if self.bank is not None else None)
        return np.array([maps.mean(), max(float(maps.std()), 1e-12)])

    def _fit_eigen(self, images: np.ndarray) -> None:
        self.eigen = EigenResidual(self.eigen_side, eval_size=self.eval_size,
                                   smooth_sigma=self.smooth_sigma).fit(images)
        if self.map_stats is None:
            self.map_stats = self._map_stats_of(images)

    def _set(self, mean: np.ndarray, raw_cov: np.ndarray, n_train: int) -> None:
        """Shrink the covariances and derive the whitening matrices (also on load, so that a
        loaded floor computes exactly what the saved one did)."""
        d = mean.shape[-1]
        ridge = self.shrinkage * np.trace(raw_cov, axis1=-2, axis2=-1) / d
        cov = raw_cov + np.maximum(ridge, 1e-12)[..., None, None] * np.eye(d)
        chol = np.linalg.cholesky(cov)  # cov = L L^T, z = L^-1 (x - mean)
        self.mean, self.covariance, self._raw_covariance = mean, cov, raw_cov
        self._whiten = np.swapaxes(np.linalg.inv(chol), -1, -2)
        self.n_train = int(n_train)

    def _checked(self, images: Any) -> np.ndarray:
        if self.mean is None:
            raise LabError("the statistics floor is not fitted",
                           fix="call fit(train_images) or StatisticsFloor.load(folder) first")
        images = as_unit_images(images, "images")
        if images.shape[1:] != self.image_shape:
            raise ParameterError(
                f"images are {images.shape[1:]} (H, W, C) but the floor was fitted on "
                f"{self.image_shape}", fix="load them at the training images' size and "
                "colour mode")
        return images

    def raw_maps(self, images: np.ndarray) -> np.ndarray:
        """Mahalanobis distance of each pixel at the input resolution, unsmoothed.

        Args:
            images: as for :meth:`score`.

        Returns:
            (N, H, W) float32, in standard deviations.
        """
        return self._raw_maps(self._checked(images))

    def _raw_maps(self, images: np.ndarray, owners: np.ndarray | None = None) -> np.ndarray:
        """(N, H, W) float32 distances; ``owners``: (N,) the images' indices among the
        training images, whose own pixels the nearest-pixel form then leaves out."""
        # One BLAS thread: the products are thousands of small ones, and a thread pool's
        # hand-offs make each one slower (`python -m benchmarks floor`: 3.5 times beside two
        # busy processes on 2 cores; 20 times once in a notebook kernel on a busier machine);
        # one thread also sums every product the same way on any machine.
        with threadpool_limits(1, user_api="blas"):
            return self._raw_maps_one_thread(images, owners)

    def _raw_maps_one_thread(self, images: np.ndarray, owners: np.ndarray | None) -> np.ndarray:
        maps = np.empty(images.shape[:3], np.float32)
        d = self.mean.shape[-1]
        for start, feats in self._batches(images, self.used_windows):
            stop = start + len(feats)
            for c, (i, j, rows, cols) in enumerate(self._cells(*images.shape[1:3])):
                cell = feats[:, rows, cols]
                pixels = cell.reshape(-1, d)
                distance = np.empty(len(pixels), np.float32)
                owner = None if owners is None else \
                    np.repeat(owners[start:stop], cell.shape[1] * cell.shape[2])
                # Pixels in slices whose float64 copies stay in cache: the global variant's
                # one cell is the whole batch (300 MB in float64), 3.5x slower in one piece.
                for a in range(0, len(pixels), _SCORE_PIXELS):
                    z = (pixels[a:a + _SCORE_PIXELS].astype(np.float64) - self.mean[i, j]) \
                        @ self._whiten[i, j]
                    distance[a:a + _SCORE_PIXELS] = np.sqrt(np.einsum("nd,nd->n", z, z)) \
                        if self.bank is None else self.bank.nearest(
                            c, z, None if owner is None else owner[a:a + _SCORE_PIXELS])
                maps[start:stop, rows, cols] = distance.reshape(cell.shape[:3])
        return maps

    def score(self, images: np.ndarray) -> ScoreResult:
        """Anomaly maps and image scores.

        Args:
            images: (N, H, W, C) uint8, or float in [0, 1], at the training images' size and
                channels.

        Returns:
            :class:`ScoreResult`: ``scores`` (N,) float32 and ``maps`` (N, E, E) float32 with
            E = ``eval_size``, both in standard deviations: of the Mahalanobis distance, or,
            with the eigen-image residual, the mean of the two maps each standardised on
            the training images. The floor reconstructs nothing: ``recons`` holds the input
            images, float32 (N, H, W, C) in [0, 1], so that galleries show the image itself.
        """
        images = self._checked(images)
        maps = self._eval_maps(images)
        if self.eigen is not None:
            maps = ((maps - np.float32(self.map_stats[0])) / np.float32(self.map_stats[1])
                    + self.eigen.maps(images)) / np.float32(2)
        w = self.score_window
        scores = np.array([(cv2.blur(m, (w, w), borderType=cv2.BORDER_REFLECT) if w > 1
                            else m).max() for m in maps], np.float32)
        return ScoreResult(scores=scores, maps=maps, recons=images)

    def _eval_maps(self, images: np.ndarray, owners: np.ndarray | None = None) -> np.ndarray:
        """The distance maps resized to ``eval_size`` and smoothed, float32 (N, E, E); without
        ``owners``, the maps of the last :data:`_MEMO_IMAGE_SETS` image sets come from the
        memo, as a copy."""
        if owners is not None:
            return self._computed_maps(images, owners)
        key = (images.shape, hashlib.blake2b(np.ascontiguousarray(images)).hexdigest())
        maps = self._maps_memo.pop(key, None)
        if maps is None:
            maps = self._computed_maps(images, None)
        self._maps_memo[key] = maps  # now the most recent
        while len(self._maps_memo) > _MEMO_IMAGE_SETS:
            del self._maps_memo[next(iter(self._maps_memo))]
        return maps.copy()

    def _computed_maps(self, images: np.ndarray, owners: np.ndarray | None) -> np.ndarray:
        raw = self._raw_maps(images, owners)
        size = self.eval_size
        maps = np.empty((len(raw), size, size), np.float32)
        for k, m in enumerate(raw):
            if m.shape != (size, size):
                shrink = size < min(m.shape)
                m = cv2.resize(m, (size, size),
                               interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
            if self.smooth_sigma > 0:
                m = cv2.GaussianBlur(m, (0, 0), self.smooth_sigma, borderType=cv2.BORDER_REFLECT)
            maps[k] = m
        return maps

    # -- files ------------------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        """The settings, and what the floor was fitted on, as JSON values."""
        listed = {k: None if v is None else list(v) for k, v in (
            ("windows", self.windows), ("image_shape", self.image_shape),
            ("used_windows", self.used_windows))}
        return {"format": _FORMAT, "variant": self.variant, "eval_size": self.eval_size,
                "smooth_sigma": self.smooth_sigma, "score_window": self.score_window,
                "grid": self.grid, "normalize": self.normalize, "shrinkage": self.shrinkage,
                "gradient": self.gradient, "eigen_side": self.eigen_side, "form": self.form,
                "n_train": self.n_train, **listed}

    def save(self, folder: str | os.PathLike) -> None:
        """Write ``statistics_floor.npz`` (means and covariances, the nearest-pixel form's
        bank, the eigen-images), then
        ``statistics_floor.json`` (settings) into ``folder``, each atomically, without pickle.
        """
        if self.mean is None:
            raise LabError("the statistics floor is not fitted", fix="call fit(train_images)")
        folder = Path(folder)
        eigen = {} if self.eigen is None else {
            "map_stats": self.map_stats,
            **{f"eigen_{k}": v for k, v in self.eigen.arrays().items()}}
        bank = {} if self.bank is None else self.bank.arrays()
        save_npz(folder / _ARRAYS_FILE, mean=self.mean, raw_covariance=self._raw_covariance,
                 **eigen, **bank)
        write_json(folder / _CONFIG_FILE, self.config())

    @classmethod
    def load(cls, folder: str | os.PathLike) -> StatisticsFloor:
        """Read a floor written by :meth:`save`; it gives the saved floor's maps exactly.

        Raises:
            ArtifactError: a file is missing or corrupt, or the two do not match.
        """
        folder = Path(folder)
        config = read_json(folder / _CONFIG_FILE)
        arrays = load_npz(folder / _ARRAYS_FILE)
        try:
            if config.pop("format") != _FORMAT:
                raise ValueError("another format")
            shape, used, n_train = (config.pop(k) for k in ("image_shape", "used_windows",
                                                             "n_train"))
            floor = cls(**config)
            floor.image_shape, floor.used_windows = tuple(shape), tuple(used)
            mean, raw_cov = arrays["mean"], arrays["raw_covariance"]
            d = floor.n_features(floor.used_windows, floor.image_shape[2])
            grid = floor._grid_shape(*floor.image_shape[:2])
            if mean.shape != (*grid, d) or raw_cov.shape != (*grid, d, d):
                raise ValueError(f"arrays shaped {mean.shape} and {raw_cov.shape} for a "
                                 f"{grid} grid of {d} features")
            floor._set(mean, raw_cov, n_train)
            if floor.form == "nearest":
                floor.bank = PixelBank.restore({k: arrays[k] for k in BANK_ARRAYS})
                if floor.bank.n_cells != grid[0] * grid[1] or floor.bank.pixels.shape[1] != d:
                    raise ValueError(f"a pixel bank of {floor.bank.n_cells} cells and "
                                     f"{floor.bank.pixels.shape[1]} features for a {grid} "
                                     f"grid of {d} features")
            if floor.eigen_side is not None:
                floor.map_stats = np.asarray(arrays["map_stats"], np.float64)
                if floor.map_stats.shape != (2,):
                    raise ValueError(f"map_stats shaped {floor.map_stats.shape}")
                floor.eigen = EigenResidual(
                    floor.eigen_side, eval_size=floor.eval_size,
                    smooth_sigma=floor.smooth_sigma).restore(
                    {k: arrays.get(f"eigen_{k}") for k in ARRAY_NAMES
                     if f"eigen_{k}" in arrays}, floor.image_shape[2])
        except (KeyError, TypeError, ValueError, AttributeError, np.linalg.LinAlgError,
                ParameterError) as exc:
            raise ArtifactError(f"'{folder}' does not hold a statistics floor this lab can read "
                                f"({type(exc).__name__}: {exc})",
                                fix="fit the floor again and save it") from exc
        return floor
