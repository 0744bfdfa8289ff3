"""The floor's per-image normalisation: mean and standard deviation against median and
interquartile range, the mean alone subtracted, and division by the mean.

A large defect shifts its own image's mean and standard deviation, and with them every pixel's
features; median and interquartile range (divided by 1.349, the standard deviation of a
normal distribution) move less. Subtracting the mean alone keeps each exposure's contrast;
dividing by the mean (the floor's ``normalize="gain"``) scales it with the exposure. The
positional floor in the nearest-pixel form, directional gradient, windows up to half the
side (magnetic_tile's choice), fitted with each: the floor's own normalisations by its
``normalize``, the two others by replacing ``statistics_floor.standardised`` for their fit
and scoring (for the comparison only). Prints
the validation and test metrics of each, as ``floor_knn.py`` does.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python experiments/floor_standardisation.py \\
        --data-dir ../shared/datasets/magnetic_tile --color-mode grayscale \\
        --variants "mean / std" "median / IQR" "mean only" gain
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

from anomaly_utils.evaluation.selection import choose_by_validation
from anomaly_utils.scoring import statistics_floor


def robust_standardised(image: np.ndarray) -> np.ndarray:
    """An (H, W, C) float32 image minus its per-channel median, divided by its per-channel
    interquartile range / 1.349 (at least 0.01)."""
    q25, median, q75 = np.percentile(image.reshape(-1, image.shape[-1]), [25, 50, 75], axis=0)
    scale = np.maximum((q75 - q25) / 1.349, 0.01).astype(np.float32)
    return (image - median.astype(np.float32)) / scale


def centred(image: np.ndarray) -> np.ndarray:
    """An (H, W, C) float32 image minus its per-channel mean, its contrast kept."""
    return image - image.reshape(-1, image.shape[-1]).mean(axis=0)


# name -> (the floor's normalize, what replaces its standardisation or None)
VARIANTS = {"mean / std": ("standard", None), "median / IQR": ("standard", robust_standardised),
            "mean only": ("standard", centred), "gain": ("gain", None)}


def main(argv: list[str] | None = None) -> None:
    parser = dataset_arguments(__doc__.split("\n")[0])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS),
                        default=["mean / std", "median / IQR"])
    args = parser.parse_args(argv)
    ds, pseudo = dataset_and_validation(args)
    train = statistics_floor.as_unit_images(ds.train_images, "train_images")
    windows = statistics_floor.default_windows(min(train.shape[1:3]), 0.5)
    plain = statistics_floor.standardised
    print("| standardisation | selection | val img | val pix | test img | test pix | AUPRO | s |\n"
          "|---|---|---|---|---|---|---|---|")
    for name in args.variants:
        normalize, replacement = VARIANTS[name]
        statistics_floor.standardised = replacement or plain
        try:
            began = time.perf_counter()
            floor = statistics_floor.StatisticsFloor(
                "positional", windows, eval_size=args.eval_size, gradient="directional",
                form="nearest", normalize=normalize).fit(train)
            _, validation = choose_by_validation({name: floor.score}, pseudo.images,
                                                 pseudo.labels, pseudo.masks)
            test = test_metrics(ds, floor.score(ds.test_images))
        finally:
            statistics_floor.standardised = plain
        print(table_row([name], validation[name], test,
                        (f"{time.perf_counter() - began:.0f}",)), flush=True)


if __name__ == "__main__":
    main()
