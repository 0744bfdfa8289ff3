"""Synthetic anomalies for training a segmentation head, after DRAEM (Zavrtanik et al., ICCV 2021).

A discriminative head learns what an anomaly looks like from defect-free images that are
corrupted on the fly, with the corruption's mask as its target:

1. :func:`perlin_noise`: 2D Perlin noise from ``pyfastnoiselite`` (FastNoise Lite), at
   ``scale`` lattice periods per image side and rotated by sampling rotated coordinates;
2. :func:`perlin_mask`: noise at 2**a by 2**b periods, a and b drawn uniformly from
   ``scale_exponents`` (DRAEM: 0..5 at 256 px; :func:`default_scale_exponents` keeps the
   smallest lattice cell at 8 px for any side), rotated by -90..90 degrees, thresholded at
   0.5. When every one of ``max_tries`` draws is empty, a small irregular blob stands in, so
   an anomaly that was asked for always has pixels;
3. a fill (:data:`FILL_KINDS`): ``"image"``, a random crop of ANOTHER defect-free image,
   resized to the image and changed by a random rotation or flip and 3 augmentations drawn
   from :data:`AUGMENTATIONS` (DRAEM draws textures from DTD; the lab has only its normals);
   ``"noise"``, new Perlin noise rescaled to [0, 1], one map per channel; ``"colour"``, a flat
   colour, half the time with per-pixel jitter; ``"shading"`` (not DRAEM's), the image
   itself, brightness shifted by 0.05-0.3 and contrast scaled by 0.8-1.25: normal texture
   at another level, like an unevenly ground region; and, not in the default either, the
   fills of :mod:`~anomaly_utils.data.training_fills` shaped like real defects:
   ``"gradient"``, ``"crack"`` (each with its own mask), ``"blur"`` and ``"texture"``;
4. :func:`add_training_anomaly`: ``out = image * (1 - m) + (1 - beta) * fill * m + beta *
   image * m``, beta drawn from ``opacity`` (DRAEM: [0, 0.8]) for DRAEM's fills, 0 for the
   others (their own draws set their strength). The mask returned is m, DRAEM's target:
   every pixel the fill was blended into, even where fill and image agree;
5. :func:`make_training_anomalies`: a batch, about ``clean_fraction`` of it left untouched
   with an empty mask (each sample clean with that probability, as in DRAEM).

Images are (H, W, 1) or (H, W, 3), uint8 or float in [0, 1]; results are float32 in [0, 1].
Noise per 64 / 128 / 256 px map on 2 CPU cores: pyfastnoiselite 0.06 / 0.22 / 0.85 ms,
numpy 0.23 / 1.1 / 5.3 ms, perlin-numpy 0.6 / 3.2 / 12.6 ms. :func:`make_training_anomalies`
(256 RGB uint8 images, clean_fraction 0.5, DRAEM's fills): 4,200 images/s at 64 px, 1,500 at 128.

Example:
    >>> rng = np.random.default_rng(0)
    >>> normals = rng.integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
    >>> images, masks = make_training_anomalies(normals, None, 0, clean_fraction=0.0)
    >>> images.shape, images.dtype, masks.shape, bool(masks.reshape(4, -1).max(1).all())
    ((4, 64, 64, 3), dtype('float32'), (4, 64, 64, 1), True)
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from pyfastnoiselite.pyfastnoiselite import FastNoiseLite, NoiseType

from anomaly_utils.data import training_fills
from anomaly_utils.data.painting import blob_mask
from anomaly_utils.errors import ParameterError

FILL_KINDS: tuple[str, ...] = ("image", "noise", "colour", *training_fills.FILLS)
DRAEM_FILLS: tuple[str, ...] = ("image", "noise", "colour")  # the default: DRAEM's sources
AUGMENTATIONS: tuple[str, ...] = ("gamma", "brightness", "sharpen", "hue", "solarize",
                                  "posterize", "invert", "autocontrast", "equalize")
MIN_CELL_PX = 8  # smallest Perlin lattice cell of the default scale range, in pixels


def perlin_noise(shape: tuple[int, int], rng: np.random.Generator,
                 scale: Sequence[float] = (4.0, 4.0), angle: float = 0.0) -> np.ndarray:
    """float32 (H, W) Perlin noise in [-1, 1], zero on the lattice points.

    Args:
        shape: (H, W) in pixels.
        rng: source of the library's seed and of a random lattice offset.
        scale: (rows, columns): lattice periods along the image's height and width before
            the rotation (> 0).
        angle: rotation of the pattern about the image centre, degrees.
    """
    h, w = shape
    generator = FastNoiseLite(seed=int(rng.integers(0, 2**31 - 1)))
    generator.noise_type = NoiseType.NoiseType_Perlin
    generator.frequency = 1.0
    theta = np.deg2rad(angle)
    cos, sin = np.float32(np.cos(theta)), np.float32(np.sin(theta))
    v = np.arange(h, dtype=np.float32)[:, None] - np.float32((h - 1) / 2)
    u = np.arange(w, dtype=np.float32)[None, :] - np.float32((w - 1) / 2)
    offset = rng.uniform(0, 256, 2).astype(np.float32)
    coords = np.empty((2, h, w), np.float32)
    coords[0] = (cos * u + sin * v) * np.float32(scale[1] / w) + offset[0]
    coords[1] = (cos * v - sin * u) * np.float32(scale[0] / h) + offset[1]
    noise = generator.gen_from_coords(coords.reshape(2, -1)).reshape(h, w)
    return np.clip(noise, -1.0, 1.0)


def default_scale_exponents(side: int) -> tuple[int, int]:
    """(0, k) with 2**k periods per ``side`` pixels giving cells of at least 8 px (DRAEM's 0..5
    at 256 px); k >= 1."""
    return 0, max(1, int(np.floor(np.log2(max(side, 1) / MIN_CELL_PX))))


def _exponents(value: Sequence[int] | None, side: int) -> tuple[int, int]:
    if value is None:
        return default_scale_exponents(side)
    top = int(np.floor(np.log2(side))) - 1
    try:
        lo, hi = (int(v) for v in value)
        ok = all(float(v) == int(v) for v in value) and 0 <= lo <= hi <= top
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ParameterError(f"scale_exponents must be a pair of integers 0 <= lo <= hi <= "
                             f"{top} for a {side}-pixel side, got {value!r}",
                             fix=f"pass e.g. scale_exponents={default_scale_exponents(side)} "
                                 f"or None for the default")
    return lo, hi


def perlin_mask(shape: tuple[int, int], rng: np.random.Generator,
                scale_exponents: Sequence[int] | None = None, threshold: float = 0.5,
                max_rotation: float = 90.0, max_tries: int = 8) -> np.ndarray:
    """bool (H, W): thresholded, rotated Perlin noise at a random scale; never empty.

    Args:
        shape: (H, W) in pixels.
        rng: source of every random choice.
        scale_exponents: (lo, hi), integers: the noise has 2**a periods along the height and
            2**b along the width, a and b drawn uniformly from lo..hi inclusive. None:
            :func:`default_scale_exponents` of min(H, W).
        threshold: noise level above which a pixel is in the mask, in (-1, 1).
        max_rotation: the rotation is drawn from [-max_rotation, max_rotation] degrees.
        max_tries: draws of the noise before a blob of radius ~min(H, W)/10 stands in.

    Example:
        >>> m = perlin_mask((64, 64), np.random.default_rng(0))
        >>> m.shape, m.dtype, bool(m.any())
        ((64, 64), dtype('bool'), True)
    """
    h, w = shape
    lo, hi = _exponents(scale_exponents, min(h, w))
    if not -1 < float(threshold) < 1:
        raise ParameterError(f"threshold must be in (-1, 1), got {threshold!r}",
                             fix="pass e.g. threshold=0.5")
    for _ in range(max(1, int(max_tries))):
        scale = (2.0 ** rng.integers(lo, hi + 1), 2.0 ** rng.integers(lo, hi + 1))
        angle = rng.uniform(-max_rotation, max_rotation)
        mask = perlin_noise((h, w), rng, scale, angle) > threshold
        if mask.any():
            return mask
    centre = (rng.uniform(0.2, 0.8) * (w - 1), rng.uniform(0.2, 0.8) * (h - 1))
    mask, _ = blob_mask((h, w), rng, centre, max(2.0, min(h, w) / 10), rng.uniform(0.5, 1.0))
    mask[int(round(centre[1])), int(round(centre[0]))] = True
    return mask


def _to_unit(image: np.ndarray) -> np.ndarray:
    """uint8 or float (H, W, C) -> float32 in [0, 1] (a new array)."""
    if image.dtype == np.uint8:
        return image.astype(np.float32) / np.float32(255)
    return image.astype(np.float32, copy=True)


def _check_image(image: np.ndarray, name: str, batch: bool) -> None:
    dims = "(N, H, W, C)" if batch else "(H, W, C)"
    if not isinstance(image, np.ndarray) or image.ndim != (4 if batch else 3) \
            or image.shape[-1] not in (1, 3) or min(image.shape[-3:-1]) < 8 \
            or (batch and image.shape[0] < 1):
        shape = getattr(image, "shape", type(image).__name__)
        raise ParameterError(f"{name} must be a numpy array shaped {dims} with C 1 or 3, at "
                             f"least 8x8 pixels, got {shape}",
                             fix="add a channel axis to grayscale images: array[..., None]")
    if image.dtype == np.uint8:
        return
    if not np.issubdtype(image.dtype, np.floating):
        raise ParameterError(f"{name} dtype must be uint8 or float, got {image.dtype}",
                             fix="pass uint8 or float images in [0, 1]")
    if not (np.isfinite(image).all() and image.min() >= 0 and image.max() <= 1):
        raise ParameterError(f"{name} has float values outside [0, 1] (or NaN)",
                             fix="scale float images to [0, 1], e.g. array / 255")


def _augment(fill: np.ndarray, rng: np.random.Generator, kind: str) -> np.ndarray:
    """One photometric augmentation of float32 (H, W, C) in [0, 1]."""
    if kind == "gamma":
        return fill ** np.float32(rng.uniform(0.5, 2.0))
    if kind == "brightness":
        return fill * np.float32(rng.uniform(0.8, 1.2)) + np.float32(rng.uniform(-0.12, 0.12))
    if kind == "sharpen":
        blur = cv2.GaussianBlur(fill, (0, 0), 1.0).reshape(fill.shape)
        return fill + np.float32(rng.uniform(0.5, 2.0)) * (fill - blur)
    if kind == "hue":
        hsv = cv2.cvtColor(fill, cv2.COLOR_RGB2HSV)
        hsv[..., 0] = (hsv[..., 0] + rng.uniform(-60, 60)) % 360
        hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(0.7, 1.3), 0, 1)
        return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if kind == "solarize":
        limit = np.float32(rng.uniform(32, 128) / 255)
        return np.where(fill >= limit, 1 - fill, fill)
    if kind == "posterize":
        levels = np.float32(2 ** rng.integers(1, 5))
        return np.floor(fill * levels) / levels
    if kind == "invert":
        return 1 - fill
    if kind == "autocontrast":
        low, high = fill.min(axis=(0, 1)), fill.max(axis=(0, 1))
        return (fill - low) / np.maximum(high - low, 1e-6)
    # equalize: histogram equalisation of each channel
    as_uint8 = np.rint(fill * 255).astype(np.uint8)
    equalised = [cv2.equalizeHist(np.ascontiguousarray(as_uint8[..., c]))
                 for c in range(fill.shape[2])]
    return np.stack(equalised, axis=2).astype(np.float32) * np.float32(1 / 255)


def _image_fill(shape: tuple[int, int, int], rng: np.random.Generator, sources: np.ndarray,
                exclude: int | None) -> np.ndarray:
    """A crop of 50-100 % of a source's side other than ``exclude``, resized to ``shape``,
    rotated or flipped and given 3 augmentations."""
    m = sources.shape[0]
    if exclude is not None and 0 <= exclude < m:
        if m < 2:
            raise ParameterError("sources holds only the excluded image, so the 'image' fill "
                                 "has nothing to draw from",
                                 fix="pass more sources, or fills without 'image'")
        j = int(rng.integers(m - 1))
        j += j >= exclude
    else:
        j = int(rng.integers(m))
    sh, sw = sources.shape[1:3]
    fraction = rng.uniform(0.5, 1.0)
    ch, cw = max(8, round(fraction * sh)), max(8, round(fraction * sw))
    top, left = int(rng.integers(sh - ch + 1)), int(rng.integers(sw - cw + 1))
    crop = _to_unit(sources[j, top:top + ch, left:left + cw])
    k = int(rng.integers(4))
    crop = np.rot90(crop, k)
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    h, w, c = shape
    fill = cv2.resize(np.ascontiguousarray(crop), (w, h), interpolation=cv2.INTER_LINEAR)
    fill = fill.reshape(shape)
    kinds = [a for a in AUGMENTATIONS if c == 3 or a != "hue"]
    for index in rng.choice(len(kinds), size=3, replace=False):
        fill = np.clip(_augment(fill, rng, kinds[index]), 0, 1, dtype=np.float32)
    return fill


def _noise_fill(shape: tuple[int, int, int], rng: np.random.Generator,
                exponents: tuple[int, int]) -> np.ndarray:
    """Perlin noise at a random scale and angle, min-max rescaled to [0, 1], per channel."""
    h, w, c = shape
    fill = np.empty(shape, np.float32)
    for channel in range(c):
        scale = 2.0 ** rng.integers(exponents[0], exponents[1] + 1, 2)
        noise = perlin_noise((h, w), rng, scale, rng.uniform(-90, 90))
        low, high = noise.min(), noise.max()
        fill[..., channel] = (noise - low) / max(high - low, 1e-6)
    return fill


def _colour_fill(shape: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """A flat random colour; half the time with Gaussian per-pixel jitter (sd 0.02-0.1)."""
    fill = np.broadcast_to(rng.random(shape[2]).astype(np.float32), shape)
    if rng.random() < 0.5:
        sigma = np.float32(rng.uniform(0.02, 0.1))
        fill = np.clip(fill + sigma * rng.standard_normal(shape, np.float32), 0, 1)
    return fill


def _opacity(value: Sequence[float]) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        lo, hi = np.nan, np.nan
    if not 0 <= lo <= hi < 1:
        raise ParameterError(f"opacity must be a pair 0 <= lo <= hi < 1 (the share of the "
                             f"image kept inside the mask), got {value!r}",
                             fix="pass e.g. opacity=(0.0, 0.8)")
    return lo, hi


def _fills(value: Sequence[str]) -> tuple[str, ...]:
    kinds = (value,) if isinstance(value, str) else tuple(value)
    if not kinds or any(k not in FILL_KINDS for k in kinds):
        raise ParameterError(f"fills must be a non-empty choice from {FILL_KINDS}, got "
                             f"{value!r}", fix=f"pass e.g. fills={DRAEM_FILLS}")
    return kinds


def add_training_anomaly(image: np.ndarray, rng: np.random.Generator,
                         sources: np.ndarray | None = None, *, exclude: int | None = None,
                         fills: Sequence[str] = DRAEM_FILLS,
                         opacity: Sequence[float] = (0.0, 0.8),
                         scale_exponents: Sequence[int] | None = None,
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Blend one Perlin-masked fill (kind drawn uniformly from ``fills``) into ``image``.

    Args:
        image: uint8 or float in [0, 1], (H, W, C) with C 1 or 3.
        rng: source of every random choice.
        sources: uint8 or float in [0, 1], (M, H', W', C), H', W' >= 8: defect-free images
            for the ``"image"`` fill (needed only when that fill is drawn).
        exclude: index into ``sources`` that is never drawn (``image``'s own), or None.
        fills: the fill kinds to draw from, a subset of :data:`FILL_KINDS`.
        opacity: (lo, hi), 0 <= lo <= hi < 1: range of beta, the share of ``image`` kept.
        scale_exponents: see :func:`perlin_mask`.

    Returns:
        ``(corrupted, mask)``: float32 (H, W, C) in [0, 1], equal to ``image`` outside the
        mask; bool (H, W), never empty.

    Example:
        >>> out, mask = add_training_anomaly(np.zeros((32, 32, 1)), np.random.default_rng(0),
        ...                                  fills=["colour"])
        >>> out.shape, bool(mask.any()), bool((out[~mask] == 0).all())
        ((32, 32, 1), True, True)
    """
    _check_image(image, "image", batch=False)
    kinds, (lo, hi) = _fills(fills), _opacity(opacity)
    if sources is not None:
        _check_image(sources, "sources", batch=True)
        if sources.shape[-1] != image.shape[-1]:
            raise ParameterError(f"sources have {sources.shape[-1]} channels, the images "
                                 f"{image.shape[-1]}", fix="pass sources of the same colour mode")
    return _add(_to_unit(image), rng, sources, exclude, kinds, (lo, hi),
                _exponents(scale_exponents, min(image.shape[:2])))


def _add(work: np.ndarray, rng: np.random.Generator, sources: np.ndarray | None,
         exclude: int | None, kinds: tuple[str, ...], opacity: tuple[float, float],
         exponents: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """:func:`add_training_anomaly` on a float32 (H, W, C) image already checked; in place."""
    mask = perlin_mask(work.shape[:2], rng, exponents)
    kind = kinds[int(rng.integers(len(kinds)))]
    if kind == "image":
        if sources is None:
            raise ParameterError("fills include 'image' but no sources were given",
                                 fix="pass sources=<defect-free images>, or fills without "
                                     "'image'")
        fill = _image_fill(work.shape, rng, sources, exclude)
    elif kind == "noise":
        fill = _noise_fill(work.shape, rng, exponents)
    elif kind == "colour":
        fill = _colour_fill(work.shape, rng)
    else:
        fill, mask = training_fills.FILLS[kind](work, mask, rng)
    beta = np.float32(rng.uniform(*opacity)) if kind in DRAEM_FILLS else np.float32(0)
    work[mask] = (1 - beta) * fill[mask] + beta * work[mask]
    return np.clip(work, 0, 1, out=work), mask


def make_training_anomalies(
    images: np.ndarray, sources: np.ndarray | None, seed: int | np.random.Generator, *,
    exclude: Sequence[int] | None = None, clean_fraction: float = 0.5,
    fills: Sequence[str] = DRAEM_FILLS, opacity: Sequence[float] = (0.0, 0.8),
    scale_exponents: Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Corrupt a batch of defect-free images for training, each with probability
    ``1 - clean_fraction``; ``images`` and ``sources`` are not modified.

    Args:
        images: uint8 or float in [0, 1], (N, H, W, C) with C 1 or 3.
        sources: the same kind of array, (M, H', W', C): defect-free images for the
            ``"image"`` fill. None: ``images`` themselves, and sample i never draws image i.
        seed: an integer or a Generator (same seed, same result).
        exclude: (N,) indices into ``sources``: sample i never draws ``exclude[i]`` (its own
            index there; a negative index excludes nothing). Only with explicit ``sources``.
        clean_fraction: in [0, 1], the probability that a sample stays clean.
        fills, opacity, scale_exponents: see :func:`add_training_anomaly`.

    Returns:
        ``(corrupted, masks)``: float32 (N, H, W, C) in [0, 1]; float32 (N, H, W, 1) in
        {0, 1}, all zero for the clean samples (whose images equal the input in [0, 1]).
    """
    _check_image(images, "images", batch=True)
    kinds, window = _fills(fills), _opacity(opacity)
    exponents = _exponents(scale_exponents, min(images.shape[1:3]))
    n = images.shape[0]
    if isinstance(clean_fraction, bool) or not 0 <= float(clean_fraction) <= 1:
        raise ParameterError(f"clean_fraction must be in [0, 1], got {clean_fraction!r}",
                             fix="pass e.g. clean_fraction=0.5")
    if sources is None:
        if exclude is not None:
            raise ParameterError("exclude needs explicit sources (without them each sample "
                                 "already skips itself)", fix="pass sources, or exclude=None")
        sources, skip = images, np.arange(n)
    else:
        _check_image(sources, "sources", batch=True)
        if sources.shape[-1] != images.shape[-1]:
            raise ParameterError(f"sources have {sources.shape[-1]} channels, the images "
                                 f"{images.shape[-1]}", fix="pass sources of the same colour mode")
        skip = np.full(n, -1) if exclude is None else np.asarray(exclude)
        if skip.shape != (n,) or not np.issubdtype(skip.dtype, np.integer):
            raise ParameterError(f"exclude must hold one integer index per image ({n}), got "
                                 f"shape {skip.shape}", fix="pass exclude=None or N indices")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer, np.random.Generator)):
        raise ParameterError(f"seed must be an integer or a numpy Generator, got {seed!r}",
                             fix="pass e.g. seed=0")
    rng = np.random.default_rng(seed)
    out = _to_unit(images)
    masks = np.zeros(images.shape[:3] + (1,), np.float32)
    for i in np.flatnonzero(rng.random(n) >= float(clean_fraction)):
        _, mask = _add(out[i], rng, sources, int(skip[i]), kinds, window, exponents)
        masks[i, ..., 0] = mask
    return out, masks
