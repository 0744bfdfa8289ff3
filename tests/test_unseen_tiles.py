"""experiments/unseen_tiles.py: magnetic_tile's captures grouped into tiles by their source
numbers, and the set rewritten with whole tiles in test/good."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from tests.conftest import experiment_script


def _module():
    return experiment_script("unseen_tiles")


def _fake_set(root: Path) -> None:
    """Five tiles of three captures each (numbers within a few dozen), split image by image
    so that every test image has a sibling in training; one defect image with its mask."""
    rows = []
    rng = np.random.default_rng(0)
    names = [(tile, capture) for tile in range(5) for capture in range(3)]
    for index, (tile, capture) in enumerate(names):
        split = "test" if capture == 2 and tile < 3 else "train"
        path = f"{split}/good/{index:03d}.jpg"
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(root / path)
        rows.append((path, f"MT_Free/Imgs/exp{capture + 1}_num_{10_000 * tile + 20 * capture}.jpg"))
    for path in ("test/crack/000.jpg", "ground_truth/crack/000_mask.png"):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((16, 16), np.uint8)).save(root / path)
    rows.append(("test/crack/000.jpg", "MT_Crack/Imgs/exp1_num_10010.jpg"))
    with open(root / "SOURCES.tsv", "w", newline="") as table:
        writer = csv.writer(table, delimiter="\t", lineterminator="\n")
        writer.writerow(["mvtec_layout_path", "source_path"])
        writer.writerows(rows)


def test_tiles_group_captures_numbered_close_together(tmp_path):
    module = _module()
    _fake_set(tmp_path / "set")
    tiles = module.tiles_of(module.defect_free(module.read_sources(tmp_path / "set")))
    assert len(tiles) == 15 and len(set(tiles.values())) == 5
    assert tiles["train/good/000.jpg"] == tiles["train/good/001.jpg"] == tiles["test/good/002.jpg"]


def test_build_puts_whole_tiles_in_test_and_keeps_the_defects(tmp_path, capsys):
    module = _module()
    _fake_set(tmp_path / "set")
    module.count(tmp_path / "set")
    assert "test/good: 3 images, 3 of a tile with captures in train/good" in capsys.readouterr().out
    out = tmp_path / "unseen"
    module.build(tmp_path / "set", out, seed=0)
    assert "0 of a tile with captures in train/good" in capsys.readouterr().out
    tiles = module.tiles_of(module.defect_free(module.read_sources(out)))
    test_tiles = {tiles[p] for p in tiles if p.startswith("test/")}
    train_tiles = {tiles[p] for p in tiles if p.startswith("train/")}
    assert test_tiles and not test_tiles & train_tiles
    assert sum(p.startswith("test/") for p in tiles) >= 3
    assert (out / "test" / "crack" / "000.jpg").is_file()
    assert (out / "ground_truth" / "crack" / "000_mask.png").is_file()
    assert not list(tmp_path.glob(".partial-*"))
