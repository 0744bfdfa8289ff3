"""The eigen-image residual, the floor that averages it into its maps, and the floor's choice."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from anomaly_utils.errors import ArtifactError, ParameterError
from anomaly_utils.evaluation.selection import selection_score
from anomaly_utils.scoring.eigen_residual import (
    EIGEN_SIDES,
    MIN_IMAGES,
    EigenResidual,
    eigen_sides,
)
from anomaly_utils.scoring.floor_choice import fit_floor
from anomaly_utils.scoring.statistics_floor import StatisticsFloor

SIZE = 32


def tiles(n: int, seed: int = 0) -> np.ndarray:
    """(n, SIZE, SIZE, 1) float32 in [0, 1]: a disc whose brightness and position vary a
    little, on a fine texture: most of the variation lies in a few directions."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE].astype(np.float32)
    out = np.empty((n, SIZE, SIZE, 1), np.float32)
    for i in range(n):
        cy, cx = SIZE / 2 + rng.uniform(-1, 1, 2)
        disc = ((yy - cy) ** 2 + (xx - cx) ** 2 < (SIZE / 4) ** 2).astype(np.float32)
        texture = ndimage.gaussian_filter(rng.standard_normal((SIZE, SIZE)), 1)
        out[i, ..., 0] = 0.4 + rng.uniform(0.15, 0.25) * disc + 0.03 * texture
    return out.clip(0, 1)


def banded(images: np.ndarray) -> np.ndarray:
    """A copy with a smooth bright band across the left third: every neighbourhood in it looks
    like a normal one, the image as a whole does not."""
    ramp = np.clip(1 - np.arange(SIZE) / (SIZE / 3), 0, 1).astype(np.float32)
    return (images + 0.12 * ramp[None, None, :, None]).clip(0, 1)


@pytest.fixture(scope="module")
def fitted():
    return tiles(48), EigenResidual(side=16, eval_size=SIZE, smooth_sigma=1.0).fit(tiles(48))


def test_a_band_the_normals_never_show_stands_out_where_it_is(fitted):
    _, eigen = fitted
    normals = tiles(12, seed=1)
    normal_maps, band_maps = eigen.maps(normals), eigen.maps(banded(normals))
    assert band_maps.max(axis=(1, 2)).min() > normal_maps.max(axis=(1, 2)).max()
    left, right = band_maps[:, :, :SIZE // 4].mean(), band_maps[:, :, -SIZE // 4:].mean()
    assert left > right + 1.0


def test_cross_fitting_keeps_unseen_normals_at_zero_mean_and_unit_spread(fitted):
    train, eigen = fitted
    unseen = eigen.maps(tiles(24, seed=2))
    assert abs(float(unseen.mean())) < 0.35 and 0.6 < float(unseen.std()) < 1.6
    # The images the components were fitted on look more normal than unseen ones: the
    # reason the spreads are cross-fitted rather than taken from the fit itself.
    assert float(eigen.maps(train).mean()) < float(unseen.mean()) - 0.2


def test_the_kept_components_are_orthonormal_and_grow_with_the_energy(fitted):
    train, eigen = fitted
    components = eigen.components
    assert np.allclose(components @ components.T, np.eye(len(components)), atol=1e-8)
    fewer = EigenResidual(side=16, energy=0.5).fit(train).components
    assert 1 <= len(fewer) < len(components) <= len(train)


def test_fit_and_maps_are_deterministic(fitted):
    train, eigen = fitted
    again = EigenResidual(side=16, eval_size=SIZE, smooth_sigma=1.0).fit(train)
    normals = tiles(3, seed=3)
    assert np.array_equal(again.maps(normals), eigen.maps(normals))


def test_too_few_images_and_bad_settings_are_refused_with_the_fix():
    with pytest.raises(ParameterError, match=f"at least {MIN_IMAGES}.*floor_eigen") as error:
        EigenResidual(side=16).fit(tiles(MIN_IMAGES - 1))
    assert "none" in error.value.fix
    for side in (1, 16.0, True, "32"):
        with pytest.raises(ParameterError, match="side"):
            EigenResidual(side=side)
    with pytest.raises(ParameterError, match="energy"):
        EigenResidual(side=16, energy=1.0)
    with pytest.raises(ParameterError, match="not fitted"):
        EigenResidual(side=16).maps(tiles(1))


def test_floor_eigen_values():
    assert eigen_sides("auto") == EIGEN_SIDES and eigen_sides("none") == ()
    assert eigen_sides(48) == eigen_sides("48") == (48,)  # the command line gives "48"
    for bad in ("big", 1, "1", 2.5, True, None):
        with pytest.raises(ParameterError, match="floor_eigen"):
            eigen_sides(bad)


def test_the_floor_with_eigen_images_finds_the_band_that_the_local_statistics_miss():
    # The shift-invariant floor: the band's neighbourhoods are as bright as the disc's.
    train, normals = tiles(48), tiles(12, seed=1)
    floor = StatisticsFloor("global", eval_size=SIZE, smooth_sigma=1.0).fit(train)
    fused = floor.with_eigen(16, train)
    assert floor.eigen is None and fused.eigen_side == 16  # the copy, not the original

    def separation(f):  # lowest banded image score above the highest normal one
        return f.score(banded(normals)).scores.min() - f.score(normals).scores.max()

    assert separation(fused) > 0 > separation(floor)


def test_fitting_with_eigen_side_equals_adding_it_after(tmp_path):
    train, normals = tiles(24), tiles(4, seed=1)
    direct = StatisticsFloor(eval_size=SIZE, eigen_side=16).fit(train)
    after = StatisticsFloor(eval_size=SIZE).fit(train).with_eigen(16, train)
    assert np.array_equal(direct.score(normals).maps, after.score(normals).maps)
    direct.save(tmp_path)
    loaded = StatisticsFloor.load(tmp_path)
    assert loaded.config() == direct.config() and loaded.config()["eigen_side"] == 16
    assert np.array_equal(loaded.score(normals).maps, direct.score(normals).maps)
    assert np.array_equal(loaded.score(normals).scores, direct.score(normals).scores)


def test_a_floor_saved_without_the_eigen_option_loads_without_it(tmp_path):
    train, normals = tiles(24), tiles(4, seed=1)
    floor = StatisticsFloor(eval_size=SIZE).fit(train)
    floor.save(tmp_path)
    config = json.loads((tmp_path / "statistics_floor.json").read_text())
    del config["eigen_side"]
    (tmp_path / "statistics_floor.json").write_text(json.dumps(config))
    loaded = StatisticsFloor.load(tmp_path)
    assert loaded.eigen is None
    assert np.array_equal(loaded.score(normals).maps, floor.score(normals).maps)


def test_a_fused_floor_without_its_eigen_arrays_is_refused(tmp_path):
    train = tiles(24)
    StatisticsFloor(eval_size=SIZE, eigen_side=16).fit(train).save(tmp_path)
    arrays = dict(np.load(tmp_path / "statistics_floor.npz"))
    del arrays["eigen_components"]
    np.savez(tmp_path / "statistics_floor.npz", **arrays)
    with pytest.raises(ArtifactError, match="eigen"):
        StatisticsFloor.load(tmp_path)


def validation_set(n: int = 8):
    """Clean normals and banded copies, labelled, with the band's masks at SIZE."""
    normals = tiles(n, seed=5)
    images = np.concatenate([normals, banded(normals)])
    labels = np.repeat([0, 1], n)
    masks = np.zeros((2 * n, SIZE, SIZE), bool)
    masks[n:, :, :SIZE // 3] = True
    return images, labels, masks


def test_validation_chooses_the_eigen_images_where_its_anomalies_are_whole_image_bands():
    train = tiles(48)
    choice = fit_floor(train, *validation_set(), variant="global", gradient="magnitude",
                       windows=0.25, normalize="standard",
                       eval_size=SIZE)  # global: no nearest-pixel stage
    rows = ["global, magnitude", *(f"global, magnitude + eigen {s} px"
                                   for s in EIGEN_SIDES)]
    assert list(choice.validation) == rows
    scores = {row: selection_score(choice.validation[row]) for row in rows}
    assert choice.name == max(scores, key=scores.get) != rows[0]
    assert choice.floor.eigen_side == int(choice.name.split()[-2])
    assert [c["model"] for c in choice.choices] == [rows[0], choice.name]


def test_none_fits_the_local_statistics_alone_and_few_images_skip_the_eigen_images():
    images, labels, masks = validation_set(4)
    alone = fit_floor(tiles(24), images, labels, masks, form="gaussian", eigen="none",
                      normalize="standard", eval_size=SIZE)
    assert len(alone.validation) == 4 + 1 and alone.floor.eigen is None and alone.note == ""
    few = tiles(MIN_IMAGES - 1)
    skipped = fit_floor(few, images, labels, masks, variant="global",
                        normalize="standard", eval_size=SIZE)
    assert skipped.floor.eigen is None and str(MIN_IMAGES) in skipped.note
    with pytest.raises(ParameterError, match="floor_eigen 32"):
        fit_floor(few, images, labels, masks, variant="global", eigen=32,
                  normalize="standard", eval_size=SIZE)
    with pytest.raises(ParameterError, match="floor_variant"):
        fit_floor(few, images, labels, masks, variant="radial", eval_size=SIZE)
