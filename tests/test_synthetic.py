"""Tests for the procedural carpet dataset (anomaly_utils.data.synthetic)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from anomaly_utils.data import synthetic
from anomaly_utils.data.synthetic import DEFECT_TYPES, add_defect, generate_dataset, render_carpet
from anomaly_utils.errors import LabError, ParameterError

SMALL = {"size": 48, "n_train": 3, "n_test_good": 2, "n_per_defect": 2}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _read_rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("ds") / "carpet", seed=3, **SMALL)


def test_render_carpet_shape_dtype_and_texture():
    image = render_carpet(np.random.default_rng(0), size=64)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert image.std() > 10, "a woven texture, not a flat image"
    again = render_carpet(np.random.default_rng(0), size=64)
    other = render_carpet(np.random.default_rng(1), size=64)
    assert np.array_equal(image, again)
    assert not np.array_equal(image, other)


@pytest.mark.parametrize("defect_type", DEFECT_TYPES)
def test_add_defect_changes_only_mask_pixels(defect_type):
    for seed in range(6):
        rng = np.random.default_rng(seed)
        clean = render_carpet(rng, size=96)
        defective, mask = add_defect(clean, defect_type, rng)
        assert defective.dtype == np.uint8 and defective.shape == clean.shape
        assert mask.dtype == bool and mask.shape == clean.shape[:2]
        assert mask.any()
        assert np.array_equal(defective[~mask], clean[~mask])
        changed = (defective != clean).any(axis=2)
        assert changed[mask].mean() > 0.6, f"seed {seed}: most mask pixels must change"


@pytest.mark.parametrize("defect_type", DEFECT_TYPES)
def test_defects_vary_in_size_and_position(defect_type):
    areas, centres = [], []
    for seed in range(8):
        rng = np.random.default_rng(100 + seed)
        _, mask = add_defect(render_carpet(rng, size=128), defect_type, rng)
        areas.append(mask.sum())
        centres.append(np.argwhere(mask).mean(axis=0))
    assert max(areas) > 2 * min(areas)
    assert np.ptp(np.array(centres), axis=0).min() > 20


def test_add_defect_rejects_bad_input():
    image = render_carpet(np.random.default_rng(0), size=32)
    with pytest.raises(ParameterError, match="defect_type"):
        add_defect(image, "scratch", np.random.default_rng(0))
    with pytest.raises(ParameterError, match="uint8"):
        add_defect(image.astype(np.float32), "hole", np.random.default_rng(0))


def test_layout_and_counts(small_dataset):
    names = set(_files(small_dataset))
    expected = {"README.md"}
    expected |= {f"train/good/{i:03d}.png" for i in range(3)}
    expected |= {f"test/good/{i:03d}.png" for i in range(2)}
    for defect in DEFECT_TYPES:
        expected |= {f"test/{defect}/{i:03d}.png" for i in range(2)}
        expected |= {f"ground_truth/{defect}/{i:03d}_mask.png" for i in range(2)}
    assert names == expected
    assert not list(small_dataset.parent.glob("*.partial-*"))
    readme = (small_dataset / "README.md").read_text()
    assert "seed: 3" in readme and "48x48" in readme
    assert f"generator version {synthetic.GENERATOR_VERSION}" in readme


def test_images_are_rgb_pngs_of_the_right_size(small_dataset):
    image = cv2.imread(str(small_dataset / "train/good/000.png"), cv2.IMREAD_UNCHANGED)
    assert image.shape == (48, 48, 3) and image.dtype == np.uint8


def test_masks_are_binary_single_channel_and_nonempty(small_dataset):
    for path in (small_dataset / "ground_truth").rglob("*_mask.png"):
        mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        assert mask.dtype == np.uint8 and mask.ndim == 2, path
        assert set(np.unique(mask)) <= {0, 255}, path
        assert (mask == 255).any(), path


def test_saved_defects_match_their_masks(small_dataset):
    """Recreate each clean image from its seed: outside the mask the PNG equals it exactly."""
    for slot, defect in enumerate(DEFECT_TYPES):
        seeds = synthetic._image_seeds(3, 2 + slot, SMALL["n_per_defect"])
        for i, seq in enumerate(seeds):
            clean = render_carpet(np.random.default_rng(seq), SMALL["size"])
            image = _read_rgb(small_dataset / f"test/{defect}/{i:03d}.png")
            mask = cv2.imread(str(small_dataset / f"ground_truth/{defect}/{i:03d}_mask.png"),
                              cv2.IMREAD_UNCHANGED) == 255
            assert np.array_equal(image[~mask], clean[~mask]), (defect, i)
            assert (image != clean).any(axis=2)[mask].mean() > 0.5, (defect, i)


def test_good_images_are_the_clean_renders(small_dataset):
    seq = synthetic._image_seeds(3, synthetic._GROUP_TRAIN, SMALL["n_train"])[1]
    clean = render_carpet(np.random.default_rng(seq), SMALL["size"])
    assert np.array_equal(_read_rgb(small_dataset / "train/good/001.png"), clean)


def test_same_seed_is_byte_identical_and_other_seed_differs(small_dataset, tmp_path):
    again = generate_dataset(tmp_path / "again", seed=3, **SMALL)
    assert _files(again) == _files(small_dataset)
    other = _files(generate_dataset(tmp_path / "other", seed=4, **SMALL))
    pngs = [name for name in other if name.endswith(".png") and "ground_truth" not in name]
    assert all(other[name] != _files(small_dataset)[name] for name in pngs)


def test_defect_subset_writes_only_those_types(tmp_path):
    out = generate_dataset(tmp_path / "sub", size=32, n_train=0, n_test_good=0, n_per_defect=1,
                           defect_types=["hole"])
    assert sorted(p.name for p in (out / "test").iterdir()) == ["good", "hole"]
    assert sorted(p.name for p in (out / "ground_truth").iterdir()) == ["hole"]
    assert not any((out / "train" / "good").iterdir())


@pytest.mark.parametrize(("kwargs", "name"), [
    ({"size": 16}, "size"),
    ({"size": 64.0}, "size"),
    ({"n_train": -1}, "n_train"),
    ({"n_test_good": -2}, "n_test_good"),
    ({"n_per_defect": 0}, "n_per_defect"),
    ({"seed": -1}, "seed"),
    ({"defect_types": ("stain",)}, "defect_types"),
    ({"defect_types": ()}, "defect_types"),
    ({"defect_types": ("hole", "hole")}, "defect_types"),
])
def test_parameter_errors_name_the_parameter(tmp_path, kwargs, name):
    with pytest.raises(ParameterError, match=name):
        generate_dataset(tmp_path / "out", **{**SMALL, **kwargs})
    assert list(tmp_path.iterdir()) == []


def test_refuses_non_empty_out_dir_unless_overwrite(tmp_path):
    out = generate_dataset(tmp_path / "c", seed=1, size=32, n_train=1, n_test_good=1,
                           n_per_defect=1)
    before = _files(out)
    with pytest.raises(LabError, match="not empty"):
        generate_dataset(out, seed=2, size=32, n_train=1, n_test_good=1, n_per_defect=1)
    assert _files(out) == before
    generate_dataset(out, seed=2, size=32, n_train=1, n_test_good=1, n_per_defect=1,
                     overwrite=True)
    assert _files(out) != before and "seed: 2" in (out / "README.md").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_overwrite_never_deletes_a_foreign_folder(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(LabError, match="not written by generate_dataset"):
        generate_dataset(out, size=32, n_train=1, n_test_good=1, n_per_defect=1, overwrite=True)
    assert (out / "notes.txt").read_text() == "keep me"


def test_empty_out_dir_is_used(tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    generate_dataset(out, size=32, n_train=1, n_test_good=0, n_per_defect=1)
    assert (out / "train/good/000.png").is_file()


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    calls = []
    real_write = synthetic._write_png

    def failing_write(path, array):
        calls.append(path)
        if len(calls) == 4:
            raise KeyboardInterrupt
        real_write(path, array)

    monkeypatch.setattr(synthetic, "_write_png", failing_write)
    with pytest.raises(KeyboardInterrupt):
        generate_dataset(tmp_path / "c", size=32, n_train=3, n_test_good=1, n_per_defect=1)
    assert len(calls) == 4
    assert list(tmp_path.iterdir()) == []
