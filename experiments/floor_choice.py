"""The floor's choices (variant and gradient, window scale, form, image normalisation,
eigen-image residual):
validation first, test for the record.

Runs notebook 01's choice (:func:`anomaly_utils.scoring.floor_choice.fit_floor`) on one
dataset, on the pseudo-labelled validation set a run of the same seed builds, and scores the
test split with every floor it tried. The "chosen" row is the one the notebook keeps; the
test columns are the report, never the criterion. Image scores are each floor's own (the
peak of the mean-filtered map), before notebook 04's choice of the image score.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python experiments/floor_choice.py \\
        --data-dir ../shared/datasets/magnetic_tile --color-mode grayscale [--val-split items]

Prints one row per floor: the selection score (mean of validation image and pixel AUROC),
validation image / pixel AUROC, test image / pixel AUROC / AUPRO ("n/a" without masks).
"""

from __future__ import annotations

import argparse
import tempfile
import time

from anomaly_utils.data.loading import VAL_SPLITS, AnomalyDataset, load_dataset
from anomaly_utils.evaluation import metrics
from anomaly_utils.evaluation.selection import selection_score
from anomaly_utils.scoring.floor_choice import (
    NEAREST,
    fit_floor,
    floor_name,
    normalisation_suffix,
)
from anomaly_utils.scoring.statistics_floor import (
    NORMALISATIONS,
    WINDOW_SCALES,
    StatisticsFloor,
    default_windows,
)
from anomaly_utils.scoring.stored import ScoreResult
from anomaly_utils.scoring.validation_set import PseudoLabelled, shared_validation


def dataset_arguments(description: str) -> argparse.ArgumentParser:
    """A parser with the dataset's options, as notebook 01 loads it for the floor."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--color-mode", default="rgb", choices=("rgb", "grayscale"))
    parser.add_argument("--image-size", type=int, default=256, help="notebook 01's floor_image_size")
    parser.add_argument("--eval-size", type=int, default=128)
    parser.add_argument("--allow-missing-masks", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val-split", default="images", choices=VAL_SPLITS,
                        help="how the validation normals are drawn (load_dataset's val_split)")
    return parser


def dataset_and_validation(args: argparse.Namespace) -> tuple[AnomalyDataset, PseudoLabelled]:
    """The dataset as notebook 01 loads it for the floor, and the pseudo-labelled validation
    set a run of the same seed builds."""
    ds = load_dataset(args.data_dir, image_size=args.image_size, color_mode=args.color_mode,
                      seed=args.seed, mask_size=args.eval_size, val_split=args.val_split,
                      allow_missing_masks=args.allow_missing_masks)
    with tempfile.TemporaryDirectory() as run_dir:
        return ds, shared_validation(run_dir, ds, args.seed, args.eval_size)


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    return dataset_arguments(__doc__.split("\n")[0]).parse_args(argv)


def test_metrics(ds: AnomalyDataset, test: ScoreResult) -> list[float | None]:
    """Test image AUROC, pixel AUROC and AUPRO of a floor's scores of ``ds.test_images``
    (the pixel metrics over the images with masks and the good ones; None without masks)."""
    values = [metrics.image_auroc(ds.test_labels, test.scores)]
    if not ds.test_has_mask[ds.test_labels == 1].any():
        return values + [None, None]
    keep = ds.test_has_mask | (ds.test_labels == 0)
    return values + [metrics.pixel_auroc(ds.test_masks[keep], test.maps[keep]),
                     metrics.aupro(ds.test_masks[keep], test.maps[keep])]


def table_row(first: list[str], validation: dict, test: list[float | None],
              last: tuple[str, ...] = ()) -> str:
    """One Markdown row: ``first`` cells, the selection score, validation image / pixel
    AUROC, the ``test`` metrics ("n/a" for None), then ``last`` cells."""
    shown = [validation["image_auroc"], validation["pixel_auroc"], *test]
    return "| " + " | ".join([*first, f"{selection_score(validation):.3f}",
                              *(metrics.shown(v, 3) for v in shown), *last]) + " |"


def rebuilt(name: str, choice, train_images, eval_size: int) -> StatisticsFloor:
    """The floor of row ``name`` (:func:`floor_name`, with ``", nearest pixel"`` in that
    form, :func:`normalisation_suffix` where not standardised, and ``" + eigen <side> px"``
    where the eigen-images are averaged in)."""
    if name == choice.name:
        return choice.floor
    base, _, eigen = name.partition(" + eigen ")
    normalize = "standard"
    for other in NORMALISATIONS[1:]:
        if base.endswith(normalisation_suffix(other)):
            base, normalize = base.removesuffix(normalisation_suffix(other)), other
    base, nearest, _ = base.partition(NEAREST)
    variant, gradient, *windows = base.split(", ")
    scale = float(windows[0].removeprefix("windows to ")) if windows else WINDOW_SCALES[0]
    floor = StatisticsFloor(variant, eval_size=eval_size, gradient=gradient,
                            windows=default_windows(min(train_images.shape[1:3]), scale),
                            form="nearest" if nearest else "gaussian",
                            normalize=normalize).fit(train_images)
    assert floor_name(variant, gradient, scale) == base, (name, base)
    return floor.with_eigen(int(eigen.split()[0]), train_images) if eigen else floor


def main(argv: list[str] | None = None) -> dict:
    args = arguments(argv)
    ds, pseudo = dataset_and_validation(args)
    started = time.perf_counter()
    choice = fit_floor(ds.train_images, pseudo.images, pseudo.labels, pseudo.masks,
                       eval_size=args.eval_size)
    print(f"{args.data_dir}: chosen {choice.name!r} in {time.perf_counter() - started:.0f} s "
          f"(four floors, the wider windows, the nearest pixel, the gain "
          f"normalisation and the eigen-images); "
          f"{choice.note}")
    print("| floor | chosen | selection | val img | val pix | test img | test pix | AUPRO |\n"
          "|---|---|---|---|---|---|---|---|")
    rows = {}
    for name, validation in choice.validation.items():
        test = rebuilt(name, choice, ds.train_images, args.eval_size).score(ds.test_images)
        values = test_metrics(ds, test)
        rows[name] = {"selection": selection_score(validation), "test": values}
        print(table_row([name, "**chosen**" if name == choice.name else ""], validation,
                        values), flush=True)
    return rows


if __name__ == "__main__":
    main()
