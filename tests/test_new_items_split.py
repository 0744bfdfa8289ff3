"""experiments/new_items_split.py: a dataset's defect-free images split again by near-copy
group, so that no test normal is a capture of a training item."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import experiment_script
from tests.test_near_copies import _items_with_recaptures, _write


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def remembered_set(tmp_path: Path) -> tuple[Path, dict[str, int]]:
    """12 items captured three times and 18 once, split image by image: 36 train/good and
    18 test/good images, a third of them captures of items in train/good; one defect with a
    mask. Returns the folder and each image file's item, by content digest."""
    images, items = _items_with_recaptures(n_items=30, n_repeated=12)
    order = np.random.default_rng(5).permutation(len(images))
    root = tmp_path / "set"
    item_of = {}
    for position, index in enumerate(order):
        split = "test" if position < 18 else "train"
        path = root / split / "good" / f"{position:03d}.png"
        _write(path, images[index, ..., 0])
        item_of[_digest(path)] = int(items[index])
    _write(root / "test" / "hole" / "000.png", images[0, ..., 0])
    _write(root / "ground_truth" / "hole" / "000_mask.png", np.full((64, 64), 255, np.uint8))
    return root, item_of


def _items(folder: Path, item_of: dict[str, int]) -> list[int]:
    return [item_of[_digest(p)] for p in sorted(folder.glob("*.png"))]


def test_whole_groups_go_to_test_and_nothing_is_lost(remembered_set, tmp_path, capsys):
    module = experiment_script("new_items_split")
    root, item_of = remembered_set
    before_test = set(_items(root / "test" / "good", item_of))
    before_train = set(_items(root / "train" / "good", item_of))
    assert before_test & before_train, "the image split should leak items in this fixture"
    out = tmp_path / "new"
    module.build(root, out, seed=0)
    train = _items(out / "train" / "good", item_of)
    test = _items(out / "test" / "good", item_of)
    assert not set(train) & set(test)
    assert len(train) + len(test) == 54
    assert 18 <= len(test) <= 18 + module.OVERFLOW
    assert (out / "test" / "hole" / "000.png").is_file()
    assert (out / "ground_truth" / "hole" / "000_mask.png").is_file()
    assert "0 test normals with a near-copy in train/good" in capsys.readouterr().out
    assert not list(tmp_path.glob(".partial-*"))
    with pytest.raises(SystemExit, match="exists"):
        module.build(root, out, seed=0)


def test_test_share_takes_whole_groups_up_to_the_count():
    module = experiment_script("new_items_split")
    groups = np.array([0, 0, 0, 1, 2, 2, 3, 4, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5])
    for seed in range(5):
        chosen = module.test_share(groups, n_test=4, seed=seed)
        assert 4 <= len(chosen) <= 4 + module.OVERFLOW  # group 5 (ten images) never fits
        for group in set(groups[sorted(chosen)].tolist()):
            assert set(np.flatnonzero(groups == group).tolist()) <= chosen
        assert 5 not in groups[sorted(chosen)]
