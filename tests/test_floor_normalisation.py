"""The floor's image normalisation: standardised by mean and deviation, or divided by the mean.

Standardising an image by its own deviation makes a large band of rougher texture lower the
contrast of the rest of the image, so the untouched part of a defective image scores above the
normals (magnetic_tile's tiles ground two ways). Dividing by the mean undoes an exposure that
scales every intensity alike and keeps the contrast. Notebook 01 puts the two against each
other on validation after the form (``floor_normalize="auto"``).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from anomaly_utils.errors import ParameterError
from anomaly_utils.evaluation.selection import selection_score
from anomaly_utils.pipeline.parameters import RULES
from anomaly_utils.scoring.floor_choice import fit_floor, normalisation_suffix
from anomaly_utils.scoring.statistics_floor import (
    NORMALISATIONS,
    StatisticsFloor,
    gain_normalised,
)

SIZE = 48
BAND = slice(0, SIZE // 2)  # the rows of the rougher band
ROW = "positional, magnitude, windows to 0.5"


def textures(n: int, seed: int, rough_band: bool = False) -> np.ndarray:
    """(n, SIZE, SIZE, 1) float32 in [0, 1]: a fine texture around mid-grey, each image at its
    own exposure (a gain of 0.85-1.15); ``rough_band`` triples the texture's contrast in the
    top half, at the same mean."""
    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.standard_normal((n, SIZE, SIZE)), (0, 1, 1))
    contrast = np.full((SIZE, 1), 0.1)
    if rough_band:
        contrast[BAND] = 0.3
    gains = rng.uniform(0.85, 1.15, (n, 1, 1))
    return ((0.45 + contrast * noise) * gains)[..., None].clip(0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def train() -> np.ndarray:
    return textures(24, 0)


def test_the_gain_normalisation_undoes_a_scaled_exposure_and_keeps_the_contrast():
    image = textures(1, 1)[0]
    assert np.allclose(gain_normalised(image * 0.8), gain_normalised(image), atol=1e-5)
    assert abs(float(gain_normalised(image).mean())) < 1e-5
    # contrast kept: twice the deviation around the same mean stays twice the deviation
    mean = image.mean()
    rougher = mean + 2 * (image - mean)
    assert np.isclose(gain_normalised(rougher).std(), 2 * gain_normalised(image).std(),
                      rtol=1e-4)
    dark = np.zeros((4, 4, 1), np.float32)  # no division by zero: the mean's floor is 0.01
    assert np.isfinite(gain_normalised(dark)).all()


def test_a_rough_band_raises_the_rest_of_the_image_only_when_standardised(train):
    normals, banded = textures(6, 2), textures(6, 2, rough_band=True)
    rest = {}
    for normalize in ("standard", "gain"):
        floor = StatisticsFloor("positional", windows=(3, 7), eval_size=SIZE,
                                normalize=normalize).fit(train)
        normal_maps, banded_maps = floor.score(normals).maps, floor.score(banded).maps
        below = slice(SIZE // 2 + 8, SIZE)  # the untouched half, clear of the band's edge
        rest[normalize] = np.median(banded_maps[:, below]) / np.median(normal_maps[:, below])
        # the band itself stands out either way
        assert np.median(banded_maps[:, BAND]) > 1.3 * np.median(normal_maps[:, BAND])
    assert rest["standard"] > 1.3 and rest["gain"] < 1.1, rest


def test_normalize_takes_the_booleans_of_older_floors_and_refuses_other_values(tmp_path,
                                                                               train):
    assert StatisticsFloor(normalize=True).normalize == "standard"
    assert StatisticsFloor(normalize=False).normalize == "none"
    for bad in ("yes", "Gain", None, 1):
        with pytest.raises(ParameterError, match="normalize"):
            StatisticsFloor(normalize=bad)
    floor = StatisticsFloor(eval_size=SIZE, normalize="gain").fit(train)
    floor.save(tmp_path / "gain")
    loaded = StatisticsFloor.load(tmp_path / "gain")
    assert loaded.normalize == "gain"
    images = textures(3, 5)
    assert np.array_equal(loaded.score(images).maps, floor.score(images).maps)
    standard = StatisticsFloor(eval_size=SIZE).fit(train)
    standard.save(tmp_path / "old")
    config_file = tmp_path / "old" / "statistics_floor.json"
    config = json.loads(config_file.read_text())
    config["normalize"] = True  # as written before the gain normalisation
    config_file.write_text(json.dumps(config))
    old = StatisticsFloor.load(tmp_path / "old")
    assert old.normalize == "standard"
    assert np.array_equal(old.score(images).maps, standard.score(images).maps)


def banded_validation():
    """Clean normals, and copies with the rough band, masked; labels and masks."""
    normals, banded = textures(8, 3), textures(8, 4, rough_band=True)
    masks = np.zeros((16, SIZE, SIZE), bool)
    masks[8:, BAND] = True
    return np.concatenate([normals, banded]), np.repeat([0, 1], 8), masks


def test_the_fourth_stage_puts_the_gain_normalisation_against_the_standard_one(train):
    choice = fit_floor(train, *banded_validation(), variant="positional", gradient="magnitude",
                       windows=0.5, form="gaussian", eigen="none", eval_size=SIZE)
    gain = ROW + normalisation_suffix("gain")
    assert gain == "positional, magnitude, windows to 0.5, gain-normalised"
    assert list(choice.validation) == [ROW, gain]
    scores = {row: selection_score(v) for row, v in choice.validation.items()}
    # the band's masks mark only the band: the standardised floor's raised rest costs pixels
    assert scores[gain] > scores[ROW], scores
    assert choice.name == gain and choice.floor.normalize == "gain"
    assert [c["model"] for c in choice.choices] == [ROW, gain]


def test_a_normalisation_asked_for_is_the_only_one_tried(train):
    images, labels, masks = banded_validation()
    choice = fit_floor(train, images, labels, masks, variant="positional", gradient="auto",
                       windows=0.5, form="gaussian", normalize="gain", eigen="none",
                       eval_size=SIZE)
    assert list(choice.validation) == [
        f"positional, {g}, windows to 0.5, gain-normalised"
        for g in ("magnitude", "directional")]
    assert choice.floor.normalize == "gain"
    with pytest.raises(ParameterError, match="floor_normalize"):
        fit_floor(train, images, labels, masks, normalize="robust", eval_size=SIZE)
    rule = RULES["01_data_exploration"]["floor_normalize"]
    assert rule("robust") and all(rule(v) is None for v in ("auto", *NORMALISATIONS))
