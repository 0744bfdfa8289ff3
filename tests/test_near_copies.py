"""Near-copies: captures of one item found among the images, the report on a test split, and
the validation split that keeps an item's captures on one side."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from anomaly_utils.data.layout import scan_dataset, split_train_val
from anomaly_utils.data.loading import load_dataset, load_run_dataset
from anomaly_utils.data.near_copies import (
    file_thumbnails,
    has_near_copy,
    near_copy_groups,
    near_copy_note,
    near_copy_report,
    thumbnails,
)
from anomaly_utils.errors import ParameterError
from anomaly_utils.pipeline.parameters import validate

SIDE = 64


def _item(rng: np.random.Generator) -> np.ndarray:
    """A new item: smooth random texture, uint8 (SIDE, SIDE)."""
    noise = rng.normal(0, 1, (SIDE, SIDE)).astype(np.float32)
    smooth = cv2.GaussianBlur(noise, (0, 0), 3)
    return np.clip(128 + 60 * smooth / smooth.std(), 0, 255).astype(np.uint8)


def _recapture(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The same item again: another lighting (gain, gamma, a shading ramp) and a crop a few
    pixels off."""
    gain, gamma = rng.uniform(0.7, 1.3), rng.uniform(0.8, 1.25)
    ramp = np.linspace(-15, 15, SIDE)[None, :]
    lit = 255 * (image / 255.0) ** gamma * gain + ramp
    crop = int(rng.integers(1, 4))
    cropped = lit[crop:, :SIDE - crop]
    resized = cv2.resize(cropped.astype(np.float32), (SIDE, SIDE), interpolation=cv2.INTER_LINEAR)
    return np.clip(resized, 0, 255).astype(np.uint8)


def _items_with_recaptures(n_items: int = 40, n_repeated: int = 8, captures: int = 3):
    """Gray images (N, SIDE, SIDE, 1) and each image's item number: ``n_repeated`` items
    captured ``captures`` times, the rest once."""
    rng = np.random.default_rng(0)
    images, items = [], []
    for item in range(n_items):
        first = _item(rng)
        images.append(first)
        items.append(item)
        for _ in range(captures - 1 if item < n_repeated else 0):
            images.append(_recapture(first, rng))
            items.append(item)
    return np.stack(images)[..., None], np.array(items)


def test_thumbnails_are_zero_mean_unit_rows_and_a_flat_image_gives_zeros():
    images = np.zeros((2, 32, 32, 3), np.uint8)
    images[0] = np.random.default_rng(1).integers(0, 255, (32, 32, 3))
    thumbs = thumbnails(images)
    assert thumbs.shape == (2, 256) and thumbs.dtype == np.float32
    assert abs(thumbs[0].mean()) < 1e-6 and np.linalg.norm(thumbs[0]) == pytest.approx(1, abs=1e-5)
    assert not thumbs[1].any()
    with pytest.raises(ValueError, match="N, S, S, C"):
        thumbnails(images[0])


def test_groups_join_the_captures_of_an_item_and_nothing_else():
    images, items = _items_with_recaptures()
    groups = near_copy_groups(thumbnails(images))
    for item in range(8):
        assert len(set(groups[items == item])) == 1, f"item {item}'s captures split"
    sizes = np.bincount(groups)
    assert (sizes > 1).sum() == 8 and sizes.max() == 3
    # Singletons are numbered in order, so distinct images keep their index order.
    assert np.all(np.diff(groups[items >= 8]) == 1)


def test_alike_aligned_objects_are_not_near_copies():
    # Every image the same template plus its own noise: all neighbours are equally close,
    # so the relative rule links none of them.
    rng = np.random.default_rng(2)
    template = _item(rng).astype(np.float32)
    images = np.stack([np.clip(template + rng.normal(0, 8, template.shape), 0, 255)
                       for _ in range(40)]).astype(np.uint8)[..., None]
    assert len(np.unique(near_copy_groups(thumbnails(images)))) == 40


def test_has_near_copy_finds_the_test_captures_of_training_items():
    images, items = _items_with_recaptures()
    first = np.r_[True, items[1:] != items[:-1]]
    train, queries = images[first], images[~first]
    rng = np.random.default_rng(5)
    new_items = np.stack([_item(rng) for _ in range(6)])[..., None]
    assert has_near_copy(thumbnails(queries), thumbnails(train)).all()
    assert not has_near_copy(thumbnails(new_items), thumbnails(train)).any()
    assert not has_near_copy(thumbnails(new_items), thumbnails(train[:1])).any()


def test_report_and_note_count_the_remembered_normals():
    images, items = _items_with_recaptures()
    first = np.r_[True, items[1:] != items[:-1]]
    rng = np.random.default_rng(6)
    defective = np.stack([_item(rng) for _ in range(10)])[..., None]
    test = np.concatenate([images[~first], defective])
    labels = np.r_[np.zeros((~first).sum(), int), np.ones(10, int)]
    report = near_copy_report(thumbnails(images[first]), thumbnails(test), labels)
    assert report == {"good": [16, 16], "defective": [0, 10], "train_in_groups": 0}
    note = near_copy_note(report)
    assert note is not None and "16 of 16 defect-free" in note and "0 of 10 defective" in note
    assert near_copy_note({"good": [3, 16], "defective": [0, 10], "train_in_groups": 0}) is None


def _write(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)


@pytest.fixture
def recaptured_set(tmp_path: Path) -> tuple[Path, dict[str, int]]:
    """A dataset whose train/good holds 8 items captured three times and 16 once; file names
    shuffled so that an item's captures are not neighbours in name order."""
    images, items = _items_with_recaptures(n_items=24)
    root = tmp_path / "set"
    order = np.random.default_rng(3).permutation(len(images))
    item_of = {}
    for name, index in enumerate(order):
        _write(root / "train" / "good" / f"{name:03d}.png", images[index, ..., 0])
        item_of[f"{name:03d}.png"] = int(items[index])
    rng = np.random.default_rng(4)
    _write(root / "test" / "good" / "000.png", _item(rng))
    _write(root / "test" / "hole" / "000.png", _item(rng))
    _write(root / "ground_truth" / "hole" / "000_mask.png", np.full((SIDE, SIDE), 255, np.uint8))
    return root, item_of


def test_split_by_items_keeps_each_items_captures_on_one_side(recaptured_set):
    root, item_of = recaptured_set
    by_images = load_dataset(root, image_size=32, val_fraction=0.25, seed=0)
    val_items = [item_of[p.name] for p in by_images.val_paths]
    train_items = {item_of[s.path.name] for s in by_images.index.train
                   if s.path not in set(by_images.val_paths)}
    assert set(val_items) & train_items, "the image split should leak an item at this seed"
    for seed in range(4):
        ds = load_dataset(root, image_size=32, val_fraction=0.25, seed=seed, val_split="items")
        val_items = {item_of[p.name] for p in ds.val_paths}
        train_items = {item_of[s.path.name] for s in ds.index.train
                       if s.path not in set(ds.val_paths)}
        assert not val_items & train_items
        assert len(ds.val_paths) >= 10 and len(ds.train_images) + len(ds.val_images) == 40


def test_a_runs_dataset_is_loaded_with_the_split_the_run_drew(recaptured_set):
    root, _ = recaptured_set
    params = {"data_dir": str(root), "image_size": 32, "color_mode": "auto",
              "val_fraction": 0.25, "seed": 1, "eval_size": 32, "val_split": "items"}
    by_items = load_dataset(root, image_size=32, val_fraction=0.25, seed=1, val_split="items")
    by_images = load_dataset(root, image_size=32, val_fraction=0.25, seed=1)
    assert by_items.val_paths != by_images.val_paths
    assert load_run_dataset(params).val_paths == by_items.val_paths
    recorded_before = {k: v for k, v in params.items() if k != "val_split"}
    assert load_run_dataset(recorded_before).val_paths == by_images.val_paths
    assert load_run_dataset(params, image_size=16).train_images.shape[1] == 16


def test_distinct_groups_reproduce_the_image_split(recaptured_set):
    root, _ = recaptured_set
    samples = scan_dataset(root).train
    for seed in range(3):
        plain = split_train_val(samples, 0.3, seed)
        distinct = split_train_val(samples, 0.3, seed, groups=list(range(100, 100 + len(samples))))
        assert plain == distinct


def test_file_thumbnails_match_the_loaded_images_and_survive_an_unreadable_file(tmp_path):
    images, _ = _items_with_recaptures(n_items=3, n_repeated=0)
    paths = []
    for i, image in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        _write(paths[-1], image[..., 0])
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    thumbs = file_thumbnails([*paths, broken])
    np.testing.assert_allclose(thumbs[:3], thumbnails(images), atol=1e-6)
    assert not thumbs[3].any()


def test_a_bad_val_split_names_the_parameter(recaptured_set):
    root, _ = recaptured_set
    with pytest.raises(ParameterError, match="val_split"):
        load_dataset(root, image_size=32, val_split="tiles")
    with pytest.raises(ParameterError, match="val_split"):
        validate("02_train_ae1", {"val_split": "tiles"})
    validate("01_data_exploration", {"val_split": "items"})


def test_a_group_too_large_for_validation_stays_in_training(recaptured_set):
    root, _ = recaptured_set
    samples = scan_dataset(root).train
    n = len(samples)
    train, val = split_train_val(samples, 0.3, 0, groups=[0] * (n - 2) + [1, 2])
    assert len(val) == 2 and len(train) == n - 2
    # Nothing fits at all: the images are drawn one by one.
    assert split_train_val(samples, 0.3, 0, groups=[0] * n) == split_train_val(samples, 0.3, 0)


def test_check_data_reports_remembered_test_normals(tmp_path, capsys):
    import argparse
    import json

    from anomaly_utils.pipeline.cli import cmd_check_data

    images, items = _items_with_recaptures(n_items=30, n_repeated=8)
    first = np.r_[True, items[1:] != items[:-1]]
    root = tmp_path / "set"
    for i, image in enumerate(images[first]):
        _write(root / "train" / "good" / f"{i:03d}.png", image[..., 0])
    for i, image in enumerate(images[~first]):
        _write(root / "test" / "good" / f"{i:03d}.png", image[..., 0])
    _write(root / "test" / "hole" / "000.png", _item(np.random.default_rng(9)))
    _write(root / "ground_truth" / "hole" / "000_mask.png", np.full((SIDE, SIDE), 255, np.uint8))
    args = argparse.Namespace(data_dir=str(root), image_size=64, color_mode="auto",
                              allow_missing_masks=False, skip_unreadable=False)
    assert cmd_check_data(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["near_copies"] == {"good": [16, 16], "defective": [0, 1], "train_in_groups": 0}
    assert any("16 of 16 defect-free test images have a near-copy" in n for n in summary["notes"])
