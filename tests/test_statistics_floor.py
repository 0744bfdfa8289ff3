"""The statistics floor (anomaly_utils/scoring/statistics_floor.py): planted defects are found,
the maps equal a slow reference, results are deterministic and survive a save and load, and
wrong input is refused with a message that names the parameter and the fix."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from scipy import ndimage

from anomaly_utils.errors import ArtifactError, LabError, ParameterError
from anomaly_utils.scoring import statistics_floor
from anomaly_utils.scoring.statistics_floor import (
    FLOOR_VARIANTS,
    GRADIENT_FEATURES,
    StatisticsFloor,
    default_windows,
)

SIZE = 48


def surfaces(n: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    """(n, SIZE, SIZE, channels) uint8: a bright disc at the centre (an aligned object) on a
    fine random texture, each image with its own exposure."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    disc = ((yy - SIZE / 2) ** 2 + (xx - SIZE / 2) ** 2 < (SIZE / 4) ** 2).astype(np.float32)
    images = np.empty((n, SIZE, SIZE, channels), np.uint8)
    for i in range(n):
        texture = ndimage.gaussian_filter(rng.standard_normal((SIZE, SIZE, channels)),
                                          (1, 1, 0))
        tint = rng.uniform(0.8, 1.2, channels)
        value = (0.35 + 0.3 * disc[..., None] + 0.08 * texture) * tint * rng.uniform(0.85, 1.15)
        images[i] = np.clip(value * 255, 0, 255).astype(np.uint8)
    return images


def with_defect(images: np.ndarray, top: int = 8, left: int = 30, side: int = 6) -> np.ndarray:
    """A copy with a dark square at (top, left) in every image."""
    out = images.copy()
    out[:, top:top + side, left:left + side] = 20
    return out


@pytest.fixture(scope="module")
def gray():
    return surfaces(24), surfaces(4, seed=1)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("variant", FLOOR_VARIANTS)
def test_a_planted_defect_scores_higher_and_peaks_inside_it(variant, channels):
    train, normals = surfaces(24, channels), surfaces(4, channels, seed=1)
    floor = StatisticsFloor(variant, eval_size=SIZE).fit(train)
    clean = floor.score(normals)
    broken = floor.score(with_defect(normals))
    assert clean.maps.shape == (4, SIZE, SIZE) and clean.maps.dtype == np.float32
    assert clean.scores.shape == (4,) and clean.scores.dtype == np.float32
    assert broken.scores.min() > clean.scores.max()
    for m in broken.maps:
        row, col = np.unravel_index(np.argmax(m), m.shape)
        assert 8 - 2 <= row < 14 + 2 and 30 - 2 <= col < 36 + 2, (row, col)


def streaks(n: int, seed: int = 0, turned: bool = False) -> np.ndarray:
    """(n, SIZE, SIZE, 1) uint8: vertical streaks of random phase and contrast, as left by
    grinding; ``turned`` makes them horizontal in a square at rows and columns 16-32, at the
    same contrast and spacing, so the local mean, standard deviation and gradient magnitude
    stay what they were and only the gradient's direction changes."""
    rng = np.random.default_rng(seed)
    images = np.empty((n, SIZE, SIZE, 1), np.uint8)
    for i in range(n):
        amplitude, phase = rng.uniform(0.15, 0.2), rng.uniform(0, 2 * np.pi)
        wave = np.sin(np.arange(SIZE) * 2 * np.pi / 4 + phase)
        image = 0.5 + amplitude * np.tile(wave, (SIZE, 1))
        if turned:
            image[16:32, 16:32] = 0.5 + amplitude * np.tile(wave[16:32, None], (1, 16))
        images[i, ..., 0] = np.clip(image * 255, 0, 255).astype(np.uint8)
    return images


@pytest.mark.parametrize("variant", FLOOR_VARIANTS)
def test_directional_gradients_see_turned_streaks_that_the_magnitude_misses(variant):
    train = streaks(16)
    normal, turned = streaks(4, seed=1), streaks(4, seed=1, turned=True)
    margins = {}
    for gradient in GRADIENT_FEATURES:
        floor = StatisticsFloor(variant, windows=(3, 7), eval_size=SIZE,
                                gradient=gradient).fit(train)
        margins[gradient] = (floor.score(turned).scores.min()
                             / floor.score(normal).scores.max())
        assert floor.features(np.zeros((1, 8, 8, 3), np.float32), (3, 7)).shape[-1] \
            == floor.n_features((3, 7), 3) == {"magnitude": 3, "directional": 4}[gradient] * 6
    assert margins["directional"] > 3 and margins["directional"] > 3 * margins["magnitude"], \
        margins


def test_maps_at_another_eval_size_keep_the_peak_in_place(gray):
    train, normals = gray
    result = StatisticsFloor(eval_size=2 * SIZE).fit(train).score(with_defect(normals))
    assert result.maps.shape == (4, 2 * SIZE, 2 * SIZE)
    row, col = np.unravel_index(np.argmax(result.maps[0]), result.maps[0].shape)
    assert 2 * 6 <= row < 2 * 16 and 2 * 28 <= col < 2 * 38


def test_a_darker_exposure_is_no_anomaly_but_a_defect_is(gray):
    train, normals = gray
    floor = StatisticsFloor().fit(train)
    darker = (normals.astype(np.float32) * 0.7).astype(np.uint8)
    assert floor.score(darker).scores.max() < floor.score(with_defect(normals)).scores.min()


def test_raw_maps_equal_a_slow_reference(gray):
    """Features by scipy's uniform filter, Gaussians by np.cov per cell, distances by solve."""
    train, normals = gray
    windows = (3, 7)
    for variant, cells in (("global", 1), ("positional", 4)):
        floor = StatisticsFloor(variant, windows=windows, grid=cells, shrinkage=0.01).fit(train)

        def reference_features(images):
            out = []
            for image in images.astype(np.float64) / 255:
                plane = image[..., 0]
                plane = (plane - plane.mean()) / max(plane.std(), 0.01)
                gradient = np.hypot(ndimage.sobel(plane, 1, mode="reflect"),
                                    ndimage.sobel(plane, 0, mode="reflect"))
                columns = []
                for w in windows:
                    mean = ndimage.uniform_filter(plane, w, mode="reflect")
                    var = ndimage.uniform_filter(plane ** 2, w, mode="reflect") - mean ** 2
                    columns += [mean, np.sqrt(np.maximum(var, 0)),
                                ndimage.uniform_filter(gradient, w, mode="reflect")]
                out.append(np.stack(columns, -1))
            return np.stack(out)

        feats_train, feats_test = reference_features(train), reference_features(normals)
        step = SIZE // cells
        expected = np.empty(normals.shape[:3])
        for i in range(cells):
            for j in range(cells):
                cell = np.s_[:, i * step:(i + 1) * step, j * step:(j + 1) * step]
                x = feats_train[cell].reshape(-1, feats_train.shape[-1])
                cov = np.cov(x, rowvar=False)
                cov += 0.01 * np.trace(cov) / len(cov) * np.eye(len(cov))
                diff = feats_test[cell] - x.mean(axis=0)
                expected[cell] = np.sqrt(np.einsum(
                    "...d,...d->...", diff, np.linalg.solve(cov, diff[..., None])[..., 0]))
        np.testing.assert_allclose(floor.raw_maps(normals), expected, rtol=1e-3, atol=1e-3)


def test_the_image_score_is_the_peak_of_the_mean_filtered_map(gray):
    train, normals = gray
    result = StatisticsFloor(score_window=3).fit(train).score(normals)
    for m, s in zip(result.maps, result.scores, strict=True):
        filtered = ndimage.uniform_filter(m.astype(np.float64), 3, mode="reflect")
        assert s == pytest.approx(filtered.max(), rel=1e-5)


def test_fit_and_score_are_deterministic(gray):
    train, normals = gray
    first = StatisticsFloor().fit(train).score(normals)
    second = StatisticsFloor().fit(train).score(normals)
    assert np.array_equal(first.maps, second.maps)
    assert np.array_equal(first.scores, second.scores)


@pytest.mark.parametrize("variant", FLOOR_VARIANTS)
def test_the_distances_do_not_depend_on_how_the_pixels_are_sliced(gray, variant, monkeypatch):
    """Scoring slices a cell's pixels to keep its float64 copies in cache; slices of 7 pixels
    (none ending at a cell's or an image's edge) give the same bits as one slice."""
    train, normals = gray
    floor = StatisticsFloor(variant, grid=4).fit(train)
    whole = floor.raw_maps(normals)
    monkeypatch.setattr(statistics_floor, "_SCORE_PIXELS", 7)
    assert np.array_equal(floor.raw_maps(normals), whole)


def test_uint8_and_unit_float_input_agree_and_recons_are_the_inputs(gray):
    train, normals = gray
    floor = StatisticsFloor().fit(train)
    as_uint8 = floor.score(normals)
    as_float = floor.score(normals.astype(np.float32) / 255)
    np.testing.assert_allclose(as_uint8.maps, as_float.maps, rtol=1e-5, atol=1e-5)
    assert as_uint8.recons.dtype == np.float32 and as_uint8.recons.shape == normals.shape
    np.testing.assert_array_equal(as_uint8.recons, normals.astype(np.float32) / 255)


@pytest.mark.parametrize("gradient", GRADIENT_FEATURES)
@pytest.mark.parametrize("variant", FLOOR_VARIANTS)
def test_save_and_load_give_identical_maps(tmp_path, gray, variant, gradient):
    train, normals = gray
    floor = StatisticsFloor(variant, eval_size=32, smooth_sigma=1.5, score_window=3,
                            gradient=gradient).fit(train)
    floor.save(tmp_path / "floor")
    loaded = StatisticsFloor.load(tmp_path / "floor")
    assert loaded.config() == floor.config()
    before, after = floor.score(normals), loaded.score(normals)
    assert np.array_equal(before.maps, after.maps)
    assert np.array_equal(before.scores, after.scores)


def test_a_floor_saved_before_the_gradient_option_loads_as_magnitude(tmp_path, gray):
    train, normals = gray
    floor = StatisticsFloor().fit(train)
    floor.save(tmp_path)
    config = json.loads((tmp_path / "statistics_floor.json").read_text())
    del config["gradient"]
    (tmp_path / "statistics_floor.json").write_text(json.dumps(config))
    loaded = StatisticsFloor.load(tmp_path)
    assert loaded.gradient == "magnitude"
    assert np.array_equal(loaded.score(normals).maps, floor.score(normals).maps)


def test_load_refuses_missing_and_mismatched_files(tmp_path, gray):
    train, _ = gray
    StatisticsFloor().fit(train).save(tmp_path)
    config = json.loads((tmp_path / "statistics_floor.json").read_text())
    config["used_windows"] = [3]
    (tmp_path / "statistics_floor.json").write_text(json.dumps(config))
    with pytest.raises(ArtifactError, match="statistics floor"):
        StatisticsFloor.load(tmp_path)
    (tmp_path / "statistics_floor.npz").unlink()
    with pytest.raises(ArtifactError, match="missing"):
        StatisticsFloor.load(tmp_path)


def test_default_windows_scale_with_the_image():
    assert default_windows(128) == (7, 15, 31)
    assert default_windows(256) == (15, 31, 63)
    assert StatisticsFloor().fit(surfaces(2)).used_windows == default_windows(SIZE)


def test_a_grid_finer_than_the_image_gives_one_cell_per_pixel():
    train = surfaces(3)[:, :16, :16]
    floor = StatisticsFloor(grid=64, windows=(3,)).fit(train)
    assert floor.mean.shape == (16, 16, 3)
    assert floor.score(train).maps.shape == (3, 128, 128)


@pytest.mark.parametrize(("images", "words"), [
    (np.zeros((4, SIZE, SIZE), np.uint8), ["train_images", r"images\[..., None\]"]),
    (np.zeros((4, SIZE, SIZE, 2), np.uint8), ["train_images", "C = 1"]),
    (np.zeros((0, SIZE, SIZE, 1), np.uint8), ["train_images", "no images"]),
    (np.full((2, SIZE, SIZE, 1), 2.0, np.float32), ["train_images", "divide uint8"]),
    (np.full((2, SIZE, SIZE, 1), np.nan, np.float32), ["train_images", "NaN", "finite"]),
    (np.zeros((2, SIZE, SIZE, 1), np.int32), ["train_images", "dtype int32"]),
    (np.zeros((1, 8, 8, 1), np.uint8), ["train_images", "more training images"]),
])
def test_wrong_training_images_are_refused_by_name(images, words):
    floor = StatisticsFloor(grid=64, windows=(3,))
    with pytest.raises(ParameterError) as caught:
        floor.fit(images)
    assert caught.value.fix
    for word in words:
        assert re.search(word, str(caught.value)), word


@pytest.mark.parametrize(("options", "name"), [
    ({"variant": "texture"}, "variant"),
    ({"windows": (4, 8)}, "windows"),
    ({"windows": ()}, "windows"),
    ({"windows": 7}, "windows"),
    ({"windows": (3, 3)}, "windows"),
    ({"eval_size": 0}, "eval_size"),
    ({"smooth_sigma": -1.0}, "smooth_sigma"),
    ({"smooth_sigma": float("nan")}, "smooth_sigma"),
    ({"score_window": 4}, "score_window"),
    ({"grid": 0}, "grid"),
    ({"normalize": "yes"}, "normalize"),
    ({"shrinkage": 0.0}, "shrinkage"),
    ({"gradient": "sobel"}, "gradient"),
    ({"gradient": None}, "gradient"),
])
def test_bad_options_are_refused_by_name(options, name):
    with pytest.raises(ParameterError, match=name) as caught:
        StatisticsFloor(**options)
    assert "Fix:" in str(caught.value)


def test_scoring_checks_the_fit_and_the_image_shape(gray):
    train, normals = gray
    with pytest.raises(LabError, match="not fitted"):
        StatisticsFloor().score(normals)
    floor = StatisticsFloor().fit(train)
    with pytest.raises(ParameterError, match="fitted on"):
        floor.score(normals[:, :32, :32])
    with pytest.raises(ParameterError, match="fitted on"):
        floor.score(np.repeat(normals, 3, axis=-1))
    with pytest.raises(ParameterError, match="images must be shaped"):
        floor.score(normals[..., 0])


def test_an_image_set_is_mapped_once_per_local_maps_and_again_when_it_changes(gray, monkeypatch):
    """The memo behind notebook 01's repeated scoring of its validation set: the same images
    are mapped once for a floor and its eigen-image copies, a changed pixel or the
    nearest-pixel form maps them again, the oldest of three sets is mapped again, and
    callers get copies equal bit for bit to a fresh floor's maps."""
    train, normals = gray
    mapped: list[float] = []
    raw_maps = StatisticsFloor._raw_maps

    def counted(self, images, owners=None):
        mapped.append(float(images.sum()))
        return raw_maps(self, images, owners)

    monkeypatch.setattr(StatisticsFloor, "_raw_maps", counted)
    floor = StatisticsFloor(grid=4).fit(train)
    fresh = StatisticsFloor(grid=4).fit(train).score(normals).maps
    mapped.clear()
    first = floor.score(normals)
    first.maps[:] = 0  # a caller's change does not reach the memo
    fused = floor.with_eigen(16, train)
    mapped.clear()  # with_eigen maps training images to standardise the maps
    assert np.array_equal(floor.score(normals).maps, fresh)
    fused.score(normals)
    assert mapped == []
    changed = normals.copy()
    changed[0, 0, 0, 0] ^= 1
    floor.score(changed)
    assert len(mapped) == 1
    floor.with_nearest(train).score(normals)
    assert len(mapped) == 2
    floor.score(normals[:2])  # a third set: normals, the oldest, leave the memo
    floor.score(normals)
    assert len(mapped) == 4
    assert np.array_equal(floor.score(normals).maps, fresh) and len(mapped) == 4
