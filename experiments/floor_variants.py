"""The statistics floor's variants on one dataset: validation first, test for the record.

Fits :class:`anomaly_utils.scoring.statistics_floor.StatisticsFloor` on the training split,
once per variant and gradient kind, and scores the pseudo-labelled validation set and the
test split. The validation set is the one a run of the same seed builds
(:func:`anomaly_utils.scoring.validation_set.shared_validation`: every held-out normal once
clean, and copies with each pasted kind equally often), so the "val" columns are those
notebook 01 chooses by. Choices are made on the validation columns; the test columns are
the report.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python experiments/floor_variants.py \\
        --data-dir ../shared/datasets/magnetic_tile --color-mode grayscale --image-size 256

Options ``--windows 7 15 31``, ``--smooth-sigma``, ``--score-window``, ``--grid``,
``--shrinkage`` and ``--no-normalize`` change the floor's settings for every variant;
``--variants`` and ``--gradients`` pick the rows. Prints one row per variant and gradient:
the selection score (mean of validation image and pixel AUROC), validation image / pixel
AUROC, test image / pixel AUROC / AUPRO ("n/a" without masks), and the seconds to fit and to
score both splits.
"""

from __future__ import annotations

import argparse
import tempfile
import time

from anomaly_utils.data.loading import load_dataset
from anomaly_utils.evaluation import metrics
from anomaly_utils.scoring import statistics_floor as sf
from anomaly_utils.scoring.validation_set import shared_validation


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--color-mode", default="rgb", choices=("rgb", "grayscale"))
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--eval-size", type=int, default=128)
    parser.add_argument("--allow-missing-masks", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", nargs="+", default=list(sf.FLOOR_VARIANTS))
    parser.add_argument("--gradients", nargs="+", default=list(sf.GRADIENT_FEATURES))
    parser.add_argument("--windows", type=int, nargs="+", default=None,
                        help="odd box sizes in pixels (default: scaled with the image size)")
    parser.add_argument("--smooth-sigma", type=float, default=sf.DEFAULT_SMOOTH_SIGMA)
    parser.add_argument("--score-window", type=int, default=sf.DEFAULT_SCORE_WINDOW)
    parser.add_argument("--grid", type=int, default=sf.DEFAULT_GRID)
    parser.add_argument("--shrinkage", type=float, default=sf.DEFAULT_SHRINKAGE)
    parser.add_argument("--no-normalize", action="store_true")
    return parser.parse_args(argv)


def measured(labels, scores, masks, maps) -> list[float | None]:
    """Image AUROC, pixel AUROC and AUPRO; the pixel metrics over the images that have a
    mask (``masks`` None where there are none)."""
    if masks is None:
        return [metrics.image_auroc(labels, scores), None, None]
    return [metrics.image_auroc(labels, scores), metrics.pixel_auroc(masks, maps),
            metrics.aupro(masks, maps)]


def main(argv: list[str] | None = None) -> list[dict]:
    args = arguments(argv)
    started = time.perf_counter()
    ds = load_dataset(args.data_dir, image_size=args.image_size, color_mode=args.color_mode,
                      seed=args.seed, mask_size=args.eval_size,
                      allow_missing_masks=args.allow_missing_masks)
    with tempfile.TemporaryDirectory() as run_dir:
        pseudo = shared_validation(run_dir, ds, args.seed, args.eval_size)
    images, labels, val_masks = pseudo.images, pseudo.labels, pseudo.masks
    # Pixel metrics on the test images with a mask, and the normals.
    keep = ds.test_has_mask | (ds.test_labels == 0)
    test_masks = ds.test_masks[keep] if ds.test_has_mask[ds.test_labels == 1].any() else None
    print(f"{args.data_dir} at {args.image_size} px, {args.color_mode}: train "
          f"{len(ds.train_images)}, validation {len(images)} ({labels.sum()} pseudo-anomalous), "
          f"test {len(ds.test_images)} ({ds.test_labels.sum()} anomalous); loaded in "
          f"{time.perf_counter() - started:.1f} s")
    windows = tuple(args.windows) if args.windows else sf.default_windows(args.image_size)
    print(f"windows {windows}, smooth_sigma {args.smooth_sigma}, score_window "
          f"{args.score_window}, grid {args.grid}, shrinkage {args.shrinkage}, "
          f"normalize {not args.no_normalize}")
    header = ("variant", "gradient", "selection", "val img", "val pix", "test img", "test pix",
              "AUPRO", "fit s", "score s")
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    rows = []
    for variant, gradient in ((v, g) for v in args.variants for g in args.gradients):
        floor = sf.StatisticsFloor(variant, windows=windows,
                                   eval_size=args.eval_size, smooth_sigma=args.smooth_sigma,
                                   score_window=args.score_window, grid=args.grid,
                                   normalize=not args.no_normalize, shrinkage=args.shrinkage,
                                   gradient=gradient)
        start = time.perf_counter()
        floor.fit(ds.train_images)
        fitted = time.perf_counter()
        val = floor.score(images)
        test = floor.score(ds.test_images)
        scored = time.perf_counter()
        values = (measured(labels, val.scores, val_masks, val.maps)[:2]
                  + measured(ds.test_labels, test.scores, test_masks, test.maps[keep]))
        selection = (values[0] + values[1]) / 2
        rows.append({"variant": variant, "gradient": gradient, "selection": selection,
                     "values": values, "fit_s": fitted - start, "score_s": scored - fitted})
        print(f"| {variant} | {gradient} | {selection:.3f} | "
              + " | ".join(metrics.shown(v, 3) for v in values)
              + f" | {fitted - start:.1f} | {scored - fitted:.1f} |", flush=True)
    return rows


if __name__ == "__main__":
    main()
