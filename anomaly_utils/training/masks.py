"""The input corruptions' names and the grid masks: training hides grid cells of a patch
(``corrupt_mode="grid"``), and inpainting inference hides the same cells at test time.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from anomaly_utils.errors import ParameterError

CORRUPT_MODES = ("rectangle", "grid", "rectangle+shading")  # patch_dataset(corrupt_mode=...)
GRID_SETS = 3  # disjoint mask sets per grid: each pass hides a third of the cells


def require_positive_int(value: Any, name: str, fix: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ParameterError(f"{name} must be an integer >= 1, got {value!r}", fix=fix)
    return int(value)


def grid_cells(patch_size: int) -> tuple[int, ...]:
    """Cell sides of the inpainting grid masks for a patch size: patch/16, /8 and /4, pixels.

    Example:
        >>> grid_cells(64)
        (4, 8, 16)
    """
    return tuple(sorted({max(1, patch_size // k) for k in (16, 8, 4)}))


def grid_mask_sets(height: int, width: int, cell: int, sets: int = GRID_SETS,
                   seed: int = 0) -> np.ndarray:
    """Disjoint masks that together cover an image: (sets, H, W) float32 of 0 and 1.

    The image is cut into ``cell`` x ``cell`` squares and every square is given to one of
    ``sets`` masks at random (seeded by ``seed`` and ``cell``), so each mask hides about
    1 / ``sets`` of the image in a scattered pattern and every pixel is hidden exactly once.

    Example:
        >>> m = grid_mask_sets(8, 8, 2, sets=3)
        >>> m.shape, bool((m.sum(axis=0) == 1).all())
        ((3, 8, 8), True)
    """
    cell = require_positive_int(cell, "cell", "pass a cell side in pixels, e.g. 8")
    sets = require_positive_int(sets, "sets", "pass e.g. 3")
    owner = np.random.default_rng([seed, cell]).integers(0, sets, (-(-height // cell),
                                                                   -(-width // cell)))
    owner = np.repeat(np.repeat(owner, cell, axis=0), cell, axis=1)[:height, :width]
    return np.stack([(owner == j) for j in range(sets)]).astype(np.float32)
