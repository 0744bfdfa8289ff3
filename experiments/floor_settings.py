"""The floor's fixed settings around its chosen form: validation first, test for the record.

Notebook 01 chooses the floor's variant, gradient kind, window scale and eigen-images on
validation (:func:`anomaly_utils.scoring.floor_choice.fit_floor`). Its other settings are
fixed: the per-image standardisation, the positional grid, the shrinkage, the map's
smoothing and the image score's mean filter, and three windows of one scale. This script fits
the floor of one variant, gradient and scale (without eigen-images) with each of those
settings changed in turn, and with the windows of both scales together (four windows) or of
all three (five, up to the whole side), and prints each one's validation and test metrics.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python experiments/floor_settings.py \\
        --data-dir data/elpv/poly --color-mode grayscale --allow-missing-masks \\
        --variant positional --gradient directional --scale 0.5

Prints one row per setting: the selection score (mean of validation image and pixel AUROC),
validation image / pixel AUROC, test image / pixel AUROC / AUPRO ("n/a" without masks).
"""

from __future__ import annotations

import argparse

from floor_choice import (  # experiments/ is the script's folder
    dataset_and_validation,
    dataset_arguments,
    table_row,
    test_metrics,
)

from anomaly_utils.evaluation.selection import choose_by_validation, selection_score
from anomaly_utils.scoring.statistics_floor import (
    FLOOR_VARIANTS,
    GRADIENT_FEATURES,
    WINDOW_SCALES,
    StatisticsFloor,
    as_unit_images,
    default_windows,
)

# Each row changes one fixed setting of StatisticsFloor (its defaults: normalize True, grid
# 64, shrinkage 0.001, score_window 5, smooth_sigma 2.0).
SETTINGS = {"as chosen": {}, "no standardisation": {"normalize": False},
            "grid 32": {"grid": 32}, "grid 128": {"grid": 128},
            "shrinkage 0.01": {"shrinkage": 0.01}, "score window 1": {"score_window": 1},
            "score window 9": {"score_window": 9}, "smoothing 1": {"smooth_sigma": 1.0},
            "smoothing 4": {"smooth_sigma": 4.0}}


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = dataset_arguments(__doc__.split("\n")[0])
    parser.add_argument("--variant", default="positional", choices=FLOOR_VARIANTS)
    parser.add_argument("--gradient", default="directional", choices=GRADIENT_FEATURES)
    parser.add_argument("--scale", type=float, default=WINDOW_SCALES[0], choices=WINDOW_SCALES)
    return parser.parse_args(argv)


def window_sets(side: int, scale: float) -> dict[str, tuple[int, ...]]:
    """The chosen scale's three windows, and the windows of several scales together."""
    scales = {s: default_windows(side, s) for s in (0.25, 0.5, 1.0)}
    return {"as chosen": scales[scale],
            "windows of 0.25 and 0.5": tuple(sorted(set(scales[0.25]) | set(scales[0.5]))),
            "windows of 0.25, 0.5 and 1": tuple(sorted(set().union(*scales.values())))}


def main(argv: list[str] | None = None) -> dict:
    args = arguments(argv)
    ds, pseudo = dataset_and_validation(args)
    train = as_unit_images(ds.train_images, "train_images")
    windows = window_sets(min(train.shape[1:3]), args.scale)
    configs = {name: {"windows": windows["as chosen"], **change}
               for name, change in SETTINGS.items()}
    configs.update({name: {"windows": w} for name, w in windows.items() if name != "as chosen"})
    floors = {name: StatisticsFloor(args.variant, eval_size=args.eval_size,
                                    gradient=args.gradient, **config).fit(train)
              for name, config in configs.items()}
    _, validation = choose_by_validation({n: f.score for n, f in floors.items()},
                                         pseudo.images, pseudo.labels, pseudo.masks)
    print(f"{args.data_dir}: {args.variant}, {args.gradient}, windows {windows['as chosen']}")
    print("| setting | selection | val img | val pix | test img | test pix | AUPRO |\n"
          "|---|---|---|---|---|---|---|")
    rows = {}
    for name, floor in floors.items():
        values = test_metrics(ds, floor.score(ds.test_images))
        rows[name] = {"selection": selection_score(validation[name]), "test": values}
        print(table_row([name], validation[name], values), flush=True)
    return rows


if __name__ == "__main__":
    main()
