"""The data layer and notebook 01 on real data: ../shared/datasets/magnetic_tile.

Present on the team's machines and in CI, absent on a user's machine: then these tests skip
and say why.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from anomaly_utils.data.layout import dataset_summary, scan_dataset
from anomaly_utils.data.loading import load_dataset

ROOT = Path(__file__).resolve().parent.parent
MAGNETIC_TILE = ROOT.parent / "shared" / "datasets" / "magnetic_tile"

pytestmark = pytest.mark.skipif(
    not MAGNETIC_TILE.is_dir(),
    reason=f"real dataset not present at {MAGNETIC_TILE} (only on the team's machines and in CI)")


def test_magnetic_tile_loads_with_noisy_masks_and_varying_sizes():
    index = scan_dataset(MAGNETIC_TILE)
    assert set(index.defect_types) == {"blowhole", "break", "crack", "fray", "uneven"}
    assert index.masks_missing == []
    summary = dataset_summary(index, with_masks=False)
    assert summary["image_sizes"]["distinct"] > 10  # sizes vary; all get resized
    ds = load_dataset(MAGNETIC_TILE, image_size=64, color_mode="grayscale",
                           val_fraction=0.1, seed=0)
    assert ds.train_images.shape[1:] == (64, 64, 1)
    assert len(ds.train_images) + len(ds.val_images) == len(index.train)
    defective = ds.test_labels == 1
    assert ds.test_masks[defective].any(axis=(1, 2)).mean() > 0.95  # masks binarised at >127
    assert not ds.test_masks[~defective].any()
    assert len(np.unique(ds.test_original_sizes, axis=0)) > 10
