"""Tests for the DRAEM-style training anomalies (anomaly_utils.data.training_anomalies) and the
real-defect-like fills beside them (anomaly_utils.data.training_fills)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from anomaly_utils.data.training_anomalies import (
    FILL_KINDS,
    add_training_anomaly,
    default_scale_exponents,
    make_training_anomalies,
    perlin_mask,
    perlin_noise,
)
from anomaly_utils.data.training_fills import (
    FILLS,
    MIN_SPREAD,
    blur_fill,
    crack_fill,
    gradient_fill,
    texture_fill,
)
from anomaly_utils.errors import ParameterError

NEW_FILLS = ("gradient", "crack", "blur", "texture")


def _textures(n: int, side: int = 32, channels: int = 3, seed: int = 0) -> np.ndarray:
    """float32 (n, side, side, channels) in [0, 1]: smooth random textures with fine noise."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, side, side, channels), np.float32)
    for i in range(n):
        coarse = cv2.resize(rng.random((6, 6, channels)).astype(np.float32), (side, side),
                            interpolation=cv2.INTER_CUBIC).reshape(side, side, channels)
        out[i] = np.clip(0.2 + 0.5 * coarse + 0.1 * rng.random((side, side, channels)), 0, 1)
    return out


def _variants() -> dict[str, np.ndarray]:
    gray, rgb = _textures(6, channels=1, seed=1), _textures(6, channels=3, seed=2)
    return {"gray_uint8": np.rint(gray * 255).astype(np.uint8), "gray_float": gray,
            "rgb_uint8": np.rint(rgb * 255).astype(np.uint8), "rgb_float64": rgb.astype(float)}


def _as_unit(images: np.ndarray) -> np.ndarray:
    return images.astype(np.float32) / (255 if images.dtype == np.uint8 else 1)


# --- Perlin noise and masks -------------------------------------------------------------------

def test_perlin_noise_is_bounded_seeded_and_new_under_another_seed():
    maps = [perlin_noise((48, 64), np.random.default_rng(s), (4, 8), 30.0) for s in (5, 5, 6)]
    assert maps[0].shape == (48, 64) and maps[0].dtype == np.float32
    assert np.abs(maps[0]).max() <= 1 and maps[0].std() > 0.1
    np.testing.assert_array_equal(maps[0], maps[1])
    assert np.abs(maps[0] - maps[2]).max() > 0.5


def test_perlin_noise_rotation_rotates_the_map():
    """On a square image, 90 degrees turns the (anisotropic) pattern about the centre:
    noise90[r, c] = noise0[W - 1 - c, r]."""
    upright = perlin_noise((40, 40), np.random.default_rng(3), (2, 8), 0.0)
    turned = perlin_noise((40, 40), np.random.default_rng(3), (2, 8), 90.0)
    np.testing.assert_allclose(turned, np.rot90(upright, -1), atol=1e-4)
    assert np.abs(turned - upright).max() > 0.3


def test_perlin_noise_scale_sets_the_feature_size():
    """More lattice periods per side: more sign changes along a row (about one per cell)."""
    def crossings(periods: float) -> float:
        maps = [perlin_noise((64, 64), np.random.default_rng(s), (periods, periods))
                for s in range(10)]
        return float(np.mean([np.count_nonzero(np.diff(np.sign(m), axis=1)) / 64 for m in maps]))
    few, many = crossings(2), crossings(16)
    assert 0.5 < few < 4 and 8 < many < 32


def test_default_scale_exponents_follow_draem_at_256_px():
    assert default_scale_exponents(256) == (0, 5)   # DRAEM: 2**0 .. 2**5 at 256 px
    assert default_scale_exponents(64) == (0, 3) and default_scale_exponents(16) == (0, 1)


def test_perlin_mask_is_never_empty_and_falls_back_to_a_blob():
    rng = np.random.default_rng(0)
    masks = [perlin_mask((32, 32), rng, (0, 1)) for _ in range(60)]
    assert all(m.dtype == bool and m.shape == (32, 32) and m.any() for m in masks)
    assert len({m.tobytes() for m in masks}) == len(masks)
    blob = perlin_mask((64, 64), rng, threshold=0.999, max_tries=2)  # noise never reaches it
    assert blob.any() and blob.mean() < 0.1


def test_perlin_mask_coarser_scales_give_larger_regions():
    def mean_region(exponents):
        rng = np.random.default_rng(1)
        sizes = []
        for _ in range(40):
            count, _ = cv2.connectedComponents(perlin_mask((128, 128), rng, exponents).astype(np.uint8))
            sizes.append(1 / max(count - 1, 1))
        return np.mean(sizes)
    assert mean_region((1, 1)) > 2 * mean_region((4, 4))


# --- blending -------------------------------------------------------------------------------------

def test_same_seed_same_result_other_seed_different():
    images = _textures(12)
    a = make_training_anomalies(images, None, 7)
    b = make_training_anomalies(images, None, 7)
    c = make_training_anomalies(images, None, 8)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])
    gen = make_training_anomalies(images, None, np.random.default_rng(7))
    np.testing.assert_array_equal(gen[0], a[0])


@pytest.mark.parametrize("fill", FILL_KINDS)
def test_pixels_change_exactly_inside_the_mask(fill):
    images = _textures(20, seed=3)
    out, masks = make_training_anomalies(images, None, 1, clean_fraction=0.0, fills=(fill,))
    mask = masks[..., 0].astype(bool)
    changed = (out != images).any(axis=-1)
    assert not changed[~mask].any(), "a pixel outside the mask changed"
    assert mask.reshape(20, -1).any(axis=1).all()
    assert changed[mask].mean() > 0.9, "the fill left most mask pixels as they were"
    assert set(np.unique(masks)) == {0.0, 1.0}


def test_flat_image_changes_on_every_mask_pixel():
    images = np.full((30, 32, 32, 3), 0.5, np.float32)
    out, masks = make_training_anomalies(images, None, 2, clean_fraction=0.0, fills=("colour",),
                                         opacity=(0.0, 0.7))
    np.testing.assert_array_equal((out != 0.5).any(axis=-1), masks[..., 0].astype(bool))


@pytest.mark.parametrize("window", [(0.0, 0.8), (0.3, 0.5)])
def test_opacity_is_drawn_from_its_range(window):
    """With a colour fill the random draws do not depend on the pixels, so two constant images
    c1 and c2 get the same fill and beta: out1 - out2 = beta * (c1 - c2) inside the mask."""
    n = 120
    dark, light = np.full((n, 16, 16, 1), 0.1, np.float32), np.full((n, 16, 16, 1), 0.9, np.float32)
    out1, masks = make_training_anomalies(dark, None, 4, clean_fraction=0.0, fills=("colour",),
                                          opacity=window)
    out2, masks2 = make_training_anomalies(light, None, 4, clean_fraction=0.0, fills=("colour",),
                                           opacity=window)
    np.testing.assert_array_equal(masks, masks2)
    betas = []
    for i in range(n):
        inside = masks[i, ..., 0].astype(bool)
        beta = (out2[i, inside, 0] - out1[i, inside, 0]) / 0.8
        assert np.ptp(beta) < 1e-5, "beta is not one value per sample"
        betas.append(float(beta.mean()))
    lo, hi = window
    assert lo - 1e-5 <= min(betas) and max(betas) <= hi + 1e-5
    assert min(betas) < lo + 0.1 * (hi - lo) and max(betas) > hi - 0.1 * (hi - lo)


def test_zero_opacity_shows_the_fill_itself():
    images = np.full((40, 32, 32, 3), 0.5, np.float32)
    out, masks = make_training_anomalies(images, None, 5, clean_fraction=0.0, fills=("noise",),
                                         opacity=(0.0, 0.0))
    for i in range(40):
        fill = out[i][masks[i, ..., 0].astype(bool)]
        assert fill.min() >= 0 and fill.max() <= 1
        if len(fill) > 50:   # channels are independent noise maps
            assert np.abs(fill[:, 0] - fill[:, 1]).max() > 0.05


def test_shading_keeps_the_texture_and_shifts_its_level_whatever_the_opacity():
    """Inside the mask the shading fill is one affine map of the pixel values, the same in
    every channel, with a gain in [0.8, 1.25] and a shift of 0.05-0.3 (textures kept in
    [0.4, 0.6] so that nothing clips); the opacity is not applied to it."""
    images = 0.4 + 0.2 * _textures(40, seed=6)
    out, masks = make_training_anomalies(images, None, 3, clean_fraction=0.0,
                                         fills=("shading",), opacity=(0.7, 0.7))
    shifts = []
    for i in range(40):
        inside = masks[i, ..., 0].astype(bool)
        x, y = images[i][inside].ravel(), out[i][inside].ravel()
        gain, offset = np.polyfit(x, y, 1)
        assert np.abs(gain * x + offset - y).max() < 1e-4, "not one affine map for all channels"
        assert 0.8 - 1e-3 <= gain <= 1.25 + 1e-3
        shifts.append(float(np.mean(y - x)))
    magnitude = np.abs(shifts)
    # the contrast change moves the mean by at most 0.25 * 0.1 on these textures
    assert magnitude.min() > 0.05 - 0.03 and magnitude.max() < 0.3 + 0.03
    assert magnitude.max() > 0.2, "the shifts never reach the top of their range"
    assert min(shifts) < 0 < max(shifts), "the shading only brightens or only darkens"


def test_clean_fraction_is_respected_and_clean_samples_equal_their_input():
    images = np.rint(_textures(400, side=16, seed=4) * 255).astype(np.uint8)
    out, masks = make_training_anomalies(images, None, 9, clean_fraction=0.3)
    clean = ~masks.reshape(400, -1).any(axis=1)
    # binomial(400, 0.3): standard deviation 0.023; tolerance of 3 of them
    assert abs(clean.mean() - 0.3) < 0.07
    np.testing.assert_array_equal(np.rint(out[clean] * 255).astype(np.uint8), images[clean])
    assert not np.array_equal(out[~clean], _as_unit(images[~clean]))
    _, none_clean = make_training_anomalies(images[:50], None, 9, clean_fraction=0.0)
    assert none_clean.reshape(50, -1).any(axis=1).all()
    all_clean, all_empty = make_training_anomalies(images[:50], None, 9, clean_fraction=1.0)
    assert not all_empty.any()
    np.testing.assert_array_equal(all_clean, _as_unit(images[:50]))


@pytest.mark.parametrize("name", list(_variants()))
@pytest.mark.parametrize("fill", FILL_KINDS)
def test_grayscale_rgb_uint8_and_float_for_every_fill(name, fill):
    images = _variants()[name]
    before = images.copy()
    out, masks = make_training_anomalies(images, None, 0, clean_fraction=0.0, fills=(fill,))
    np.testing.assert_array_equal(images, before)
    assert out.shape == images.shape and out.dtype == np.float32
    assert masks.shape == images.shape[:3] + (1,) and masks.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 1
    mask = masks[..., 0].astype(bool)
    np.testing.assert_allclose(out[~mask], _as_unit(images)[~mask], atol=1e-7)
    assert (out != _as_unit(images)).any(axis=-1)[mask].mean() > 0.5


class _Recorder(np.ndarray):
    """An ndarray that records the first index of every item access (the source drawn)."""

    drawn: list[int]

    def __getitem__(self, key):
        if isinstance(key, tuple) and isinstance(key[0], (int, np.integer)):
            self.drawn.append(int(key[0]))
        return np.asarray(self)[key]


def test_a_sample_never_draws_itself_or_the_excluded_source():
    images = _textures(3, seed=5).view(_Recorder)
    images.drawn = []
    for seed in range(30):
        make_training_anomalies(images, None, seed, clean_fraction=0.0, fills=("image",))
    drawn = np.array(images.drawn).reshape(-1, 3)    # one draw per sample, in order
    assert (drawn != np.arange(3)).all() and len(np.unique(drawn)) == 3
    sources = _textures(2, seed=6).view(_Recorder)
    sources.drawn = []
    for seed in range(20):
        make_training_anomalies(images[:2], sources, seed, clean_fraction=0.0, fills=("image",),
                                exclude=[1, 0])
    np.testing.assert_array_equal(np.array(sources.drawn).reshape(-1, 2), [[0, 1]] * 20)


def test_add_training_anomaly_alone():
    rng = np.random.default_rng(0)
    image = np.rint(_textures(1, channels=1)[0] * 255).astype(np.uint8)
    out, mask = add_training_anomaly(image, rng, _textures(4, channels=1), exclude=0)
    assert out.shape == (32, 32, 1) and out.dtype == np.float32 and mask.shape == (32, 32)
    np.testing.assert_array_equal(out[~mask], _as_unit(image)[~mask])
    assert mask.any()


# --- the real-defect-like fills (training_fills) ---------------------------------------------

def test_every_fill_has_a_name_and_the_new_ones_are_not_in_the_default():
    assert set(FILLS) <= set(FILL_KINDS) and set(NEW_FILLS) <= set(FILLS)
    assert len(set(FILL_KINDS)) == len(FILL_KINDS)
    assert not set(NEW_FILLS) & set(make_training_anomalies.__kwdefaults__["fills"])


@pytest.mark.parametrize("fill", NEW_FILLS)
def test_new_fills_are_seeded_and_opacity_does_not_weaken_them(fill):
    images = _textures(8, side=48, seed=7)
    a = make_training_anomalies(images, None, 11, clean_fraction=0.0, fills=(fill,))
    b = make_training_anomalies(images, None, 11, clean_fraction=0.0, fills=(fill,))
    c = make_training_anomalies(images, None, 12, clean_fraction=0.0, fills=(fill,))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    # the fill is written at full strength: the opacity range does not enter
    d = make_training_anomalies(images, None, 11, clean_fraction=0.0, fills=(fill,),
                                opacity=(0.7, 0.7))
    np.testing.assert_array_equal(a[0], d[0])


@pytest.mark.parametrize("side", [32, 64, 128])
def test_crack_mask_is_a_thin_small_line_of_one_sign(side):
    """A 4x4 erosion (pixels outside the image count as background) removes every crack; at
    64 px it covers under 10 % of the image; widths above 1 px occur; the change has one sign
    and is 0.6 * 0.5 to 2 image spreads."""
    rng = np.random.default_rng(side)
    wide = 0
    for _ in range(150):
        image = rng.uniform(0.3, 0.7, (side, side, 1)).astype(np.float32)
        fill, mask = crack_fill(image, np.zeros((side, side), bool), rng)
        line = mask.astype(np.uint8)
        assert mask.any()
        assert not cv2.erode(line, np.ones((4, 4), np.uint8), borderValue=0).any()
        wide += bool(cv2.erode(line, np.ones((2, 2), np.uint8), borderValue=0).any())
        if side == 64:
            assert mask.mean() < 0.1
        change = (fill - image)[mask]
        spread = max(float(image.std()), MIN_SPREAD)
        # values near 0.3 / 0.7 may clip only beyond the range of the draw
        assert (change < 0).all() or (change > 0).all(), "a crack both darkens and brightens"
        assert 0.3 * spread - 1e-6 <= np.abs(change).max() <= 2 * spread + 1e-6
    assert 20 < wide < 140, "cracks are all one pixel wide, or all wider"


def test_cracks_are_lines_not_dots():
    """The main walk is 0.3-0.9 of the side long and starts heading inwards: the mask
    usually reaches across a quarter of the side, and fills little of its bounding box."""
    rng = np.random.default_rng(3)
    extents = []
    for _ in range(80):
        _, mask = crack_fill(np.full((64, 64, 3), 0.5, np.float32), None, rng)
        ys, xs = np.nonzero(mask)
        extents.append(max(np.ptp(ys), np.ptp(xs)) + 1)
        assert extents[-1] < 16 or mask.sum() < 0.6 * (np.ptp(ys) + 1) * (np.ptp(xs) + 1)
    assert np.median(extents) >= 16 and np.mean(np.array(extents) < 8) < 0.1


def test_gradient_is_a_large_smooth_one_signed_change_measured_in_the_spread():
    images = 0.4 + 0.2 * _textures(60, side=64, seed=6)
    for i, image in enumerate(images):
        fill, mask = gradient_fill(image, np.zeros((64, 64), bool), np.random.default_rng(i))
        change = (fill - image)[..., 0]
        peak = np.abs(change[mask]).max()
        spread = max(float(image.std()), MIN_SPREAD)
        assert 0.09 < mask.mean() < 0.51
        assert (change[mask] > 0).all() or (change[mask] < 0).all()
        assert 0.25 * spread - 1e-6 <= peak <= 2 * spread + 1e-6
        np.testing.assert_allclose(fill[..., 1:], fill[..., :1] + image[..., 1:] - image[..., :1],
                                   atol=1e-6)  # the same change in every channel
        # smooth: between neighbours inside the region the change moves little
        steps = np.abs(np.diff(change, axis=1))[mask[:, 1:] & mask[:, :-1]]
        assert steps.mean() < 0.15 * peak and steps.max() < 0.6 * peak


def test_blur_keeps_the_region_mean_and_changes_its_sharpness():
    images = 0.3 + 0.4 * _textures(40, side=64, seed=8)
    blurred = sharpened = 0
    for i, image in enumerate(images):
        mask = perlin_mask((64, 64), np.random.default_rng(100 + i), (1, 2))
        fill, same = blur_fill(image, mask, np.random.default_rng(i))
        assert same is mask
        np.testing.assert_allclose(fill[mask].mean(0), image[mask].mean(0), atol=0.01)
        detail = np.abs(cv2.Laplacian(fill, cv2.CV_32F)).reshape(64, 64, -1)[mask].mean()
        before = np.abs(cv2.Laplacian(image, cv2.CV_32F)).reshape(64, 64, -1)[mask].mean()
        blurred += detail < 0.8 * before
        sharpened += detail > 1.2 * before
    assert blurred + sharpened == 40 and blurred > sharpened > 0


@pytest.mark.parametrize("channels", [1, 3])
def test_texture_changes_the_texture_not_the_brightness(channels):
    """Per channel the region's mean is kept within 0.01 and its standard deviation within
    15 % (textures in [0.3, 0.7]: little clipping), while the pixels no longer follow the
    image (median correlation under 0.3)."""
    images = 0.3 + 0.4 * _textures(40, side=64, channels=channels, seed=9)
    correlations = []
    for i, image in enumerate(images):
        mask = perlin_mask((64, 64), np.random.default_rng(200 + i), (1, 2))
        if mask.sum() < 30:
            continue
        fill, same = texture_fill(image, mask, np.random.default_rng(i))
        assert same is mask
        before, after = image[mask], fill[mask]
        np.testing.assert_allclose(after.mean(0), before.mean(0), atol=0.01)
        target = np.maximum(before.std(0), MIN_SPREAD)
        np.testing.assert_allclose(after.std(0), target, rtol=0.15)
        correlations.append(abs(np.corrcoef(before[:, 0], after[:, 0])[0, 1]))
    assert len(correlations) > 20 and np.median(correlations) < 0.3


def test_texture_on_a_flat_image_has_the_minimum_spread():
    image = np.full((64, 64, 1), 0.5, np.float32)
    mask = np.zeros((64, 64), bool)
    mask[10:40, 5:50] = True
    fill, _ = texture_fill(image, mask, np.random.default_rng(0))
    assert abs(fill[mask].mean() - 0.5) < 1e-3 and abs(fill[mask].std() - MIN_SPREAD) < 3e-3


def test_old_fills_draw_the_same_as_before_the_new_ones_existed():
    """Adding fills must not change what DRAEM's fills and shading draw under a seed (runs
    stay reproducible): a fingerprint of one batch per fill, taken before the change."""
    images = np.rint(_textures(6, side=32, seed=10) * 255).astype(np.uint8)
    sums = {}
    for fill in ("image", "noise", "colour", "shading"):
        out, masks = make_training_anomalies(images, None, 5, clean_fraction=0.3, fills=(fill,))
        sums[fill] = (float(out.sum()), int(masks.sum()))
    before = {"image": (9159.34, 353), "noise": (9195.36, 350), "colour": (9178.56, 267),
              "shading": (9162.92, 386)}
    for fill, (total, area) in before.items():
        assert sums[fill][1] == area and sums[fill][0] == pytest.approx(total, abs=0.01)


# --- arguments --------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, name", [
    ({"opacity": (0.5, 0.2)}, "opacity"),
    ({"opacity": (0.0, 1.0)}, "opacity"),
    ({"opacity": 0.5}, "opacity"),
    ({"fills": ("plasma",)}, "fills"),
    ({"fills": ()}, "fills"),
    ({"clean_fraction": 1.5}, "clean_fraction"),
    ({"clean_fraction": True}, "clean_fraction"),
    ({"scale_exponents": (0, 9)}, "scale_exponents"),
    ({"scale_exponents": (2, 1)}, "scale_exponents"),
    ({"scale_exponents": (0, 1.5)}, "scale_exponents"),
    ({"images": np.zeros((32, 32, 3), np.float32)}, "images"),
    ({"images": np.zeros((2, 32, 32, 2), np.float32)}, "images"),
    ({"images": np.full((2, 32, 32, 3), 2.0)}, "images"),
    ({"images": np.zeros((2, 32, 32, 3), np.int32)}, "images"),
    ({"sources": np.zeros((2, 32, 32, 1), np.float32)}, "sources"),
    ({"sources": np.zeros((2, 32, 32, 3), np.float32), "exclude": [0]}, "exclude"),
    ({"exclude": [0, 1]}, "exclude"),
    ({"seed": "zero"}, "seed"),
    ({"images": np.zeros((1, 32, 32, 3), np.float32), "fills": ("image",),
      "clean_fraction": 0.0}, "sources"),
])
def test_bad_arguments_name_the_parameter(kwargs, name):
    args = {"images": np.zeros((2, 32, 32, 3), np.float32), "sources": None, "seed": 0, **kwargs}
    with pytest.raises(ParameterError, match=name) as info:
        make_training_anomalies(**args)
    assert info.value.fix


def test_image_fill_without_sources_is_refused():
    with pytest.raises(ParameterError, match="sources"):
        add_training_anomaly(np.zeros((32, 32, 3)), np.random.default_rng(0), fills=("image",))
