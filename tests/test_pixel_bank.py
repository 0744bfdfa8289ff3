"""The floor's nearest-pixel form: exact distances, own pixels left out, its stage in the
floor's choice, saved and loaded bit for bit. Whether it finds real defects better is a
question for the development sets (docs/experiments.md, "The floor's nearest-pixel form")."""

from __future__ import annotations

import numpy as np
import pytest

from anomaly_utils.errors import ArtifactError, ParameterError
from anomaly_utils.evaluation.selection import selection_score
from anomaly_utils.pipeline.parameters import RULES
from anomaly_utils.scoring.floor_choice import fit_floor
from anomaly_utils.scoring.pixel_bank import MAX_BANK_IMAGES, PixelBank, bank_images
from anomaly_utils.scoring.statistics_floor import StatisticsFloor

SIZE = 32
GAUSSIAN = "positional, directional"
NEAREST = "positional, directional, nearest pixel"


def test_nearest_is_the_brute_force_distance_with_and_without_own_pixels():
    rng = np.random.default_rng(0)
    cells = [rng.normal(size=(m, 5)).astype(np.float32) for m in (7, 3)]
    owners = [np.arange(7), np.array([0, 2, 4])]
    bank = PixelBank.of_cells(cells, owners)
    queries = rng.normal(size=(6, 5)).astype(np.float32)
    query_owners = np.array([0, 1, 2, 3, 4, 5])
    for c, pixels in enumerate(cells):
        gaps = np.linalg.norm(queries[:, None] - pixels[None], axis=-1)
        np.testing.assert_allclose(bank.nearest(c, queries), gaps.min(axis=1), rtol=1e-5)
        gaps[query_owners[:, None] == owners[c][None]] = np.inf
        np.testing.assert_allclose(bank.nearest(c, queries, query_owners), gaps.min(axis=1),
                                   rtol=1e-5)
    restored = PixelBank.restore(bank.arrays())
    assert np.array_equal(restored.nearest(1, queries), bank.nearest(1, queries))
    with pytest.raises(ValueError, match="does not fit together"):
        PixelBank(bank.pixels, bank.offsets[:-1], bank.owners)


def test_the_bank_keeps_every_image_up_to_its_cap_then_evenly_spaced_ones():
    assert bank_images(5).tolist() == [0, 1, 2, 3, 4]
    kept = bank_images(3 * MAX_BANK_IMAGES)
    assert len(kept) == MAX_BANK_IMAGES and kept[0] == 0 and kept[-1] == 3 * MAX_BANK_IMAGES - 1
    assert np.all(np.diff(kept) > 0)


def stripes(n: int, seed: int, vertical: bool) -> np.ndarray:
    """(n, SIZE, SIZE, 1) float32 stripes of period 4 at a random phase, with a little noise:
    horizontal or vertical."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    axis = xx if vertical else yy
    images = [0.5 + 0.3 * np.sin(2 * np.pi * (axis + rng.uniform(0, 4)) / 4)
              + rng.normal(0, 0.02, (SIZE, SIZE)) for _ in range(n)]
    return np.asarray(images, np.float32)[..., None].clip(0, 1)


def checkered(images: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The images with a 12-pixel checkerboard square at a random place; and its masks."""
    rng = np.random.default_rng(seed)
    out, masks = images.copy(), np.zeros(images.shape[:3], bool)
    yy, xx = np.mgrid[:12, :12]
    board = 0.5 + 0.3 * np.sin(np.pi * xx / 2) * np.sin(np.pi * yy / 2)
    for i in range(len(images)):
        y, x = rng.integers(2, SIZE - 14, 2)
        out[i, y:y + 12, x:x + 12, 0] = board
        masks[i, y:y + 12, x:x + 12] = True
    return out, masks


@pytest.fixture(scope="module")
def two_clouds():
    """Training images of two kinds (horizontal and vertical stripes), and a validation set of
    clean normals of both kinds and copies with a checkered square."""
    train = np.concatenate([stripes(12, 0, False), stripes(12, 1, True)])
    normals = np.concatenate([stripes(6, 2, False), stripes(6, 3, True)])
    anomalous, masks = checkered(normals, 4)
    images = np.concatenate([normals, anomalous])
    labels = np.repeat([0, 1], len(normals))
    masks = np.concatenate([np.zeros_like(masks), masks])
    return train, images, labels, masks


def test_the_third_stage_puts_the_gaussian_form_against_the_nearest_pixel(two_clouds):
    train, images, labels, masks = two_clouds
    choice = fit_floor(train, images, labels, masks, variant="positional",
                       gradient="directional", windows=0.25, eigen="none",
                       normalize="standard", eval_size=SIZE)
    assert list(choice.validation) == [GAUSSIAN, NEAREST]
    scores = {row: selection_score(v) for row, v in choice.validation.items()}
    assert choice.name == max(scores, key=scores.get)
    assert choice.floor.form == ("nearest" if choice.name == NEAREST else "gaussian")
    assert [c["model"] for c in choice.choices] == [GAUSSIAN, choice.name]
    # the nearest-pixel row is the Gaussian floor's own features, scored by the other form
    gaussian = StatisticsFloor("positional", choice.floor.used_windows, eval_size=SIZE,
                               gradient="directional").fit(train)
    nearest = gaussian.with_nearest(train).score(images)
    assert not np.array_equal(nearest.maps, gaussian.score(images).maps)


def test_gaussian_and_nearest_asked_for_are_the_only_forms_tried(two_clouds):
    train, images, labels, masks = two_clouds
    gaussian = fit_floor(train, images, labels, masks, variant="auto", gradient="directional",
                         windows=0.25, form="gaussian", eigen="none",
                         normalize="standard", eval_size=SIZE)
    assert "nearest" not in " ".join(gaussian.validation) and gaussian.floor.bank is None
    nearest = fit_floor(train, images, labels, masks, variant="auto", gradient="directional",
                        windows=0.25, form="nearest", eigen="none",
                        normalize="standard", eval_size=SIZE)
    assert list(nearest.validation) == [GAUSSIAN]  # every floor positional, in that form
    assert nearest.floor.form == "nearest" and nearest.floor.bank is not None
    with pytest.raises(ParameterError, match="floor_form 'nearest' needs the positional"):
        fit_floor(train, images, labels, masks, variant="global", form="nearest")
    with pytest.raises(ParameterError, match="floor_form"):
        fit_floor(train, images, labels, masks, form="knn")
    global_only = fit_floor(train, images, labels, masks, variant="global",
                            gradient="directional", windows=0.25, eigen="none",
                            normalize="standard", eval_size=SIZE)
    assert "no nearest-pixel form" in global_only.note and global_only.floor.bank is None


def test_the_nearest_form_needs_the_positional_variant():
    with pytest.raises(ParameterError, match="positional variant"):
        StatisticsFloor("global", form="nearest")
    with pytest.raises(ParameterError, match="form 'knn' is not known"):
        StatisticsFloor(form="knn")
    fitted = StatisticsFloor("global", eval_size=SIZE).fit(stripes(4, 0, False))
    with pytest.raises(ParameterError, match="positional variant"):
        fitted.with_nearest(stripes(4, 0, False))
    rule = RULES["01_data_exploration"]["floor_form"]
    assert rule("auto") is None and rule("nearest") is None and rule("gaussian") is None
    assert "nearest" in rule("knn")


def test_a_training_image_is_its_own_nearest_pixel_unless_left_out(two_clouds):
    train = two_clouds[0]
    floor = StatisticsFloor(eval_size=SIZE, gradient="directional", grid=8,
                            form="nearest").fit(train)
    centres = (slice(1, None, 4), slice(1, None, 4))  # the 4 x 4 cells' centre pixels
    assert floor.raw_maps(train[:3])[:, centres[0], centres[1]].max() < 1e-2
    left_out = floor._raw_maps(train[:3], owners=np.arange(3))
    assert left_out[:, centres[0], centres[1]].min() > 0.05
    # the fitted form and the form built from a fitted Gaussian floor are the same floor
    built = StatisticsFloor(eval_size=SIZE, gradient="directional", grid=8).fit(train)
    assert np.array_equal(built.with_nearest(train).score(train[:3]).maps,
                          floor.score(train[:3]).maps)


def test_a_nearest_floor_loads_bit_for_bit_with_and_without_eigen_images(two_clouds, tmp_path):
    train, images = two_clouds[0], two_clouds[1]
    nearest = StatisticsFloor(eval_size=SIZE, gradient="directional", form="nearest").fit(train)
    for name, floor in (("alone", nearest), ("eigen", nearest.with_eigen(16, train))):
        floor.save(tmp_path / name)
        loaded = StatisticsFloor.load(tmp_path / name)
        assert loaded.form == "nearest" and loaded.config() == floor.config()
        assert np.array_equal(loaded.score(images).maps, floor.score(images).maps), name
    arrays = dict(np.load(tmp_path / "alone" / "statistics_floor.npz"))
    del arrays["bank_owners"]
    np.savez(tmp_path / "alone" / "statistics_floor.npz", **arrays)
    with pytest.raises(ArtifactError, match="bank_owners"):
        StatisticsFloor.load(tmp_path / "alone")


def test_beyond_its_cap_the_bank_keeps_evenly_spaced_training_images(two_clouds, monkeypatch):
    from anomaly_utils.scoring import pixel_bank

    monkeypatch.setattr(pixel_bank, "MAX_BANK_IMAGES", 5)
    train = two_clouds[0]
    floor = StatisticsFloor(eval_size=SIZE, gradient="directional", grid=8,
                            form="nearest").fit(train)
    kept = bank_images(len(train))
    assert len(kept) == 5 and floor.bank.pixels.shape[0] == 5 * 64
    assert np.array_equal(floor.bank.owners[:5], kept)
    centre = floor.raw_maps(train)[:, 1::4, 1::4]  # a kept image is its own nearest pixel
    assert centre[kept].max() < 1e-2
    assert centre[np.setdiff1d(np.arange(len(train)), kept)].min() > 1e-2
