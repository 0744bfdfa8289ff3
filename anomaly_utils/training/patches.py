"""Numpy operations on batches of square patches (B, p, p, C) float32 in [0, 1], every draw
from the ``numpy.random.Generator`` passed in: random crops, flips and 90-degree turns, and
the input corruptions of :func:`anomaly_utils.training.datasets.patch_dataset`.
"""

from __future__ import annotations

import math

import numpy as np

from anomaly_utils.training.masks import GRID_SETS


def random_crops(images: np.ndarray, patch_size: int, count: int,
                 rng: np.random.Generator) -> np.ndarray:
    """``count`` crops of uniformly random images at uniformly random offsets, in the
    images' dtype: (count, p, p, C)."""
    n, height, width, _ = images.shape
    index = rng.integers(0, n, count)
    top = rng.integers(0, height - patch_size + 1, count)
    left = rng.integers(0, width - patch_size + 1, count)
    return np.stack([images[i, t:t + patch_size, s:s + patch_size]
                     for i, t, s in zip(index, top, left, strict=True)])


def flip_and_turn(patches: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random horizontal and vertical flips (each with chance 1/2) and a rotation by k * 90
    degrees (k uniform in 0-3) of every patch of (B, p, p, C)."""
    count = len(patches)
    flips = rng.random((count, 2)) < 0.5
    turns = rng.integers(0, 4, count)
    out = np.where(flips[:, 0, None, None, None], patches[:, :, ::-1], patches)
    out = np.where(flips[:, 1, None, None, None], out[:, ::-1], out)
    for k in (1, 2, 3):
        turned = turns == k
        if turned.any():
            out[turned] = np.rot90(out[turned], k, axes=(1, 2))
    return out


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def paint_rectangles(patches: np.ndarray, chosen: np.ndarray,
                     rng: np.random.Generator) -> None:
    """Paint a rectangle (sides 1/16 to 1/4 of the patch) of a flat colour plus noise into
    each chosen patch, in place."""
    p, m = patches.shape[1], len(chosen)
    low, high = max(1, p // 16), max(2, p // 4)
    heights = rng.integers(low, high, m)
    widths = rng.integers(low, high, m)
    tops = np.floor(rng.random(m) * (p - heights)).astype(int)
    lefts = np.floor(rng.random(m) * (p - widths)).astype(int)
    colours = rng.random(m, dtype=np.float32)
    spreads = np.float32(0.1) * rng.random(m, dtype=np.float32)
    channels = patches.shape[-1]
    for k, i in enumerate(chosen):
        h, w, t, s = heights[k], widths[k], tops[k], lefts[k]
        noise = rng.standard_normal((h, w, channels), dtype=np.float32)
        patches[i, t:t + h, s:s + w] = np.clip(colours[k] + spreads[k] * noise, 0.0, 1.0)

def shade_bands(patches: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``patches`` with a straight, soft-edged band (10-40 % of the side wide, at a random
    angle) brightened or darkened by 5-30 % of the value range."""
    v = rng.random((6, len(patches), 1, 1))
    angle = v[0] * 2 * math.pi
    side = patches.shape[1]
    coords = (np.arange(side) + 0.5) / side - 0.5
    along = np.cos(angle) * coords[None, None, :] + np.sin(angle) * coords[None, :, None]
    width = 0.1 + 0.3 * v[1]
    start = -0.75 + (1.5 - width) * v[2]  # bands may run off the patch's edge
    softness = 0.01 + 0.04 * v[3]
    band = (_sigmoid((along - start) / softness)
            * _sigmoid((start + width - along) / softness))
    delta = (0.05 + 0.25 * v[4]) * np.sign(v[5] - 0.5)
    return np.clip(patches + (delta * band)[..., None].astype(np.float32), 0.0, 1.0)

def drop_grid_cells(patches: np.ndarray, chosen: np.ndarray, cells: tuple[int, ...],
                    rng: np.random.Generator) -> None:
    """Zero each cell of a grid (cell side drawn from :func:`grid_cells`) with chance
    1 / ``GRID_SETS`` in each chosen patch, in place."""
    p = patches.shape[1]
    sides = rng.integers(0, len(cells), len(chosen))
    for k, i in enumerate(chosen):
        cell = cells[sides[k]]
        dropped = rng.random((-(-p // cell),) * 2) < 1.0 / GRID_SETS
        grid = np.repeat(np.repeat(dropped, cell, axis=0), cell, axis=1)[:p, :p]
        patches[i][grid] = 0.0
