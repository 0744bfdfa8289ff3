"""Training-anomaly fills shaped like real defects, beside DRAEM's (for the segmentation head).

DRAEM's fills in :mod:`anomaly_utils.data.training_anomalies` paste something foreign (another
image's texture, noise, a colour) into a Perlin blob, blended at a random opacity, so a head
trained on them learns "a foreign patch" and misses defects made of the surface itself: a
large smooth band, a hairline crack, a region out of focus, a change of grain at the same
brightness. Each fill here makes one of these, from the image itself or from procedural
noise, at full opacity and at a strength of its own:

0. :func:`shading_fill`: the image, contrast scaled by 0.8-1.25 about its mean and brightness
   shifted by 0.05-0.3 of the value range: normal texture at another level.

The four below measure their strength in the image's own spread (its standard deviation, at
least :data:`MIN_SPREAD`):

1. :func:`gradient_fill`: its own region, 10-50 % of the image (a smooth random field, blob-
   or band-like, thresholded at the quantile giving that area), brightened or darkened by a
   ramp or a low-frequency field that peaks at 0.5-2 spreads, with soft edges (the change
   falls to a quarter of the profile at the mask's edge);
2. :func:`crack_fill`: its own mask, a line: a random walk with momentum (its turning rate
   persists from step to step, with rare kinks), from a random point, heading within 90
   degrees of the centre, 0.3-0.9 of the side long, half the time
   with one or two branches, 1-3 px wide at the crop's resolution, darker (70 %) or brighter
   by 0.5-2 spreads; never 4x4 pixels thick anywhere;
3. :func:`blur_fill`: the Perlin region replaced by a Gaussian blur of the image (sigma 1 to
   max(2, side / 32) px) or, a third of the time, by an unsharp mask of it (amount 1-3),
   shifted per channel to keep the region's mean;
4. :func:`texture_fill`: the Perlin region filled with a procedural texture (warped oriented
   stripes, cellular/Worley noise, or fractal noise; feature size 3 to max(8, side / 4) px),
   one map for all channels, with each channel's mean and standard deviation under the
   region (the latter at least :data:`MIN_SPREAD`): a change of texture, not of brightness.

Each takes the float32 (H, W, C) image in [0, 1], the Perlin mask drawn for it and the rng,
and returns ``(fill, mask)``: the float32 (H, W, C) values in [0, 1] to write inside the mask,
and the non-empty bool (H, W) mask (the Perlin mask itself, except for ``gradient`` and
``crack``). :data:`FILLS` maps each fill's name in ``anomaly_fills`` to its function.

They stay apart from the validation kinds of :mod:`anomaly_utils.data.real_like_anomalies`,
so that the lab's validation set keeps testing generalisation: their regions are Perlin blobs
and thresholded bicubic fields, not blurred star polygons; the crack is a momentum walk, not
a Brownian bridge between two points; the texture is procedural, not the image's own
resampled; the gradient varies across its region, where ``faint_area`` shifts it evenly.

Example:
    >>> rng = np.random.default_rng(0)
    >>> image = rng.uniform(0.3, 0.7, (64, 64, 1)).astype(np.float32)
    >>> fill, mask = crack_fill(image, np.zeros((64, 64), bool), rng)
    >>> fill.shape, bool(mask.any()), bool(mask.mean() < 0.1)
    ((64, 64, 1), True, True)
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np
from pyfastnoiselite.pyfastnoiselite import (
    CellularReturnType,
    FastNoiseLite,
    FractalType,
    NoiseType,
)

MIN_SPREAD = 0.03  # floor of the image spread the strengths are measured in (flat images)
THICK = np.ones((4, 4), np.uint8)  # a crack never holds this square


def _spread(work: np.ndarray) -> float:
    return max(float(work.std()), MIN_SPREAD)


def _ramp(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """float32 (H, W) in [0, 1], linear along a random direction."""
    h, w = shape
    theta = rng.uniform(0, 2 * np.pi)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    ramp = x * np.float32(np.cos(theta)) + y * np.float32(np.sin(theta))
    return (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)


def _smooth_field(shape: tuple[int, int], rng: np.random.Generator,
                  cells: tuple[int, int] = (2, 4)) -> np.ndarray:
    """float32 (H, W) in [0, 1]: a random grid of 2-4 by 2-4 values, bicubically enlarged."""
    h, w = shape
    rows, cols = rng.integers(cells[0], cells[1] + 1, 2)
    grid = rng.random((int(rows), int(cols))).astype(np.float32)
    field = cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
    return (field - field.min()) / max(float(np.ptp(field)), 1e-6)


def shading_fill(work: np.ndarray, mask: np.ndarray,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``work``, contrast x0.8-1.25 about its mean, brightness +-0.05-0.3 of the range."""
    mean = work.mean(dtype=np.float32)
    gain = np.float32(np.exp(rng.uniform(np.log(0.8), np.log(1.25))))
    shift = np.float32(rng.uniform(0.05, 0.3) * rng.choice((-1.0, 1.0)))
    return np.clip((work - mean) * gain + mean + shift, 0, 1, dtype=np.float32), mask


def gradient_fill(work: np.ndarray, mask: np.ndarray,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A large soft region brightened or darkened by a smooth ramp or field.

    ``mask`` is not used: the region is drawn here. The change is ``sign * a * spread *
    weight * profile`` (the same in every channel), with ``a`` in [0.5, 2], the profile a
    ramp or a low-frequency field in [0.5, 1], and the weight 1 inside the region falling
    smoothly to 0.25 at its edge.

    Example:
        >>> image = np.full((64, 64, 1), 0.5, np.float32)
        >>> fill, m = gradient_fill(image, None, np.random.default_rng(0))
        >>> bool(0.09 < m.mean() < 0.51), bool(np.abs(fill - image).max() <= 2 * MIN_SPREAD)
        (True, True)
    """
    shape = work.shape[:2]
    mix = np.float32(rng.random())  # 1: a band across the image, 0: a blob
    field = mix * _ramp(shape, rng) + (1 - mix) * _smooth_field(shape, rng)
    edge = np.float32(np.quantile(field, 1 - rng.uniform(0.1, 0.5)))
    region = field > edge
    if not region.any():
        region = field >= edge
    inside = np.clip((field - edge) / max(0.5 * float(field.max() - edge), 1e-6), 0, 1)
    weight = 0.25 + 0.75 * inside * inside * (3 - 2 * inside)  # smoothstep
    profile = _ramp(shape, rng) if rng.random() < 0.5 else _smooth_field(shape, rng)
    size = rng.uniform(0.5, 2.0) * _spread(work) * rng.choice((-1.0, 1.0))
    change = np.float32(size) * weight * (0.5 + 0.5 * profile)
    return np.clip(work + change[..., None], 0, 1, dtype=np.float32), region


def _walk(rng: np.random.Generator, start: np.ndarray, heading: float, length: float,
          step: float = 1.5) -> np.ndarray:
    """float64 (n, 2) points (x, y) of a walk whose turning rate persists (momentum 0.85),
    with a kink of about 45 degrees at 4 % of the steps."""
    n = max(2, int(np.ceil(length / step)))
    kicks = rng.normal(0, 0.08, n) + (rng.random(n) < 0.04) * rng.normal(0, 0.8, n)
    rate, angles = 0.0, np.empty(n)
    for k in range(n):
        rate = 0.85 * rate + kicks[k]
        heading += rate
        angles[k] = heading
    steps = step * np.stack([np.cos(angles), np.sin(angles)], 1)
    return start + np.vstack([[0.0, 0.0], np.cumsum(steps, 0)])


def crack_fill(work: np.ndarray, mask: np.ndarray,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A thin jagged line, sometimes branching, darker or brighter by 0.5-2 spreads.

    ``mask`` is not used: the mask returned is the line's pixels. The change varies smoothly
    along the line between 60 % and 100 % of its size. Where branches or a tight turn would
    make the line 4x4 pixels thick, only its one-pixel skeleton is kept there.

    Example:
        >>> image = np.full((64, 64, 3), 0.5, np.float32)
        >>> _, m = crack_fill(image, None, np.random.default_rng(1))
        >>> bool(m.any()), bool(cv2.erode(m.astype(np.uint8), THICK, borderValue=0).any())
        (True, False)
    """
    h, w = work.shape[:2]
    side = min(h, w)
    start = np.array([rng.uniform(0.1, 0.9) * (w - 1), rng.uniform(0.1, 0.9) * (h - 1)])
    inward = np.arctan2((h - 1) / 2 - start[1], (w - 1) / 2 - start[0])
    main = _walk(rng, start, inward + rng.uniform(-np.pi / 2, np.pi / 2),
                 rng.uniform(0.3, 0.9) * side)
    paths = [main]
    for _ in range(int(rng.integers(1, 3)) if rng.random() < 0.5 else 0):
        k = int(rng.integers(len(main) - 1))
        ahead = np.arctan2(*(main[k + 1] - main[k])[::-1])
        turn = rng.uniform(np.pi / 6, np.pi / 3) * rng.choice((-1.0, 1.0))
        paths.append(_walk(rng, main[k], ahead + turn, rng.uniform(0.15, 0.4) * side))
    skeleton = np.zeros((h, w), np.uint8)
    cv2.polylines(skeleton, [np.rint(p).astype(np.int32) for p in paths], False, 1, 1,
                  cv2.LINE_8)
    width = int(rng.choice((1, 2, 3), p=(0.4, 0.35, 0.25)))
    line = cv2.dilate(skeleton, np.ones((width, width), np.uint8)) if width > 1 else skeleton
    thick = cv2.morphologyEx(line, cv2.MORPH_OPEN, THICK, borderType=cv2.BORDER_CONSTANT,
                             borderValue=0)
    if thick.any():
        line = (line & (1 - thick)) | skeleton
        if cv2.erode(line, THICK, borderType=cv2.BORDER_CONSTANT, borderValue=0).any():
            line = line & (1 - thick)  # a coiled skeleton: cut the thick part out
    region = line.astype(bool)
    if not region.any():  # only where the skeleton itself coils into a 4x4 square
        region[int(round(start[1])), int(round(start[0]))] = True
    sign = -1.0 if rng.random() < 0.7 else 1.0
    size = sign * rng.uniform(0.5, 2.0) * _spread(work)
    change = np.float32(size) * (0.6 + 0.4 * _smooth_field((h, w), rng, (3, 6)))
    return np.clip(work + change[..., None], 0, 1, dtype=np.float32), region


def _keep_mean(work: np.ndarray, fill: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``fill`` shifted per channel to ``work``'s mean under ``mask``, clipped to [0, 1]."""
    shift = work[mask].mean(axis=0) - fill[mask].mean(axis=0)
    return np.clip(fill + shift, 0, 1, dtype=np.float32)


def blur_fill(work: np.ndarray, mask: np.ndarray,
              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``work`` blurred (two thirds of the time) or sharpened, its mean under ``mask`` kept.

    Example:
        >>> image = np.random.default_rng(0).uniform(0.3, 0.7, (32, 32, 1)).astype(np.float32)
        >>> m = np.zeros((32, 32), bool); m[8:24, 8:24] = True
        >>> fill, _ = blur_fill(image, m, np.random.default_rng(1))  # a blur
        >>> bool(fill[m].std() < image[m].std()), bool(abs(fill[m].mean() - image[m].mean()) < 1e-3)
        (True, True)
    """
    sigma = rng.uniform(1.0, max(2.0, min(work.shape[:2]) / 32))
    blurred = cv2.GaussianBlur(work, (0, 0), sigma).reshape(work.shape)
    if rng.random() < 1 / 3:
        blurred = work + np.float32(rng.uniform(1.0, 3.0)) * (work - blurred)
    return _keep_mean(work, blurred, mask), mask


def _noise_texture(shape: tuple[int, int], rng: np.random.Generator, size: float,
                   cellular: bool) -> np.ndarray:
    """float32 (H, W): cellular (Worley) or fractal noise with features of ``size`` pixels."""
    h, w = shape
    generator = FastNoiseLite(seed=int(rng.integers(0, 2**31 - 1)))
    generator.frequency = 1.0 / size
    if cellular:
        generator.noise_type = NoiseType.NoiseType_Cellular
        generator.cellular_return_type = (
            CellularReturnType.CellularReturnType_Distance,
            CellularReturnType.CellularReturnType_Distance2Sub,
            CellularReturnType.CellularReturnType_CellValue)[int(rng.integers(3))]
    else:
        generator.noise_type = NoiseType.NoiseType_OpenSimplex2
        generator.fractal_type = (FractalType.FractalType_FBm,
                                  FractalType.FractalType_Ridged)[int(rng.integers(2))]
        generator.fractal_octaves = int(rng.integers(3, 6))
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    offset = rng.uniform(0, 1024, 2).astype(np.float32)
    coords = np.stack([x.ravel() + offset[0], y.ravel() + offset[1]])
    return generator.gen_from_coords(coords).reshape(h, w).astype(np.float32)


def _stripes(shape: tuple[int, int], rng: np.random.Generator, size: float) -> np.ndarray:
    """float32 (H, W): oriented stripes of period ``2 * size`` px, their phase warped by a
    smooth field (up to a period), so that they bend like a grain."""
    h, w = shape
    theta = rng.uniform(0, np.pi)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    along = x * np.float32(np.cos(theta)) + y * np.float32(np.sin(theta))
    warp = np.float32(rng.uniform(0, 2 * np.pi)) * _smooth_field(shape, rng)
    return np.cos(along * np.float32(np.pi / size) + warp)


def texture_fill(work: np.ndarray, mask: np.ndarray,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A procedural texture with each channel's mean and spread under ``mask``.

    Example:
        >>> image = np.random.default_rng(0).uniform(0.4, 0.6, (32, 32, 3)).astype(np.float32)
        >>> m = np.zeros((32, 32), bool); m[4:20, 4:28] = True
        >>> fill, _ = texture_fill(image, m, np.random.default_rng(0))
        >>> bool(np.abs(fill[m].mean(0) - image[m].mean(0)).max() < 1e-3)
        True
    """
    shape = work.shape[:2]
    size = rng.uniform(3.0, max(8.0, min(shape) / 4))
    kind = int(rng.integers(3))
    texture = _stripes(shape, rng, size) if kind == 0 else \
        _noise_texture(shape, rng, size, cellular=kind == 1)
    inside = texture[mask]
    texture = (texture - inside.mean()) / max(float(inside.std()), 1e-6)
    region = work[mask]
    spread = np.maximum(region.std(axis=0), MIN_SPREAD)
    fill = region.mean(axis=0) + spread * texture[..., None]
    return _keep_mean(work, fill.astype(np.float32), mask), mask


FillFunction = Callable[[np.ndarray, np.ndarray, np.random.Generator],
                        tuple[np.ndarray, np.ndarray]]
FILLS: dict[str, FillFunction] = {"shading": shading_fill, "gradient": gradient_fill,
                                  "crack": crack_fill, "blur": blur_fill,
                                  "texture": texture_fill}
