"""How the defect pixels of a dataset's test split divide among its defect types.

A pooled pixel AUROC weighs every defect pixel equally, so a type that covers most of the
defect area decides it. This prints, per defect type, the number of masks, the share of all
defect pixels and the median mask area (as a fraction of the image), with the masks resized
to the evaluation size exactly as the metrics see them (``data.load_masks``).

Usage:
    python -m benchmarks.defect_areas --data-dir ../shared/datasets/magnetic_tile [--eval-size 128]
"""

from __future__ import annotations

import argparse

import numpy as np

from anomaly_utils.data import load_masks, scan_dataset


def defect_areas(data_dir: str, eval_size: int = 128) -> list[dict]:
    """One row per defect type: ``masks``, ``pixel_share`` (0-1) and ``median_area`` (0-1)."""
    index = scan_dataset(data_dir, allow_missing_masks=True)
    samples = [s for s in index.test if s.mask_path is not None]
    masks, _ = load_masks(samples, eval_size)
    areas = masks.reshape(len(masks), -1).sum(axis=1)
    types = np.array([s.defect_type for s in samples])
    total = areas.sum()
    return [{"defect_type": name, "masks": int((types == name).sum()),
             "pixel_share": float(areas[types == name].sum() / total),
             "median_area": float(np.median(areas[types == name]) / eval_size ** 2)}
            for name in sorted(set(types))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--eval-size", type=int, default=128)
    args = parser.parse_args()
    print(f"defect pixels of {args.data_dir} at {args.eval_size}x{args.eval_size}")
    print(f"{'type':<22}{'masks':>6}{'share of pixels':>17}{'median area':>13}")
    for row in defect_areas(args.data_dir, args.eval_size):
        print(f"{row['defect_type']:<22}{row['masks']:>6}{row['pixel_share']:>16.1%}"
              f"{row['median_area']:>13.1%}")


if __name__ == "__main__":
    main()
