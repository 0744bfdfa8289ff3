"""The floor's two forms: one Gaussian per cell against the nearest training pixel.

The positional floor of one gradient kind and window scale (without eigen-images), fitted in
each of its forms (:data:`~anomaly_utils.scoring.statistics_floor.FLOOR_FORMS`): the
Mahalanobis distance to the cell's Gaussian, and the distance to the nearest of the cell's
training pixels in the Gaussian's whitened units (the cell's centre pixel of every training
image, :mod:`anomaly_utils.scoring.pixel_bank`). With ``--denser``, also a bank of every
second pixel of each cell (four per image at 256 px), to see whether the centre alone loses
anything. Prints the validation and test metrics of each, as ``floor_settings.py`` does, and
the seconds each took to fit.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python experiments/floor_knn.py \\
        --data-dir data/elpv/poly --color-mode grayscale --allow-missing-masks --scale 0.5

Prints one row per floor: the selection score (mean of validation image and pixel AUROC),
validation image / pixel AUROC, test image / pixel AUROC / AUPRO ("n/a" without masks).
"""

from __future__ import annotations

import time

import numpy as np
from floor_choice import (  # experiments/ is the script's folder
    dataset_and_validation,
    dataset_arguments,
    table_row,
    test_metrics,
)

from anomaly_utils.evaluation.selection import choose_by_validation, selection_score
from anomaly_utils.scoring.pixel_bank import PixelBank
from anomaly_utils.scoring.statistics_floor import (
    FLOOR_FORMS,
    GRADIENT_FEATURES,
    WINDOW_SCALES,
    StatisticsFloor,
    as_unit_images,
    default_windows,
)


class DenserBankFloor(StatisticsFloor):
    """The nearest-pixel form with a denser bank: every ``stride``-th pixel of each cell of
    every training image instead of the cell's centre alone (for the comparison only)."""

    def __init__(self, *args, stride: int = 2, **kwargs):
        super().__init__(*args, **kwargs)
        self.stride = stride

    def _bank_of(self, images: np.ndarray) -> PixelBank:
        d, s = self.mean.shape[-1], self.stride
        cells = list(self._cells(*images.shape[1:3]))
        parts: list[list[np.ndarray]] = [[] for _ in cells]
        owners: list[list[np.ndarray]] = [[] for _ in cells]
        for start, feats in self._batches(images, self.used_windows):
            for c, (i, j, rows, cols) in enumerate(cells):
                lattice = feats[:, rows, cols][:, ::s, ::s]
                z = (lattice.reshape(-1, d).astype(np.float64) - self.mean[i, j]) \
                    @ self._whiten[i, j]
                parts[c].append(z.astype(np.float32))
                owners[c].append(np.repeat(np.arange(start, start + len(feats)),
                                           lattice.shape[1] * lattice.shape[2]))
        return PixelBank.of_cells([np.concatenate(p) for p in parts],
                                  [np.concatenate(o) for o in owners])


def main(argv: list[str] | None = None) -> dict:
    parser = dataset_arguments(__doc__.split("\n")[0])
    parser.add_argument("--gradient", default="directional", choices=GRADIENT_FEATURES)
    parser.add_argument("--scale", type=float, default=WINDOW_SCALES[0], choices=WINDOW_SCALES)
    parser.add_argument("--denser", action="store_true",
                        help="also the bank of every second pixel of each cell")
    args = parser.parse_args(argv)
    ds, pseudo = dataset_and_validation(args)
    train = as_unit_images(ds.train_images, "train_images")
    windows = default_windows(min(train.shape[1:3]), args.scale)
    floors = {form: StatisticsFloor("positional", windows, eval_size=args.eval_size,
                                    gradient=args.gradient, form=form)
              for form in FLOOR_FORMS}
    if args.denser:
        floors["nearest, every second pixel"] = DenserBankFloor(
            "positional", windows, eval_size=args.eval_size, gradient=args.gradient,
            form="nearest")
    seconds = {}
    for name, floor in floors.items():
        began = time.perf_counter()
        floor.fit(train)
        seconds[name] = time.perf_counter() - began
    _, validation = choose_by_validation({n: f.score for n, f in floors.items()},
                                         pseudo.images, pseudo.labels, pseudo.masks)
    print(f"{args.data_dir}: positional, {args.gradient}, windows {windows}, "
          f"{len(train)} training images")
    print("| form | selection | val img | val pix | test img | test pix | AUPRO | fit s |\n"
          "|---|---|---|---|---|---|---|---|")
    rows = {}
    for name, floor in floors.items():
        values = test_metrics(ds, floor.score(ds.test_images))
        rows[name] = {"selection": selection_score(validation[name]), "test": values}
        print(table_row([name], validation[name], values, (f"{seconds[name]:.0f}",)),
              flush=True)
    return rows


if __name__ == "__main__":
    main()
