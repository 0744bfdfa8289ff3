"""Synthetic anomalies pasted into defect-free images, for a labelled validation set.

One module because every pasted-anomaly kind draws from the same seeded blending of a
source patch into a normal image, and the labelled validation set mixes all of them; the kinds
shaped like real defects live in :mod:`anomaly_utils.data.real_like_anomalies`, built on the
helpers here.

When a dataset has no labelled defects (e.g. only good magnetic-tile photographs), model
selection and threshold choice still need anomalous examples. This module makes them from the
normal images themselves:

1. :func:`cut_paste`: a patch of the image's own texture (rectangular or irregular, optionally
   rotated and brightness-jittered) pasted elsewhere (CutPaste, Li et al., CVPR 2021);
2. :func:`stain`: a smooth blob of changed intensity (gray) or colour (RGB) with soft edges;
3. :func:`scratch`: a thin random curve of darker or brighter pixels;
4. :func:`shading_band`: a wide straight band of changed brightness across the image, an
   area defect (uneven grinding, a wash-out) that the small kinds above never produce;
5. the real-like kinds (:data:`REAL_LIKE_KINDS`, made in
   :mod:`~anomaly_utils.data.real_like_anomalies`): ``faint_area`` (a large soft region
   0.3-1.5 image standard deviations brighter or darker), ``crack`` (a jagged, possibly
   branching line 1-3 px wide, barely darker), ``local_blur`` and ``texture_warp`` (a soft
   region whose texture is blurred, or rotated and rescaled, at the same mean brightness) and
   ``dark_region`` (a border region cut off by a crack and darkened, like an inactive
   solar-cell part). Cut-paste, stain and scratch are small and sharp, so every model finds
   them and a validation set of them alone cannot rank models; these are faint, large, thin
   or brightness-neutral, like many real defects;
6. :func:`make_labelled_validation`: copies a stack of normal images, keeps some clean and adds
   one random anomaly to each of the others, its kind drawn from :data:`VALIDATION_MIX` (every
   kind) unless ``kinds`` says otherwise; ``kinds=SHARP_KINDS`` gives the mix used before the
   real-like kinds existed;
7. :func:`make_balanced_validation`: every normal once clean, plus an equal number of
   anomalous copies of every kind (the set a run judges its candidates on,
   :mod:`anomaly_utils.scoring.validation_set`).

Every function accepts uint8 or float images shaped (H, W), (H, W, 1) or (H, W, 3), returns an
image of the same shape and dtype plus a bool (H, W) mask, and changes no pixel outside the
mask. A pixel inside the mask can stay unchanged where rounding to uint8 or clipping to the
value range absorbs a faint change (or, for the texture kinds, where the new texture happens to
equal the old). Sizes are fractions of the image side (a crack's width is in pixels); contrast
is drawn from a range that includes faint anomalies. Float images in [0, 1] are kept in
[0, 1]; other float images are kept within their own minimum and maximum.

Example:
    >>> rng = np.random.default_rng(0)
    >>> normals = rng.integers(0, 256, (4, 64, 64), dtype=np.uint8)
    >>> images, labels, masks, kinds = make_labelled_validation(normals, 0)
    >>> images.shape, labels.tolist(), bool(masks[labels == 0].any())
    ((4, 64, 64), [0, 0, 1, 1], False)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import cv2
import numpy as np

from anomaly_utils.data import real_like_anomalies as real
from anomaly_utils.data.painting import (
    as_work,
    blob_mask,
    checked_range,
    direction,
    distance_to_curve,
    finish,
    random_curve,
)
from anomaly_utils.errors import ParameterError

# Small, sharp kinds: every model finds them (the default mix before the real-like kinds).
SHARP_KINDS: tuple[str, ...] = ("cut_paste", "stain", "scratch")
REAL_LIKE_KINDS: tuple[str, ...] = ("faint_area", "crack", "local_blur", "texture_warp",
                                    "dark_region")
ALL_KINDS: tuple[str, ...] = (*SHARP_KINDS, "shading", *REAL_LIKE_KINDS)
VALIDATION_MIX: tuple[str, ...] = ALL_KINDS  # the default kinds of a labelled validation set
NORMAL_KIND = "good"
LABELLED = "labelled/"  # kind prefix of a dataset's own labelled validation defects


def _signed_delta(rng: np.random.Generator, region: np.ndarray, lo: float, hi: float,
                  strength: float) -> float:
    """A change of ``strength`` * range, usually towards the side with more headroom."""
    return direction(rng, region, lo, hi) * strength * (hi - lo)


def _ensure_nonempty(mask: np.ndarray, center: Sequence[float]) -> np.ndarray:
    if not mask.any():
        h, w = mask.shape
        cx = int(np.clip(round(center[0]), 1, w - 2))
        cy = int(np.clip(round(center[1]), 1, h - 2))
        mask[cy - 1:cy + 2, cx - 1:cx + 2] = True
    return mask


def cut_paste(image: np.ndarray, rng: np.random.Generator,
              area: tuple[float, float] = (0.01, 0.08), max_rotation: float = 45.0,
              brightness: tuple[float, float] = (0.01, 0.12),
              irregular_probability: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Paste a patch of the image's own texture at another location (CutPaste).

    Args:
        image: uint8 or float (H, W), (H, W, 1) or (H, W, 3).
        rng: source of every random choice.
        area: range of the patch area as a fraction of H * W.
        max_rotation: the patch is rotated by up to this many degrees either way.
        brightness: range of the brightness shift, fraction of the value range (random sign).
        irregular_probability: chance that the patch is a blob instead of a rectangle.

    Returns:
        ``(image_with_anomaly, mask)``: same shape and dtype as ``image``; bool (H, W) mask,
        non-empty; pixels outside the mask are unchanged.

    Example:
        >>> img = np.random.default_rng(1).random((64, 64, 3)).astype(np.float32)
        >>> out, mask = cut_paste(img, np.random.default_rng(0))
        >>> out.dtype, bool((out[~mask] == img[~mask]).all())
        (dtype('float32'), True)
    """
    work, lo, hi = as_work(image)
    a_lo, a_hi = checked_range("area", area, upper=0.5)
    b_lo, b_hi = checked_range("brightness", brightness, upper=1.0)
    h, w = work.shape[:2]
    frac = rng.uniform(a_lo, a_hi)
    aspect = np.exp(rng.uniform(np.log(0.3), np.log(3.3)))
    ph = int(np.clip(round(np.sqrt(frac * h * w * aspect)), 2, h // 2))
    pw = int(np.clip(round(np.sqrt(frac * h * w / aspect)), 2, w // 2))
    # Cut a square that still covers the patch after rotation, then crop its centre.
    side = int(np.ceil(np.hypot(ph, pw))) + 2
    if side >= min(h, w):
        side = max(ph, pw)
        angle = 0.0
    else:
        angle = rng.uniform(-max_rotation, max_rotation)
    sy, sx = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
    square = np.ascontiguousarray(work[sy:sy + side, sx:sx + side])
    if angle:
        rot = cv2.getRotationMatrix2D(((side - 1) / 2, (side - 1) / 2), angle, 1.0)
        square = cv2.warpAffine(square, rot, (side, side), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_REFLECT)
        square = square.reshape(side, side, -1)
    oy, ox = (side - ph) // 2, (side - pw) // 2
    patch = square[oy:oy + ph, ox:ox + pw]
    patch = patch + rng.choice([-1.0, 1.0]) * rng.uniform(b_lo, b_hi) * (hi - lo)

    if rng.random() < irregular_probability:
        shape_mask, _ = blob_mask((ph, pw), rng, ((pw - 1) / 2, (ph - 1) / 2),
                                  max(ph, pw) / 2, min(ph, pw) / max(ph, pw), 0.4)
        shape_mask = _ensure_nonempty(shape_mask, ((pw - 1) / 2, (ph - 1) / 2))
    else:
        shape_mask = np.ones((ph, pw), bool)
    # Paste away from the source so the patch shows displaced texture, not the same texture.
    for _ in range(10):
        dy, dx = rng.integers(0, h - ph + 1), rng.integers(0, w - pw + 1)
        if abs(dy - (sy + oy)) > ph // 2 or abs(dx - (sx + ox)) > pw // 2:
            break
    new = work.copy()
    mask = np.zeros((h, w), bool)
    mask[dy:dy + ph, dx:dx + pw] = shape_mask
    new[dy:dy + ph, dx:dx + pw] = patch
    return finish(image, new, mask, lo, hi)


def stain(image: np.ndarray, rng: np.random.Generator,
          radius: tuple[float, float] = (0.03, 0.15),
          strength: tuple[float, float] = (0.06, 0.4)) -> tuple[np.ndarray, np.ndarray]:
    """Add a smooth blob of changed intensity (gray) or colour (RGB) with soft edges.

    The change fades from full strength in the middle to about 40 % at the blob's edge, so the
    edge is soft yet every mask pixel is changed (barring clipping at the value range).

    Args:
        image: uint8 or float (H, W), (H, W, 1) or (H, W, 3).
        rng: source of every random choice.
        radius: range of the blob radius as a fraction of min(H, W).
        strength: range of the peak change as a fraction of the value range.

    Returns:
        ``(image_with_anomaly, mask)`` as for :func:`cut_paste`.

    Example:
        >>> img = np.full((64, 64), 100, np.uint8)
        >>> out, mask = stain(img, np.random.default_rng(0))
        >>> bool((out[mask] != 100).all()), bool((out[~mask] == 100).all())
        (True, True)
    """
    work, lo, hi = as_work(image)
    r_lo, r_hi = checked_range("radius", radius, upper=1.0)
    s_lo, s_hi = checked_range("strength", strength, upper=1.0)
    h, w, channels = work.shape
    r = max(1.5, rng.uniform(r_lo, r_hi) * min(h, w))
    centre = (rng.uniform(0, w - 1), rng.uniform(0, h - 1))
    mask, depth = blob_mask((h, w), rng, centre, r, rng.uniform(0.4, 1.0), rng.uniform(0, 0.6))
    mask = _ensure_nonempty(mask, centre)
    alpha = 0.4 + 0.6 * np.clip(depth * rng.uniform(1.5, 4.0), 0, 1)
    delta = _signed_delta(rng, work[mask], lo, hi, rng.uniform(s_lo, s_hi))
    if channels == 3:
        # Mostly a brightness change, tinted towards a random colour.
        hue = rng.normal(0, 1, 3)
        direction = 0.6 + 0.4 * hue / np.abs(hue).max()
        change = delta * direction.astype(np.float32)
    else:
        change = np.array([delta], np.float32)
    new = work + alpha[..., None] * change
    return finish(image, new, mask, lo, hi)


def scratch(image: np.ndarray, rng: np.random.Generator,
            length: tuple[float, float] = (0.15, 0.7),
            width: tuple[float, float] = (0.004, 0.015),
            strength: tuple[float, float] = (0.08, 0.5)) -> tuple[np.ndarray, np.ndarray]:
    """Draw a thin random curve of darker or brighter pixels.

    Args:
        image: uint8 or float (H, W), (H, W, 1) or (H, W, 3).
        rng: source of every random choice.
        length: range of the curve length as a fraction of min(H, W).
        width: range of the line width as a fraction of min(H, W) (at least 1 pixel).
        strength: range of the change at the line's centre, fraction of the value range.

    Returns:
        ``(image_with_anomaly, mask)`` as for :func:`cut_paste`.

    Example:
        >>> img = np.zeros((64, 64, 3), np.float32)
        >>> out, mask = scratch(img, np.random.default_rng(0))
        >>> bool(mask.any()), bool((out[~mask] == 0).all())
        (True, True)
    """
    work, lo, hi = as_work(image)
    l_lo, l_hi = checked_range("length", length, upper=3.0)
    w_lo, w_hi = checked_range("width", width, upper=0.2)
    s_lo, s_hi = checked_range("strength", strength, upper=1.0)
    h, w = work.shape[:2]
    side = min(h, w)
    start = (rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.9) * h)
    points = random_curve(rng, start, rng.uniform(l_lo, l_hi) * side, 80, rng.uniform(0.02, 0.1))
    half = max(0.5, rng.uniform(w_lo, w_hi) * side / 2)
    dist = distance_to_curve(points, (h, w))
    mask = _ensure_nonempty(dist <= half, start)
    profile = 1 - 0.5 * np.clip(dist / (half + 0.5), 0, 1)
    delta = _signed_delta(rng, work[mask], lo, hi, rng.uniform(s_lo, s_hi))
    new = work + (profile * delta)[..., None]
    return finish(image, new, mask, lo, hi)


def shading_band(image: np.ndarray, rng: np.random.Generator,
                 width: tuple[float, float] = (0.1, 0.4),
                 strength: tuple[float, float] = (0.05, 0.3)) -> tuple[np.ndarray, np.ndarray]:
    """Brighten or darken a wide straight band across the image, at a random angle.

    The change is full in the band's middle and falls to 40 % at its edges, so the edge is
    soft yet every mask pixel is changed (barring clipping). Unlike the other kinds it
    covers up to 40 % of the image, the way an uneven ground or washed-out area does.

    Args:
        image: uint8 or float (H, W), (H, W, 1) or (H, W, 3).
        rng: source of every random choice.
        width: range of the band width as a fraction of min(H, W).
        strength: range of the change in the band's middle, fraction of the value range
            (the same in every channel: a change of brightness, not of colour).

    Returns:
        ``(image_with_anomaly, mask)`` as for :func:`cut_paste`.

    Example:
        >>> img = np.full((64, 64), 0.5, np.float32)
        >>> out, mask = shading_band(img, np.random.default_rng(0))
        >>> bool((out[mask] != 0.5).all()), bool((out[~mask] == 0.5).all()), bool(mask.mean() > 0.05)
        (True, True, True)
    """
    work, lo, hi = as_work(image)
    w_lo, w_hi = checked_range("width", width, upper=1.0)
    s_lo, s_hi = checked_range("strength", strength, upper=1.0)
    h, w = work.shape[:2]
    side = min(h, w)
    angle = rng.uniform(0, np.pi)
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float32)
    # signed distance of each pixel along the band's normal, from the image centre, in pixels
    along = np.cos(angle) * (cols - (w - 1) / 2) + np.sin(angle) * (rows - (h - 1) / 2)
    centre = rng.uniform(-0.3, 0.3) * side
    half = max(1.0, rng.uniform(w_lo, w_hi) * side / 2)
    offset = np.abs(along - centre)
    mask = _ensure_nonempty(offset <= half, ((w - 1) / 2, (h - 1) / 2))
    profile = 1.0 - 0.6 * np.clip(offset / half, 0, 1) ** 2
    delta = _signed_delta(rng, work[mask], lo, hi, rng.uniform(s_lo, s_hi))
    new = work + (profile * delta)[..., None]
    return finish(image, new, mask, lo, hi)


_KindFunction = Callable[[np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]


_KIND_FUNCTIONS: dict[str, _KindFunction] = {
    "cut_paste": cut_paste, "stain": stain, "scratch": scratch, "shading": shading_band,
    "faint_area": real.faint_area, "crack": real.crack, "local_blur": real.local_blur,
    "texture_warp": real.texture_warp, "dark_region": real.dark_region}


def _check_kind(kind: str) -> None:
    if kind not in ALL_KINDS:
        raise ParameterError(f"kind '{kind}' is unknown",
                             fix=f"use one of {', '.join(ALL_KINDS)}")


def add_pseudo_anomaly(image: np.ndarray, rng: np.random.Generator,
                       kind: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Add one pseudo-anomaly of ``kind`` (or of a kind drawn uniformly at random).

    Args:
        image: uint8 or float (H, W), (H, W, 1) or (H, W, 3).
        rng: source of every random choice.
        kind: one of :data:`ALL_KINDS`, or None for a random one of :data:`VALIDATION_MIX`.

    Returns:
        ``(image_with_anomaly, mask)`` as for :func:`cut_paste`.

    Example:
        >>> img = np.full((32, 32), 0.5, np.float32)
        >>> out, mask = add_pseudo_anomaly(img, np.random.default_rng(0), "stain")
        >>> out.shape, mask.shape
        ((32, 32), (32, 32))
    """
    if kind is None:
        kind = VALIDATION_MIX[rng.integers(len(VALIDATION_MIX))]
    _check_kind(kind)
    return _KIND_FUNCTIONS[kind](image, rng)


def make_labelled_validation(
    normals: np.ndarray, rng_or_seed: np.random.Generator | int,
    fraction_anomalous: float = 0.5, kinds: Sequence[str] = VALIDATION_MIX,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Turn defect-free images into a labelled validation set with pseudo-anomalies.

    ``round(fraction_anomalous * N)`` randomly chosen images get one anomaly each (kind drawn
    uniformly from ``kinds``); the others stay exact copies. ``normals`` is not modified.

    Args:
        normals: (N, H, W) or (N, H, W, C) uint8 or float stack of defect-free images, N >= 1.
        rng_or_seed: a Generator or an integer seed (same seed, same result).
        fraction_anomalous: in [0, 1].
        kinds: the kinds to draw from, a non-empty subset of :data:`ALL_KINDS`.

    Returns:
        ``(images, labels, masks, kinds)``: images like ``normals``; labels int64 (N,), 1 for
        anomalous; masks bool (N, H, W), empty exactly where the label is 0; kinds a list of N
        names, ``"good"`` for the clean images.

    Example:
        >>> normals = np.zeros((3, 32, 32, 1), np.float32)
        >>> _, labels, masks, kinds = make_labelled_validation(normals, 1, 1.0, ["scratch"])
        >>> labels.tolist(), kinds
        ([1, 1, 1], ['scratch', 'scratch', 'scratch'])
    """
    normals = np.asarray(normals)
    if normals.ndim not in (3, 4) or normals.shape[0] < 1:
        raise ParameterError(f"normals must be shaped (N, H, W) or (N, H, W, C) with N >= 1, "
                             f"got {normals.shape}", fix="stack the images along axis 0")
    if isinstance(fraction_anomalous, bool) or not 0 <= float(fraction_anomalous) <= 1:
        raise ParameterError(f"fraction_anomalous must be in [0, 1], got {fraction_anomalous!r}",
                             fix="pass e.g. fraction_anomalous=0.5")
    kinds = tuple(kinds)
    if not kinds:
        raise ParameterError("kinds is empty", fix=f"pick from {ALL_KINDS}")
    for kind in kinds:
        _check_kind(kind)
    rng = np.random.default_rng(rng_or_seed)
    n = normals.shape[0]
    n_anomalous = int(round(float(fraction_anomalous) * n))
    chosen = np.sort(rng.choice(n, size=n_anomalous, replace=False))

    images = normals.copy()
    labels = np.zeros(n, np.int64)
    masks = np.zeros(normals.shape[:3], bool)
    names = [NORMAL_KIND] * n
    for i in chosen:
        kind = kinds[rng.integers(len(kinds))]
        images[i], masks[i] = _KIND_FUNCTIONS[kind](normals[i], rng)
        labels[i] = 1
        names[i] = kind
    return images, labels, masks, names


def make_balanced_validation(
    normals: np.ndarray, rng_or_seed: np.random.Generator | int,
    kinds: Sequence[str] = VALIDATION_MIX, per_kind: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Every normal image once clean, plus ``per_kind`` anomalous copies of every kind.

    Unlike :func:`make_labelled_validation`, no image is lost to the anomalous half and each
    kind is equally represented, so a pooled AUROC weighs the kinds equally and no kind's
    share depends on chance. The anomalous copies cycle through a seeded permutation of the
    normals, so each normal carries about as many anomalies as the others.

    Args:
        normals: (N, H, W) or (N, H, W, C) uint8 or float stack of defect-free images, N >= 1.
        rng_or_seed: a Generator or an integer seed (same seed, same result).
        kinds: the kinds to paste, a non-empty subset of :data:`ALL_KINDS`.
        per_kind: anomalous copies per kind; default ``ceil(max(2 N, 4 K) / K)`` for K kinds
            (at least twice as many anomalous images as clean ones, and 4 per kind).

    Returns:
        ``(images, labels, masks, kinds)`` as for :func:`make_labelled_validation`, with
        N + K * per_kind images: the N clean ones first, then the anomalous ones kind by kind
        in round robin.

    Example:
        >>> normals = np.zeros((3, 32, 32, 1), np.float32)
        >>> _, labels, _, kinds = make_balanced_validation(normals, 0, ["stain", "scratch"], 2)
        >>> labels.tolist(), kinds[3:]
        ([0, 0, 0, 1, 1, 1, 1], ['stain', 'scratch', 'stain', 'scratch'])
    """
    normals = np.asarray(normals)
    if normals.ndim not in (3, 4) or normals.shape[0] < 1:
        raise ParameterError(f"normals must be shaped (N, H, W) or (N, H, W, C) with N >= 1, "
                             f"got {normals.shape}", fix="stack the images along axis 0")
    kinds = tuple(kinds)
    if not kinds:
        raise ParameterError("kinds is empty", fix=f"pick from {ALL_KINDS}")
    for kind in kinds:
        _check_kind(kind)
    n = normals.shape[0]
    if per_kind is None:
        per_kind = -(-max(2 * n, 4 * len(kinds)) // len(kinds))
    if isinstance(per_kind, bool) or not isinstance(per_kind, int | np.integer) or per_kind < 1:
        raise ParameterError(f"per_kind must be an int >= 1, got {per_kind!r}",
                             fix="pass e.g. per_kind=4, or None for the default")
    rng = np.random.default_rng(rng_or_seed)
    count = per_kind * len(kinds)
    sources = np.concatenate([rng.permutation(n) for _ in range(-(-count // n))])[:count]
    images = [normals[i] for i in range(n)]
    masks = [np.zeros(normals.shape[1:3], bool)] * n
    names = [NORMAL_KIND] * n
    for j, source in enumerate(sources):
        kind = kinds[j % len(kinds)]
        image, mask = _KIND_FUNCTIONS[kind](normals[source], rng)
        images.append(image)
        masks.append(mask)
        names.append(kind)
    labels = np.r_[np.zeros(n, np.int64), np.ones(count, np.int64)]
    return np.stack(images), labels, np.stack(masks), names
