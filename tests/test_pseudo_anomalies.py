"""Tests for pasted pseudo-anomalies (anomaly_utils.data.pseudo_anomalies and the real-like
kinds in anomaly_utils.data.real_like_anomalies)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from anomaly_utils.data.pseudo_anomalies import (
    ALL_KINDS,
    REAL_LIKE_KINDS,
    SHARP_KINDS,
    VALIDATION_MIX,
    add_pseudo_anomaly,
    cut_paste,
    make_balanced_validation,
    make_labelled_validation,
    scratch,
    shading_band,
    stain,
)
from anomaly_utils.data.real_like_anomalies import (
    crack,
    dark_region,
    faint_area,
    local_blur,
    texture_warp,
)
from anomaly_utils.errors import ParameterError


def _texture(seed: int, size: int = 64) -> np.ndarray:
    """float32 (size, size) in [0, 1]: smooth random texture with fine noise."""
    rng = np.random.default_rng(seed)
    coarse = cv2.resize(rng.random((8, 8)).astype(np.float32), (size, size),
                        interpolation=cv2.INTER_CUBIC)
    return np.clip(0.2 + 0.5 * coarse + 0.1 * rng.random((size, size)), 0, 1).astype(np.float32)


def _variants() -> dict[str, np.ndarray]:
    gray = _texture(0)
    rgb = np.stack([_texture(1), _texture(2), _texture(3)], axis=2)
    return {
        "gray_uint8_hw": np.rint(gray * 255).astype(np.uint8),
        "gray_float_hw1": gray[..., None],
        "rgb_uint8": np.rint(rgb * 255).astype(np.uint8),
        "rgb_float01": rgb,
        "gray_float_standardised": ((gray - gray.mean()) / gray.std()).astype(np.float64),
    }


VARIANTS = _variants()
FUNCTIONS = {"cut_paste": cut_paste, "stain": stain, "scratch": scratch,
             "shading": shading_band, "faint_area": faint_area, "crack": crack,
             "local_blur": local_blur, "texture_warp": texture_warp, "dark_region": dark_region}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("kind", ALL_KINDS)
def test_changes_only_mask_pixels(kind, variant):
    image = VARIANTS[variant]
    original = image.copy()
    lo, hi = (0, 255) if image.dtype == np.uint8 else (image.min(), image.max())
    if image.dtype != np.uint8 and image.min() >= 0 and image.max() <= 1:
        lo, hi = 0, 1
    changed_fraction = []
    for seed in range(5):
        out, mask = FUNCTIONS[kind](image, np.random.default_rng(seed))
        assert out.shape == image.shape and out.dtype == image.dtype
        assert mask.shape == image.shape[:2] and mask.dtype == bool
        assert mask.any()
        assert np.array_equal(out[~mask], image[~mask])
        assert out.min() >= lo and out.max() <= hi
        diff = out != image
        changed = diff.any(axis=2) if diff.ndim == 3 else diff
        changed_fraction.append(changed[mask].mean())
    assert np.array_equal(image, original), "the input must not be modified"
    assert min(changed_fraction) > 0.5


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_same_seed_same_result_other_seed_differs(kind):
    image = VARIANTS["rgb_uint8"]
    a, mask_a = add_pseudo_anomaly(image, np.random.default_rng(7), kind)
    b, mask_b = add_pseudo_anomaly(image, np.random.default_rng(7), kind)
    c, mask_c = add_pseudo_anomaly(image, np.random.default_rng(8), kind)
    assert np.array_equal(a, b) and np.array_equal(mask_a, mask_b)
    assert not np.array_equal(mask_a, mask_c)


def test_cut_paste_moves_texture_from_the_same_image():
    image = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    for seed in range(5):
        out, mask = cut_paste(image, np.random.default_rng(seed), max_rotation=0,
                              irregular_probability=0)
        rows, cols = np.nonzero(mask)
        patch = out[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        assert mask[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()
        score = cv2.matchTemplate(image, patch, cv2.TM_CCOEFF_NORMED)
        y, x = np.unravel_index(score.argmax(), score.shape)
        assert score.max() > 0.99, "the patch is a brightness-shifted copy of image texture"
        assert (y, x) != (rows.min(), cols.min()), "pasted somewhere else than its source"


def test_sizes_vary_and_scale_with_the_image():
    small = [stain(_texture(0, 64), np.random.default_rng(s))[1].mean() for s in range(12)]
    large = [stain(_texture(0, 128), np.random.default_rng(s))[1].mean() for s in range(12)]
    assert max(small) > 3 * min(small)
    assert np.allclose(np.median(small), np.median(large), rtol=0.5)


def test_shading_band_is_a_wide_straight_band_of_one_brightness_change():
    areas = []
    for seed in range(12):
        image = np.full((96, 128, 3), 0.5, np.float32)
        out, mask = shading_band(image, np.random.default_rng(seed))
        areas.append(mask.mean())
        change = (out - image)[mask]
        assert np.allclose(change[:, 0], change[:, 1]) and np.allclose(change[:, 1], change[:, 2])
        assert (np.sign(change) == np.sign(change[0, 0])).all(), "one direction per band"
        # a straight band: the mask is convex, so its convex hull adds (almost) nothing
        contours = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL,
                                    cv2.CHAIN_APPROX_NONE)[0]
        assert len(contours) == 1
        hull = cv2.contourArea(cv2.convexHull(contours[0]))
        assert hull <= 1.1 * cv2.contourArea(contours[0]) + 2 * 96
    assert min(areas) > 0.05 and max(areas) > 0.25
    small = max(stain(_texture(0, 128), np.random.default_rng(s))[1].mean() for s in range(12))
    assert np.median(areas) > small, "an area defect, larger than the largest stain"


def test_kind_constants_name_every_function():
    assert set(ALL_KINDS) == set(FUNCTIONS) and len(ALL_KINDS) == len(FUNCTIONS)
    assert set(SHARP_KINDS) | {"shading"} | set(REAL_LIKE_KINDS) == set(ALL_KINDS)
    assert set(VALIDATION_MIX) <= set(ALL_KINDS) and set(REAL_LIKE_KINDS) <= set(VALIDATION_MIX)


def test_default_mix_draws_every_kind_of_the_constant():
    normals = np.stack([_texture(s, 32) for s in range(90)])
    _, _, masks, kinds = make_labelled_validation(normals, 0, 1.0)
    assert set(kinds) == set(VALIDATION_MIX)
    assert all(m.any() for m in masks)
    _, _, masks, kinds = make_labelled_validation(normals[:8], 0, 1.0, ["shading"])
    assert kinds == ["shading"] * 8 and all(m.mean() > 0.05 for m in masks)
    _, _, _, kinds = make_labelled_validation(normals, 0, 1.0, SHARP_KINDS)
    assert set(kinds) == set(SHARP_KINDS), "kinds= reproduces the former mix"


def test_scratch_is_thin():
    for seed in range(5):
        mask = scratch(_texture(0, 128), np.random.default_rng(seed))[1]
        assert mask.mean() < 0.05
        eroded = cv2.erode(mask.astype(np.uint8), np.ones((5, 5), np.uint8))
        assert not eroded.any(), "a scratch is at most a few pixels wide"


def test_stain_on_rgb_changes_colour_balance():
    image = np.full((64, 64, 3), 0.5, np.float32)
    ratios = []
    for seed in range(5):
        out, mask = stain(image, np.random.default_rng(seed))
        change = (out[mask] - 0.5).mean(axis=0)
        ratios.append(np.ptp(change) / np.abs(change).max())
    assert max(ratios) > 0.1


def _brightness_std(image: np.ndarray) -> float:
    return float((image if image.ndim == 2 else image.mean(axis=2)).std())


def _components(mask: np.ndarray) -> int:
    return cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)[0] - 1


def _gradient_energy(image: np.ndarray) -> np.ndarray:
    gx = cv2.Sobel(image, cv2.CV_32F, 1, 0)
    gy = cv2.Sobel(image, cv2.CV_32F, 0, 1)
    return gx**2 + gy**2


def _inner(mask: np.ndarray, margin: int = 2) -> np.ndarray:
    kernel = np.ones((2 * margin + 1, 2 * margin + 1), np.uint8)
    return cv2.erode(mask.astype(np.uint8), kernel).astype(bool)


def _fine_texture(seed: int, size: int = 128) -> np.ndarray:
    """float32 (size, size) in [0, 1]: isotropic grain about 3 px across, std 0.1."""
    noise = np.random.default_rng(seed).normal(0, 1, (size, size)).astype(np.float32)
    grain = cv2.GaussianBlur(noise, (0, 0), 1.5)
    return np.clip(0.5 + 0.1 * grain / grain.std(), 0, 1).astype(np.float32)


@pytest.mark.parametrize("variant", ["gray_float_hw1", "rgb_uint8"])
def test_faint_area_is_large_soft_and_within_one_and_a_half_std(variant):
    image = VARIANTS[variant]
    sigma = _brightness_std(image.astype(np.float32))
    areas = []
    for seed in range(12):
        out, mask = faint_area(image, np.random.default_rng(seed))
        areas.append(mask.mean())
        change = (out.astype(np.float32) - image)[mask]
        assert np.abs(change).max() <= 1.5 * sigma + 0.5, "at most 1.5 image std (+ rounding)"
        assert 0.07 * sigma <= abs(change.mean()) <= 1.5 * sigma
        assert _components(mask) == 1
        # soft edge: at the mask's border the change is a fraction of its peak
        border = mask & ~_inner(mask, 1)
        assert np.abs(out.astype(np.float32) - image)[border].mean() < 0.6 * np.abs(change).max()
    assert min(areas) > 0.03 and max(areas) < 0.35 and max(areas) > 0.15


def test_faint_area_changes_brightness_not_colour():
    image = VARIANTS["rgb_float01"]
    for seed in range(5):
        out, mask = faint_area(image, np.random.default_rng(seed))
        change = (out - image)[mask & _inner(mask, 3)]  # away from clipping at the soft edge
        assert np.allclose(change[:, 0], change[:, 1], atol=1e-6)
        assert np.allclose(change[:, 1], change[:, 2], atol=1e-6)


def test_crack_is_thin_faint_and_its_mask_is_the_line():
    image = _fine_texture(0)
    sigma = _brightness_std(image)
    darker = 0
    for seed in range(20):
        out, mask = crack(image, np.random.default_rng(seed))
        assert mask.mean() < 0.03, "a line, not an area (128 px image)"
        assert not cv2.erode(mask.astype(np.uint8), np.ones((4, 4), np.uint8)).any(), \
            "at most 3 px wide"
        change = (out - image)[mask]
        assert (change != 0).all(), "the mask is the changed line itself"
        assert np.abs(change).max() <= 2.5 * sigma + 1e-6
        darker += change.mean() < 0
    assert darker >= 14, "cracks are mostly darker"


def test_crack_width_and_branches():
    image = _fine_texture(1)
    for seed in range(8):
        thin = crack(image, np.random.default_rng(seed), width=(1, 1))[1]
        wide = crack(image, np.random.default_rng(seed), width=(3, 3))[1]
        grown = cv2.dilate(thin.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        assert (thin <= wide).all() and (wide <= grown).all(), "widened by at most 1 px"
    bare = [crack(image, np.random.default_rng(s), branches=(0, 0))[1].sum() for s in range(8)]
    branched = [crack(image, np.random.default_rng(s), branches=(3, 3))[1].sum()
                for s in range(8)]
    assert np.mean(branched) > 1.3 * np.mean(bare)


def test_local_blur_keeps_the_mean_and_smooths_the_texture():
    image = _fine_texture(2)
    sigma = _brightness_std(image)
    for seed in range(8):
        out, mask = local_blur(image, np.random.default_rng(seed))
        assert abs(out[mask].mean() - image[mask].mean()) < 0.02 * sigma
        inner = _inner(mask)
        ratio = _gradient_energy(out)[inner].mean() / _gradient_energy(image)[inner].mean()
        assert ratio < 0.8, "less fine structure inside"


def test_texture_warp_keeps_mean_and_contrast_and_replaces_the_structure():
    image = _fine_texture(3)
    sigma = _brightness_std(image)
    for seed in range(8):
        out, mask = texture_warp(image, np.random.default_rng(seed))
        assert abs(out[mask].mean() - image[mask].mean()) < 0.02 * sigma
        assert 0.8 < out[mask].std() / image[mask].std() < 1.2
        inner = _inner(mask)
        assert abs(np.corrcoef(out[inner], image[inner])[0, 1]) < 0.5, "other texture"
        ratio = _gradient_energy(out)[inner].mean() / _gradient_energy(image)[inner].mean()
        assert not 0.8 < ratio < 1.25, "the grain is coarser or finer"


def test_dark_region_is_large_dark_and_cut_from_the_border():
    image = np.rint(_fine_texture(4) * 255).astype(np.uint8)
    areas = []
    for seed in range(12):
        out, mask = dark_region(image, np.random.default_rng(seed))
        areas.append(mask.mean())
        assert _components(mask) == 1
        assert mask[[0, -1]].any() or mask[:, [0, -1]].any()
        assert out[mask].mean() <= 0.66 * image[mask].mean() + 1
    assert min(areas) > 0.02 and max(areas) <= 0.3 and max(areas) > 0.15


def test_random_kind_covers_all_kinds():
    image = VARIANTS["gray_uint8_hw"]
    thin = 0
    for seed in range(30):
        mask = add_pseudo_anomaly(image, np.random.default_rng(seed))[1]
        eroded = cv2.erode(mask.astype(np.uint8), np.ones((5, 5), np.uint8))
        thin += not eroded.any()
    assert 0 < thin < 30, "both thin (scratch) and wide anomalies are drawn"


@pytest.mark.parametrize("bad", [
    np.zeros((2, 32, 32, 3), np.uint8),
    np.zeros((32, 32, 2), np.uint8),
    np.zeros((32, 32), np.int16),
    np.zeros((4, 4), np.uint8),
    np.full((32, 32), np.nan, np.float32),
])
def test_rejects_bad_images(bad):
    with pytest.raises(ParameterError, match="image"):
        stain(bad, np.random.default_rng(0))


def test_rejects_bad_arguments():
    image = VARIANTS["gray_uint8_hw"]
    with pytest.raises(ParameterError, match="kind"):
        add_pseudo_anomaly(image, np.random.default_rng(0), "blur")
    with pytest.raises(ParameterError, match="radius"):
        stain(image, np.random.default_rng(0), radius=(0.3, 0.1))
    with pytest.raises(ParameterError, match="area"):
        cut_paste(image, np.random.default_rng(0), area=(0.1, 0.9))
    with pytest.raises(ParameterError, match="width"):
        crack(image, np.random.default_rng(0), width=(1, 4))
    with pytest.raises(ParameterError, match="branches"):
        crack(image, np.random.default_rng(0), branches=(0, 1.5))
    with pytest.raises(ParameterError, match="zoom"):
        texture_warp(image, np.random.default_rng(0), zoom=(0.5, 2.0))
    with pytest.raises(ParameterError, match="darkness"):
        dark_region(image, np.random.default_rng(0), darkness=(0.5, 1.5))
    with pytest.raises(ParameterError, match="contrast"):
        faint_area(image, np.random.default_rng(0), contrast=(0.0, 1.0))


@pytest.fixture
def normals() -> np.ndarray:
    return np.stack([np.rint(_texture(s) * 255).astype(np.uint8) for s in range(10)])


def test_labelled_validation_is_consistent(normals):
    original = normals.copy()
    images, labels, masks, kinds = make_labelled_validation(normals, 0, fraction_anomalous=0.4)
    assert np.array_equal(normals, original)
    assert images.shape == normals.shape and images.dtype == normals.dtype
    assert labels.shape == (10,) and labels.dtype.kind == "i" and labels.sum() == 4
    assert masks.shape == (10, 64, 64) and masks.dtype == bool
    assert len(kinds) == 10
    for i in range(10):
        if labels[i] == 0:
            assert kinds[i] == "good" and not masks[i].any()
            assert np.array_equal(images[i], normals[i])
        else:
            assert kinds[i] in VALIDATION_MIX and masks[i].any()
            assert np.array_equal(images[i][~masks[i]], normals[i][~masks[i]])
            assert (images[i] != normals[i])[masks[i]].mean() > 0.5


def test_labelled_validation_is_deterministic(normals):
    first = make_labelled_validation(normals, 5)
    second = make_labelled_validation(normals, np.random.default_rng(5))
    third = make_labelled_validation(normals, 6)
    for a, b in zip(first[:3], second[:3], strict=True):
        assert np.array_equal(a, b)
    assert first[3] == second[3]
    assert not np.array_equal(first[2], third[2])


def test_labelled_validation_rgb_and_fraction_extremes(normals):
    rgb = np.repeat(normals[:4, ..., None], 3, axis=3).astype(np.float32) / 255
    images, labels, masks, kinds = make_labelled_validation(rgb, 1, 1.0, kinds=["stain"])
    assert labels.tolist() == [1, 1, 1, 1] and kinds == ["stain"] * 4
    assert all(m.any() for m in masks)
    images, labels, masks, _ = make_labelled_validation(rgb, 1, 0.0)
    assert labels.sum() == 0 and not masks.any() and np.array_equal(images, rgb)


@pytest.mark.parametrize(("kwargs", "name"), [
    ({"fraction_anomalous": 1.5}, "fraction_anomalous"),
    ({"fraction_anomalous": -0.1}, "fraction_anomalous"),
    ({"kinds": ["blur"]}, "kind"),
    ({"kinds": []}, "kinds"),
])
def test_labelled_validation_rejects_bad_arguments(normals, kwargs, name):
    with pytest.raises(ParameterError, match=name):
        make_labelled_validation(normals, 0, **kwargs)


def test_labelled_validation_rejects_a_single_image(normals):
    with pytest.raises(ParameterError, match="normals"):
        make_labelled_validation(normals[0, 0], 0)


def test_balanced_validation_keeps_every_normal_clean_and_balances_the_kinds(normals):
    images, labels, masks, kinds = make_balanced_validation(normals, 3)
    n, k = len(normals), len(VALIDATION_MIX)
    per_kind = -(-max(2 * n, 4 * k) // k)
    assert len(images) == n + k * per_kind and labels.sum() == k * per_kind
    assert np.array_equal(images[:n], normals) and not masks[:n].any()
    assert kinds[:n] == ["good"] * n
    assert {kind: kinds.count(kind) for kind in VALIDATION_MIX} == dict.fromkeys(
        VALIDATION_MIX, per_kind)
    assert images.dtype == normals.dtype
    assert all(masks[i].any() for i in range(n, len(images)))


def test_balanced_validation_is_deterministic_and_spreads_the_sources(normals):
    first = make_balanced_validation(normals, 5, ["stain"], per_kind=2 * len(normals))
    again = make_balanced_validation(normals, 5, ["stain"], per_kind=2 * len(normals))
    other = make_balanced_validation(normals, 6, ["stain"], per_kind=2 * len(normals))
    assert all(np.array_equal(a, b) for a, b in zip(first[:3], again[:3], strict=True))
    assert not np.array_equal(first[0], other[0])
    # Each normal is the source of exactly two anomalous copies: outside its mask, a copy
    # equals its source.
    n = len(normals)
    sources = [[i for i in range(n) if np.array_equal(first[0][j][~first[2][j]],
                                                       normals[i][~first[2][j]])]
               for j in range(n, 3 * n)]
    assert sorted(s[0] for s in sources) == sorted(list(range(n)) * 2)


@pytest.mark.parametrize("kwargs", [{"kinds": []}, {"kinds": ["nope"]}, {"per_kind": 0},
                                    {"per_kind": 1.5}])
def test_balanced_validation_rejects_bad_arguments(normals, kwargs):
    with pytest.raises(ParameterError):
        make_balanced_validation(normals, 0, **kwargs)
