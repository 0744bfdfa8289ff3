"""experiments/run_breakdown.py --pixels: the per-type pixel AUROC with and without the
normals, and the pooled figure without the defective images' unmarked pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.conftest import experiment_script


def _script():
    return experiment_script("run_breakdown")


def test_unmarked_pixels_of_a_defective_image_are_what_the_pooled_figure_loses():
    masks = np.zeros((3, 4, 4), bool)
    masks[2, :2] = True  # the defective image's upper half is marked
    maps = np.zeros((3, 4, 4), np.float32)
    maps[2, :2] = 2.0  # found ...
    maps[2, 2:] = 3.0  # ... but the unmarked half scores higher still
    test = {"masks": masks, "maps": maps, "types": np.array(["good", "good", "a"]),
            "labels": np.array([0, 0, 1]), "has_mask": np.array([False, False, True])}
    rows = _script().pixel_rows(test)
    cells = [[c.strip() for c in row.strip("|").split("|")] for row in rows]
    assert cells[0][:4] == ["a", "0.800", "0.000", "1.000"]  # 8 of the 40 negatives outrank
    assert cells[1][1] == "1.000"  # without the unmarked half nothing outranks the marked one
    assert cells[2][1] == "0.800"


def test_offset_rows_report_each_split_with_and_without_each_maps_low_percentile():
    masks = np.zeros((2, 4, 4), bool)
    masks[1, 0, 0] = True
    maps = np.ones((2, 4, 4), np.float32)
    maps[0] += 5.0  # a normal image whose whole map sits high: its own level is the signal
    maps[1, 0, 0] = 3.0
    scores = {"masks": masks, "maps": maps, "types": np.array(["good", "a"]),
              "labels": np.array([0, 1]), "has_mask": np.array([False, True])}
    rows = _script().offset_rows("floor", {"val_pseudo": scores, "test": scores})
    cells = [[c.strip() for c in row.strip("|").split("|")] for row in rows]
    assert [c[:2] for c in cells] == [["floor", "validation"], ["floor", "test"]]
    assert cells[1][2] == "0.484"  # the marked pixel outranks 15 of the 31 other pixels
    assert cells[1][3:] == ["1.000"] * 3  # each map less its own level: nothing outranks it


def test_masks_again_resizes_each_test_mask_in_the_stored_order(tmp_path: Path):
    import cv2

    for folder in ("train/good", "test/good", "test/crack", "ground_truth/crack"):
        (tmp_path / folder).mkdir(parents=True)
    image = np.full((200, 80), 128, np.uint8)
    for name in ("train/good/000.png", "test/good/000.png", "test/crack/000.png"):
        cv2.imwrite(str(tmp_path / name), image)
    crack = np.zeros((200, 80), np.uint8)
    crack[100, 10:70] = 255  # one pixel wide: 0.08 of a pixel at 16 px
    cv2.imwrite(str(tmp_path / "ground_truth/crack/000_mask.png"), crack)
    test = {"paths": np.array(["test/crack/000.png", "test/good/000.png"]),
            "masks": np.zeros((2, 16, 16), bool)}
    fresh = _script().masks_again(test, tmp_path)
    assert fresh.shape == (2, 16, 16)
    assert fresh[0].any() and set(np.nonzero(fresh[0])[0]) == {8}  # the crack, as a line
    assert not fresh[1].any()
