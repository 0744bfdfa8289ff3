"""Pseudo-anomalies shaped like real defects: faint areas, cracks, texture changes, dead regions.

The kinds in :mod:`anomaly_utils.data.pseudo_anomalies` are small and sharp, so a validation set
made of them is easy for every model and cannot rank candidates. Real defects are often faint,
large and smooth, thin, or a change of texture with no change of brightness. Each kind below
makes one of these. One module because the five share the soft, irregular region they paint
in and the rule that sets its mask edge, and the validation mix draws all of them:

1. :func:`faint_area`: a soft-edged irregular region covering 5-30 % of the image, brighter or
   darker by 0.3-1.5 of the image's own standard deviation (uneven grinding, a faint stain);
2. :func:`crack`: a jagged line 1-3 px wide at the image's resolution, 0.5-2.5 image standard
   deviations darker (rarely brighter), with up to 3 branches (a hairline crack);
3. :func:`local_blur`: a soft region replaced by a Gaussian blur of itself with the region's
   mean kept (worn, smoothed or out-of-focus texture);
4. :func:`texture_warp`: a soft region replaced by the image's own texture rotated and
   rescaled about the region, its mean and standard deviation matched to the region's (a patch
   where the texture's orientation or grain differs, at the same brightness);
5. :func:`dark_region`: a region cut off from the image's border by a jagged crack, 5-25 % of
   the image, darkened to 10-65 % of its brightness (an inactive part of a solar cell).

How they differ from the head's training anomalies (:mod:`anomaly_utils.data.training_anomalies`),
so that a validation set made of them measures generalisation, not memorisation: the training
shapes are thresholded Perlin noise, the validation shapes here are blurred random star polygons
(:func:`soft_region`), Brownian-bridge polylines (:func:`jagged_line`) and border regions cut
by them (:func:`border_cut`); the training fills are other images' crops with photometric
augmentations, Perlin noise, flat colours and the image shifted by 0.05-0.3 of the value range,
the fills here are the image itself shifted by a fraction of its own standard deviation,
scaled towards black, blurred, or geometrically resampled with its statistics kept. None uses
Perlin noise, another image, or a colour. The nearest pair is the training ``shading`` fill and
:func:`faint_area`: both shift the image's own brightness, but the one by a share of the value
range inside a hard-edged Perlin mask, the other by a share of the image's spread inside a
soft polygon.

The conventions of :mod:`~anomaly_utils.data.pseudo_anomalies` hold: uint8 or float images
(H, W), (H, W, 1) or (H, W, 3) in, the same shape and dtype out plus a bool (H, W) mask, and no
pixel changed outside the mask. A soft region's mask is where its weight is at least
:data:`REGION_EDGE` of the peak, so the change steps from zero to a quarter of its peak at the
mask's edge. A pixel inside a mask can stay unchanged where rounding to uint8 or clipping to the
value range absorbs the change, or where the fill equals the image (a blur of a flat patch).

Example:
    >>> img = np.random.default_rng(0).integers(60, 200, (64, 64), dtype=np.uint8)
    >>> out, mask = crack(img, np.random.default_rng(0))
    >>> bool((out[~mask] == img[~mask]).all()), bool(mask.mean() < 0.1)
    (True, True)
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from anomaly_utils.data.painting import as_work, checked_range, direction, finish
from anomaly_utils.errors import ParameterError

REGION_EDGE = 0.25  # a soft region's mask: weight >= this fraction of the peak
MIN_CHANGE = 0.01  # floor of a brightness change, fraction of the value range (flat images)


def soft_region(shape: tuple[int, int], rng: np.random.Generator, area: float,
                softness: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """A soft-edged irregular region: a random star polygon, blurred.

    Args:
        shape: (H, W) of the canvas in pixels.
        rng: source of the vertices and the position.
        area: the mask's area as a fraction of H * W, roughly (less where the region crosses
            the border).
        softness: the blur's standard deviation as a fraction of the polygon's mean radius.

    Returns:
        ``(mask, weight)``: bool (H, W), non-empty; float32 (H, W), 1 in the middle, falling
        to :data:`REGION_EDGE` at the mask's edge, 0 outside the mask.

    Example:
        >>> m, wt = soft_region((64, 64), np.random.default_rng(0), 0.2)
        >>> bool(0.1 < m.mean() < 0.3), float(wt.max()), bool((wt[~m] == 0).all())
        (True, 1.0, True)
    """
    h, w = shape
    n = int(rng.integers(6, 13))
    angles = (np.arange(n) + rng.uniform(-0.35, 0.35, n)) * (2 * np.pi / n)
    radii = np.clip(np.exp(rng.normal(0, 0.3, n)), 0.5, 1.8)
    unit = radii[:, None] * np.stack([np.cos(angles), np.sin(angles)], 1)
    # the blurred edge crosses REGION_EDGE (0.25) about 0.67 sigma outside the polygon
    scale = np.sqrt(area * h * w / cv2.contourArea(unit.astype(np.float32))) \
        / (1 + 0.67 * softness)
    centre = np.array([rng.uniform(0.25, 0.75) * (w - 1), rng.uniform(0.25, 0.75) * (h - 1)])
    vertices = centre + scale * unit
    canvas = np.zeros(shape, np.float32)
    cv2.fillPoly(canvas, [np.rint(vertices * 16).astype(np.int32)], 1.0, cv2.LINE_AA, shift=4)
    sigma = max(0.5, softness * scale * radii.mean())
    weight = cv2.GaussianBlur(canvas, (0, 0), sigma)
    if weight.max() <= 0:  # a polygon thinner than a pixel: keep its centre
        weight[int(round(centre[1])), int(round(centre[0]))] = 1.0
    weight /= weight.max()
    mask = weight >= REGION_EDGE
    weight[~mask] = 0
    return mask, weight


def jagged_line(rng: np.random.Generator, start: Sequence[float], end: Sequence[float],
                roughness: float = 0.04, step: float = 4.0) -> np.ndarray:
    """Points of a Brownian bridge from ``start`` to ``end``: a jagged, crack-like polyline.

    Args:
        rng: source of the sideways steps.
        start, end: (x, y) in pixels; the line passes through both exactly.
        roughness: the standard deviation of the sideways offset at the middle, as a fraction
            of the start-to-end distance.
        step: distance between points along the line, pixels.

    Returns:
        float64 (n, 2) array of (x, y) pixel coordinates, n >= 2 (may leave the canvas).

    Example:
        >>> p = jagged_line(np.random.default_rng(0), (0, 0), (40, 0))
        >>> p[0].tolist(), p[-1].tolist()
        ([0.0, 0.0], [40.0, 0.0])
    """
    start, end = np.asarray(start, np.float64), np.asarray(end, np.float64)
    length = float(np.hypot(*(end - start)))
    n = max(2, int(np.ceil(length / step)) + 1)
    t = np.linspace(0, 1, n)
    walk = np.concatenate([[0.0], np.cumsum(rng.normal(0, 1, n - 1))])
    bridge = walk - t * walk[-1]  # pinned to zero at both ends
    # a Brownian bridge's standard deviation at the middle is sqrt(n) / 2 steps
    offset = bridge * (2 * roughness * length / np.sqrt(n))
    normal = np.array([-(end - start)[1], (end - start)[0]]) / max(length, 1e-9)
    return start + t[:, None] * (end - start) + offset[:, None] * normal


def border_cut(shape: tuple[int, int], rng: np.random.Generator, area: float) -> np.ndarray:
    """bool (H, W): a corner or a strip cut off from the image's border by a jagged line.

    Args:
        shape: (H, W) in pixels.
        rng: source of the cut's form, side and line.
        area: the region's target area as a fraction of H * W (the jagged line moves it a
            little), at most 0.5.

    Example:
        >>> m = border_cut((64, 64), np.random.default_rng(0), 0.2)
        >>> bool(0.1 < m.mean() < 0.3), bool(m[0].any() or m[-1].any())
        (True, True)
    """
    h, w = shape
    target = area * h * w
    if rng.random() < 0.5:  # a corner: a triangle with legs a (along x) and b (along y)
        ratio = np.exp(rng.uniform(np.log(0.5), np.log(2.0)))
        a = min(np.sqrt(2 * target * ratio), w)
        b = min(2 * target / a, h)
        cut, outside = ((a, -1.0), (-1.0, b)), [(-1.0, -1.0)]
    elif rng.random() < 0.5:  # a strip along the top, depth d0 at the left and d1 at the right
        d0 = rng.uniform(0.5, 1.5) * target / w
        d1 = np.clip(2 * target / w - d0, 1, h)
        cut, outside = ((-1.0, d0), (float(w), d1)), [(float(w), -1.0), (-1.0, -1.0)]
    else:  # a strip along the left
        d0 = rng.uniform(0.5, 1.5) * target / h
        d1 = np.clip(2 * target / h - d0, 1, w)
        cut, outside = ((d0, -1.0), (d1, float(h))), [(-1.0, float(h)), (-1.0, -1.0)]
    line = jagged_line(rng, cut[0], cut[1], roughness=rng.uniform(0.01, 0.05))
    polygon = np.vstack([line, outside])
    mask = np.zeros(shape, np.uint8)
    cv2.fillPoly(mask, [np.rint(polygon * 16).astype(np.int32)], 1, cv2.LINE_8, shift=4)
    mask = mask.astype(bool)
    if rng.random() < 0.5:
        mask = mask[::-1]
    if rng.random() < 0.5:
        mask = mask[:, ::-1]
    if not mask.any():
        mask[0, 0] = True
    return np.ascontiguousarray(mask)


def _change_size(rng: np.random.Generator, contrast: tuple[float, float], work: np.ndarray,
                 lo: float, hi: float) -> float:
    """A brightness change drawn from ``contrast`` standard deviations of float32 (H, W, C)
    ``work``'s brightness (channel mean), at least :data:`MIN_CHANGE` of the value range."""
    sigma = float(work.mean(axis=2).std())
    return max(rng.uniform(*contrast) * sigma, MIN_CHANGE * (hi - lo))


def _keep_mean_blend(work: np.ndarray, fill: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """``work`` blended towards ``fill`` by ``weight``, with ``fill`` shifted per channel so
    that the weighted blend changes the mean over ``weight > 0`` by exactly zero.

    Args:
        work, fill: float32 (H, W, C).
        weight: float32 (H, W) in [0, 1], not all zero.
    """
    alpha = weight[..., None]
    shift = -(alpha * (fill - work)).sum(axis=(0, 1)) / alpha.sum()
    return work + alpha * (fill + shift - work)


def _check_count(name: str, value: Sequence[int], low: int, high: int) -> tuple[int, int]:
    try:
        a, b = (int(v) for v in value)
        ok = all(float(v) == int(v) for v in value) and low <= a <= b <= high
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ParameterError(f"{name} must be a pair of integers {low} <= min <= max <= {high}, "
                             f"got {value!r}", fix=f"pass e.g. {name}=({low}, {high})")
    return a, b


def faint_area(image: np.ndarray, rng: np.random.Generator,
               area: tuple[float, float] = (0.05, 0.3),
               contrast: tuple[float, float] = (0.3, 1.5),
               softness: tuple[float, float] = (0.1, 0.35)) -> tuple[np.ndarray, np.ndarray]:
    """Brighten or darken a large soft-edged region by a fraction of the image's own spread.

    The change is the same in every channel (brightness, not colour), full in the region's
    middle and fading to :data:`REGION_EDGE` of it at the mask's edge.

    Args:
        image: uint8 or float (H, W), (H, W, 1) or (H, W, 3).
        rng: source of every random choice.
        area: range of the region's area as a fraction of H * W.
        contrast: range of the peak change in standard deviations of the image's brightness
            (at least :data:`MIN_CHANGE` of the value range, for nearly flat images).
        softness: range of the edge blur, fraction of the region's radius.

    Returns:
        ``(image_with_anomaly, mask)``: same shape and dtype as ``image``; bool (H, W) mask,
        non-empty; pixels outside the mask are unchanged.

    Example:
        >>> img = np.random.default_rng(1).normal(0.5, 0.1, (64, 64)).clip(0, 1)
        >>> out, mask = faint_area(img, np.random.default_rng(0))
        >>> bool(abs((out - img)[mask].mean()) <= 1.5 * img.std()), bool(mask.mean() > 0.03)
        (True, True)
    """
    work, lo, hi = as_work(image)
    a_lo, a_hi = checked_range("area", area, upper=0.5)
    c_lo, c_hi = checked_range("contrast", contrast)
    s_lo, s_hi = checked_range("softness", softness, upper=2.0)
    mask, weight = soft_region(work.shape[:2], rng, rng.uniform(a_lo, a_hi),
                               rng.uniform(s_lo, s_hi))
    magnitude = _change_size(rng, (c_lo, c_hi), work, lo, hi)
    delta = direction(rng, work[mask], lo, hi) * magnitude
    return finish(image, work + (weight * delta)[..., None], mask, lo, hi)


def crack(image: np.ndarray, rng: np.random.Generator,
          length: tuple[float, float] = (0.2, 0.8), width: tuple[int, int] = (1, 3),
          contrast: tuple[float, float] = (0.5, 2.5),
          branches: tuple[int, int] = (0, 3)) -> tuple[np.ndarray, np.ndarray]:
    """Draw a thin jagged crack, usually darker, optionally branching.

    Unlike the other sizes, the width is in pixels: a hairline crack is 1-3 px wide at any
    resolution. A line wider than 1 px changes its outer pixels by 60 % of its centre's change,
    as the optics blur a real crack. The mask is exactly the line's pixels.

    Args:
        image: uint8 or float (H, W), (H, W, 1) or (H, W, 3).
        rng: source of every random choice.
        length: range of the main line's end-to-end length as a fraction of min(H, W).
        width: range of the line width in pixels, integers in 1..3.
        contrast: range of the change at the line's centre in standard deviations of the
            image's brightness (at least :data:`MIN_CHANGE` of the value range).
        branches: range of the number of side branches (each 15-50 % of the main line's length,
            leaving it at 20-60 degrees), integers in 0..5.

    Returns:
        ``(image_with_anomaly, mask)`` as for :func:`faint_area`.

    Example:
        >>> img = np.full((64, 64, 3), 0.5, np.float32)
        >>> out, mask = crack(img, np.random.default_rng(0))
        >>> bool((out[mask] < 0.5).any()), bool((out[~mask] == 0.5).all())
        (True, True)
    """
    work, lo, hi = as_work(image)
    l_lo, l_hi = checked_range("length", length, upper=1.5)
    w_lo, w_hi = _check_count("width", width, 1, 3)
    c_lo, c_hi = checked_range("contrast", contrast)
    b_lo, b_hi = _check_count("branches", branches, 0, 5)
    h, w = work.shape[:2]
    core = _draw_crack((h, w), rng, rng.uniform(l_lo, l_hi) * min(h, w),
                       int(rng.integers(b_lo, b_hi + 1)))
    line = _widen(core, int(rng.integers(w_lo, w_hi + 1)))
    profile = np.where(core, 1.0, 0.6).astype(np.float32)
    magnitude = _change_size(rng, (c_lo, c_hi), work, lo, hi)
    delta = _crack_sign(rng, float(work[line].mean()), magnitude, lo, hi) * magnitude
    return finish(image, work + (profile * delta)[..., None], line, lo, hi)


def _draw_crack(shape: tuple[int, int], rng: np.random.Generator, length: float,
                n_branches: int) -> np.ndarray:
    """bool (H, W): 1-px (8-connected) centre line of a crack of ``length`` pixels end to end,
    with ``n_branches`` branches; never empty."""
    h, w = shape
    start = np.array([rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.9) * h])
    heading = rng.uniform(0, 2 * np.pi)
    main = jagged_line(rng, start, start + length * np.array([np.cos(heading), np.sin(heading)]),
                       roughness=rng.uniform(0.02, 0.08))
    paths = [main]
    for _ in range(n_branches):
        origin = main[int(rng.integers(len(main) // 5, len(main) - len(main) // 5))]
        angle = heading + rng.choice((-1.0, 1.0)) * np.deg2rad(rng.uniform(20, 60))
        reach = rng.uniform(0.15, 0.5) * length
        paths.append(jagged_line(rng, origin, origin + reach * np.array([np.cos(angle),
                                                                          np.sin(angle)]),
                                 roughness=rng.uniform(0.02, 0.08)))
    canvas = np.zeros(shape, np.uint8)
    cv2.polylines(canvas, [np.rint(p).astype(np.int32) for p in paths], False, 1, 1, cv2.LINE_8)
    if not canvas.any():  # the whole crack fell outside: keep its start, clipped inside
        canvas[int(np.clip(start[1], 0, h - 1)), int(np.clip(start[0], 0, w - 1))] = 1
    return canvas.astype(bool)


def _widen(centre: np.ndarray, width: int) -> np.ndarray:
    """bool (H, W): the 1-px line ``centre`` made ``width`` (1, 2 or 3) pixels wide."""
    if width == 1:
        return centre
    kernel = np.ones((2, 2), np.uint8) if width == 2 else \
        cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    return cv2.dilate(centre.astype(np.uint8), kernel).astype(bool)


def _crack_sign(rng: np.random.Generator, mean: float, magnitude: float, lo: float,
                hi: float) -> float:
    """-1 (darker) with probability 0.85, else +1; the other way when only that side has room
    for ``magnitude`` next to ``mean``."""
    room = {-1.0: mean - lo, 1.0: hi - mean}
    sign = -1.0 if rng.random() < 0.85 else 1.0
    return -sign if room[sign] < magnitude <= room[-sign] else sign


def local_blur(image: np.ndarray, rng: np.random.Generator,
               area: tuple[float, float] = (0.03, 0.2),
               sigma: tuple[float, float] = (0.008, 0.03)) -> tuple[np.ndarray, np.ndarray]:
    """Replace a soft region by a Gaussian blur of the image, keeping the region's mean.

    The blur removes fine texture without moving the region's mean brightness (exactly, before
    rounding and clipping), so only the texture tells the region apart.

    Args:
        image: uint8 or float (H, W), (H, W, 1) or (H, W, 3).
        rng: source of every random choice.
        area: range of the region's area as a fraction of H * W.
        sigma: range of the blur's standard deviation as a fraction of min(H, W) (at least
            1 pixel).

    Returns:
        ``(image_with_anomaly, mask)`` as for :func:`faint_area`.

    Example:
        >>> img = np.random.default_rng(1).random((64, 64)).astype(np.float32)
        >>> out, mask = local_blur(img, np.random.default_rng(0))
        >>> float(out[mask].std() / img[mask].std()) < 0.8
        True
        >>> float(abs(out[mask].mean() - img[mask].mean())) < 1e-3
        True
    """
    work, lo, hi = as_work(image)
    a_lo, a_hi = checked_range("area", area, upper=0.5)
    s_lo, s_hi = checked_range("sigma", sigma, upper=0.2)
    h, w, channels = work.shape
    mask, weight = soft_region((h, w), rng, rng.uniform(a_lo, a_hi), rng.uniform(0.1, 0.3))
    blur = max(1.0, rng.uniform(s_lo, s_hi) * min(h, w))
    blurred = cv2.GaussianBlur(work, (0, 0), blur, borderType=cv2.BORDER_REFLECT)
    return finish(image, _keep_mean_blend(work, blurred.reshape(h, w, channels), weight),
                   mask, lo, hi)


def texture_warp(image: np.ndarray, rng: np.random.Generator,
                 area: tuple[float, float] = (0.03, 0.2),
                 zoom: tuple[float, float] = (1.3, 2.5),
                 rotation: tuple[float, float] = (15.0, 90.0)) -> tuple[np.ndarray, np.ndarray]:
    """Replace a soft region by the image's own texture, rotated and rescaled, same statistics.

    The image is rotated and zoomed about the region's centre (coarser grain, or finer: the
    zoom is inverted half of the time), then shifted and scaled per channel so that its mean
    and standard deviation over the region equal the original's; the blend keeps the region's
    mean exactly (before rounding and clipping).

    Args:
        image: uint8 or float (H, W), (H, W, 1) or (H, W, 3).
        rng: source of every random choice.
        area: range of the region's area as a fraction of H * W.
        zoom: range of the magnification, >= 1 (inverted half of the time).
        rotation: range of the rotation in degrees, either way.

    Returns:
        ``(image_with_anomaly, mask)`` as for :func:`faint_area`.

    Example:
        >>> img = np.random.default_rng(1).random((64, 64)).astype(np.float32)
        >>> out, mask = texture_warp(img, np.random.default_rng(0))
        >>> float(abs(out[mask].mean() - img[mask].mean())) < 1e-3
        True
        >>> float(np.corrcoef(out[mask], img[mask])[0, 1]) < 0.5
        True
    """
    work, lo, hi = as_work(image)
    a_lo, a_hi = checked_range("area", area, upper=0.5)
    z_lo, z_hi = checked_range("zoom", zoom)
    r_lo, r_hi = checked_range("rotation", rotation, upper=180.0)
    if z_lo < 1:
        raise ParameterError(f"zoom must be >= 1 (it is inverted half of the time), got {zoom!r}",
                             fix="pass e.g. zoom=(1.3, 2.5)")
    h, w, channels = work.shape
    # a narrow soft edge: where two unrelated textures mix, the local contrast drops
    mask, weight = soft_region((h, w), rng, rng.uniform(a_lo, a_hi), rng.uniform(0.03, 0.1))
    magnification = rng.uniform(z_lo, z_hi) ** rng.choice((-1.0, 1.0))
    angle = rng.choice((-1.0, 1.0)) * rng.uniform(r_lo, r_hi)
    rows, cols = np.nonzero(mask)
    warp = cv2.getRotationMatrix2D((float(cols.mean()), float(rows.mean())), angle,
                                   magnification)
    warped = cv2.warpAffine(work, warp, (w, h), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_REFLECT).reshape(h, w, channels)
    fill = np.clip(_match_statistics(warped, work, mask), lo, hi)
    return finish(image, _keep_mean_blend(work, fill, weight), mask, lo, hi)


def _match_statistics(source: np.ndarray, target: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """float32 (H, W, C) ``source`` shifted and scaled per channel so its mean and standard
    deviation over ``mask`` equal ``target``'s there."""
    s, t = source[mask], target[mask]
    gain = t.std(axis=0) / np.maximum(s.std(axis=0), 1e-6)
    return (source - s.mean(axis=0)) * gain + t.mean(axis=0)


def dark_region(image: np.ndarray, rng: np.random.Generator,
                area: tuple[float, float] = (0.05, 0.25),
                darkness: tuple[float, float] = (0.35, 0.9)) -> tuple[np.ndarray, np.ndarray]:
    """Darken a region cut off from the border by a jagged crack, as a dead solar-cell part.

    Every pixel's distance above the value range's minimum is scaled by ``1 - darkness``, so
    the texture stays faintly visible, as in an inactive cell part; the edge is sharp.

    Args:
        image: uint8 or float (H, W), (H, W, 1) or (H, W, 3).
        rng: source of every random choice.
        area: range of the region's area as a fraction of H * W, at most 0.5.
        darkness: range of the fraction of brightness removed, in (0, 1].

    Returns:
        ``(image_with_anomaly, mask)`` as for :func:`faint_area`.

    Example:
        >>> img = np.full((64, 64), 180, np.uint8)
        >>> out, mask = dark_region(img, np.random.default_rng(0))
        >>> bool((out[mask] < 120).all()), bool((out[~mask] == 180).all())
        (True, True)
    """
    work, lo, hi = as_work(image)
    a_lo, a_hi = checked_range("area", area, upper=0.5)
    d_lo, d_hi = checked_range("darkness", darkness, upper=1.0)
    mask = border_cut(work.shape[:2], rng, rng.uniform(a_lo, a_hi))
    gain = np.float32(1 - rng.uniform(d_lo, d_hi))
    return finish(image, lo + (work - lo) * gain, mask, lo, hi)
