"""The run's shared pseudo-labelled validation set: one set for every candidate, whatever
size it reads the data at, built once and rebuilt only for other data or another seed."""

from __future__ import annotations

import os

import numpy as np
import pytest

from anomaly_utils.data.layout import scan_dataset
from anomaly_utils.data.loading import load_dataset, resize_image, resize_mask
from anomaly_utils.data.synthetic import generate_dataset
from anomaly_utils.errors import DataError
from anomaly_utils.evaluation.selection import selection_score, validation_metrics
from anomaly_utils.scoring.validation_set import MAX_SIDE, shared_validation, validation_file


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return generate_dataset(tmp_path_factory.mktemp("data") / "carpet", seed=2, size=96,
                            n_train=20, n_test_good=2, n_per_defect=2)


def _load(data, size, val_fraction=0.2, color_mode="rgb"):
    return load_dataset(data, image_size=size, color_mode=color_mode,
                        val_fraction=val_fraction, seed=0)


def test_candidates_at_different_sizes_see_the_same_anomalies(data, tmp_path):
    small, large = _load(data, 32), _load(data, 64)
    first = shared_validation(tmp_path, small, seed=0, eval_size=24)
    second = shared_validation(tmp_path, large, seed=0, eval_size=24)
    assert np.array_equal(first.labels, second.labels)
    assert np.array_equal(first.kinds, second.kinds)
    assert np.array_equal(first.masks, second.masks) and first.masks.shape[1:] == (24, 24)
    assert first.images.shape[1:] == (32, 32, 3) and second.images.shape[1:] == (64, 64, 3)
    # Both are the stored set (at the files' own 96 px) resized, as test images are.
    stored = np.load(validation_file(tmp_path, "rgb"))
    assert int(stored["side"]) == min(96, MAX_SIDE)
    assert np.array_equal(first.images, np.stack([resize_image(i, 32) for i in stored["images"]]))
    assert np.array_equal(first.masks, np.stack([resize_mask(m, 24) for m in stored["masks"]]))
    # The clean copies are the validation normals themselves.
    n = len(small.val_images)
    assert np.array_equal(first.images[:n], small.val_images) and not first.labels[:n].any()
    assert first.labels[n:].all() and len(set(first.kinds[n:])) == 9


def test_built_once_and_rebuilt_for_another_seed_or_split(data, tmp_path):
    ds = _load(data, 32)
    shared_validation(tmp_path, ds, seed=0, eval_size=16)
    path = validation_file(tmp_path, "rgb")
    built = path.stat().st_mtime_ns
    shared_validation(tmp_path, ds, seed=0, eval_size=16)
    assert path.stat().st_mtime_ns == built
    again = shared_validation(tmp_path, ds, seed=1, eval_size=16)
    assert path.stat().st_mtime_ns != built
    other_split = shared_validation(tmp_path, _load(data, 32, val_fraction=0.3), seed=1,
                                    eval_size=16)
    assert len(other_split.labels) != len(again.labels)


def test_grayscale_runs_keep_their_own_set(data, tmp_path):
    gray = shared_validation(tmp_path, _load(data, 32, color_mode="grayscale"), 0, 16)
    assert gray.images.shape[-1] == 1
    assert validation_file(tmp_path, "grayscale").is_file()
    assert not validation_file(tmp_path, "rgb").exists()


def test_no_validation_images_is_a_clear_error(data, tmp_path):
    with pytest.raises(DataError, match="val_fraction"):
        shared_validation(tmp_path, _load(data, 32, val_fraction=0.0), 0, 16)


def _add_labelled_defects(data, dest, count):
    """A copy of ``data`` (links) with ``count`` test defects moved to val/<defect>/."""
    import shutil
    shutil.copytree(data, dest, copy_function=os.link)
    firsts = [sorted(folder.glob("*.png"))[0] for folder in sorted((dest / "test").iterdir())
              if folder.name != "good"]  # one per defect type; each keeps another
    moved = firsts[:count]
    for path in moved:
        (dest / "val" / path.parent.name).mkdir(parents=True, exist_ok=True)
        path.rename(dest / "val" / path.parent.name / path.name)
    return moved


def test_labelled_validation_defects_join_the_set_and_decide_the_choice(data, tmp_path):
    moved = _add_labelled_defects(data, tmp_path / "data", 3)
    assert all(not p.exists() for p in moved)  # moved out of the test split
    index = scan_dataset(tmp_path / "data")
    assert [s.split for s in index.val_defects] == ["val"] * 3
    assert all(s.mask_path is not None for s in index.val_defects)
    assert len(index.test) == len(scan_dataset(data).test) - 3
    ds = _load(tmp_path / "data", 32)
    pseudo = shared_validation(tmp_path / "run", ds, 0, 16)
    labelled = np.char.startswith(pseudo.kinds.astype(str), "labelled/")
    assert labelled.sum() == 3 and pseudo.labels[labelled].all() and pseudo.has_mask.all()
    # A candidate that finds only the pasted anomalies scores 1 on them but is at chance on
    # the labelled defects, and the choice weighs both halves equally.
    scores = np.where(pseudo.labels.astype(bool) & ~labelled, 1.0, 0.0)
    maps = np.zeros(pseudo.masks.shape, np.float32)
    result = validation_metrics({"labels": pseudo.labels, "scores": scores, "masks": pseudo.masks,
                                 "maps": maps, "types": pseudo.kinds, "has_mask": pseudo.has_mask})
    assert result["labelled_defects"] == 3 and result["labelled_image_auroc"] == 0.5
    assert result["image_auroc"] == 1.0 and result["pixel_auroc"] == 0.5
    assert selection_score(result) == pytest.approx(((1.0 + 0.5) / 2 + (0.5 + 0.5) / 2) / 2)
    without = validation_metrics({"labels": pseudo.labels, "scores": scores,
                                  "masks": pseudo.masks, "maps": maps})
    assert without["labelled_defects"] == 0 and "labelled_image_auroc" not in without
    assert selection_score(without) == pytest.approx(0.5 * (without["image_auroc"] + 0.5))


def test_val_good_and_shared_mask_names_are_clear_errors(data, tmp_path):
    moved = _add_labelled_defects(data, tmp_path / "a", 1)
    clash = tmp_path / "a" / "test" / moved[0].parent.name / moved[0].name
    os.link(tmp_path / "a" / "val" / moved[0].parent.name / moved[0].name, clash)
    with pytest.raises(DataError, match="would serve two images"):
        scan_dataset(tmp_path / "a")
    _add_labelled_defects(data, tmp_path / "b", 0)
    (tmp_path / "b" / "val" / "good").mkdir(parents=True)
    os.link(next((tmp_path / "b" / "train" / "good").glob("*.png")),
            tmp_path / "b" / "val" / "good" / "x.png")
    with pytest.raises(DataError, match="train/good"):
        scan_dataset(tmp_path / "b")


def test_the_data_stage_and_the_chooser_agree_on_the_labelled_prefix():
    from anomaly_utils.data import pseudo_anomalies
    from anomaly_utils.evaluation import selection

    assert pseudo_anomalies.LABELLED == selection.LABELLED
