"""The floor's form: one Gaussian per cell against the nearest training pixel.

The floor scores a pixel by its Mahalanobis distance to one Gaussian fitted over the training
pixels of its grid cell. Where the normal pixels of a cell are not one cloud (the grains of a
polycrystalline cell, two ways of grinding a tile), one Gaussian is wide and a defect can sit
inside it. This script keeps everything else of the floor (features, grid, standardisation,
smoothing, image score) and replaces the distance to the Gaussian by the distance to the
nearest training pixel of the same cell, in the coordinates the cell's Gaussian whitens (so
that a unimodal cell scores as before, up to the sampling of the bank). Each cell's bank
holds the training pixels on a ``--bank-stride`` lattice of every training image. It prints
the validation and test metrics of both forms, as ``floor_settings.py`` does.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python experiments/floor_knn.py \\
        --data-dir data/elpv/poly --color-mode grayscale --allow-missing-masks --scale 0.5

Prints one row per form: the selection score (mean of validation image and pixel AUROC),
validation image / pixel AUROC, test image / pixel AUROC / AUPRO ("n/a" without masks).
"""

from __future__ import annotations

import time

import numpy as np
from floor_choice import (  # experiments/ is the script's folder
    dataset_and_validation,
    dataset_arguments,
)

from anomaly_utils.evaluation import metrics
from anomaly_utils.evaluation.selection import choose_by_validation, selection_score
from anomaly_utils.scoring.statistics_floor import (
    GRADIENT_FEATURES,
    WINDOW_SCALES,
    StatisticsFloor,
    as_unit_images,
    default_windows,
)


class NearestPixelFloor(StatisticsFloor):
    """The positional floor with the whitened distance to the nearest training pixel of the
    cell as its raw map (float32 (N, H, W), in the cell's standard deviations)."""

    def __init__(self, *args, bank_stride: int = 2, **kwargs):
        super().__init__("positional", *args, **kwargs)
        self.bank_stride = bank_stride
        self.banks: dict[tuple[int, int], np.ndarray] = {}  # cell -> (M, D) whitened float32

    def fit(self, train_images: np.ndarray) -> NearestPixelFloor:
        super().fit(train_images)
        images = as_unit_images(train_images, "train_images")
        d, s = self.mean.shape[-1], self.bank_stride
        parts: dict[tuple[int, int], list[np.ndarray]] = {}
        for _, feats in self._batches(images, self.used_windows):
            for i, j, rows, cols in self._cells(*images.shape[1:3]):
                x = feats[:, rows, cols][:, s // 2::s, s // 2::s].reshape(-1, d)
                z = (x.astype(np.float64) - self.mean[i, j]) @ self._whiten[i, j]
                parts.setdefault((i, j), []).append(z.astype(np.float32))
        self.banks = {cell: np.concatenate(z) for cell, z in parts.items()}
        return self

    def _raw_maps(self, images: np.ndarray) -> np.ndarray:
        maps = np.empty(images.shape[:3], np.float32)
        d = self.mean.shape[-1]
        norms = {cell: np.einsum("md,md->m", b, b) for cell, b in self.banks.items()}
        for start, feats in self._batches(images, self.used_windows):
            stop = start + len(feats)
            for i, j, rows, cols in self._cells(*images.shape[1:3]):
                cell = feats[:, rows, cols]
                z = ((cell.reshape(-1, d).astype(np.float64) - self.mean[i, j])
                     @ self._whiten[i, j]).astype(np.float32)
                bank = self.banks[i, j]
                nearest = (norms[i, j][None, :] - 2 * (z @ bank.T)).min(axis=1)
                squared = np.maximum(nearest + np.einsum("nd,nd->n", z, z), 0)
                maps[start:stop, rows, cols] = np.sqrt(squared).reshape(cell.shape[:3])
        return maps


def main(argv: list[str] | None = None) -> dict:
    parser = dataset_arguments(__doc__.split("\n")[0])
    parser.add_argument("--gradient", default="directional", choices=GRADIENT_FEATURES)
    parser.add_argument("--scale", type=float, default=WINDOW_SCALES[0], choices=WINDOW_SCALES)
    parser.add_argument("--bank-stride", type=int, nargs="+", default=[4, 2])
    args = parser.parse_args(argv)
    ds, pseudo = dataset_and_validation(args)
    train = as_unit_images(ds.train_images, "train_images")
    windows = default_windows(min(train.shape[1:3]), args.scale)
    floors = {"Gaussian (the floor)": StatisticsFloor(
        "positional", windows, eval_size=args.eval_size, gradient=args.gradient)}
    for stride in args.bank_stride:
        floors[f"nearest pixel, bank stride {stride}"] = NearestPixelFloor(
            windows, eval_size=args.eval_size, gradient=args.gradient, bank_stride=stride)
    seconds = {}
    for name, floor in floors.items():
        began = time.perf_counter()
        floor.fit(train)
        seconds[name] = time.perf_counter() - began
    _, validation = choose_by_validation({n: f.score for n, f in floors.items()},
                                         pseudo.images, pseudo.labels, pseudo.masks)
    keep = ds.test_has_mask | (ds.test_labels == 0)
    has_masks = bool(ds.test_has_mask[ds.test_labels == 1].any())
    print(f"{args.data_dir}: positional, {args.gradient}, windows {windows}, "
          f"{len(train)} training images")
    print("| form | selection | val img | val pix | test img | test pix | AUPRO | fit s |\n"
          "|---|---|---|---|---|---|---|---|")
    rows = {}
    for name, floor in floors.items():
        test = floor.score(ds.test_images)
        values = [metrics.image_auroc(ds.test_labels, test.scores)]
        values += ([metrics.pixel_auroc(ds.test_masks[keep], test.maps[keep]),
                    metrics.aupro(ds.test_masks[keep], test.maps[keep])] if has_masks
                   else [None, None])
        row = validation[name]
        rows[name] = {"selection": selection_score(row), "test": values}
        shown = [row["image_auroc"], row["pixel_auroc"], *values]
        print(f"| {name} | {selection_score(row):.3f} | "
              + " | ".join(metrics.shown(v, 3) for v in shown)
              + f" | {seconds[name]:.0f} |", flush=True)
    return rows


if __name__ == "__main__":
    main()
