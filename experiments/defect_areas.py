"""Where a dataset's defect pixels are: the share of each defect type, at the evaluation size.

The pooled pixel AUROC and AUPRO weigh every defect pixel equally, so a type that covers
large areas decides them. Prints, per defect type of the test split: its images, the share of
all defect pixels it holds and its median mask area (fraction of the image), with the masks
resized to ``--eval-size`` as the lab evaluates them.

Usage::

    .venv/bin/python experiments/defect_areas.py --data-dir ../shared/datasets/magnetic_tile
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np

from anomaly_utils.data.layout import scan_dataset
from anomaly_utils.data.loading import load_masks


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--eval-size", type=int, default=128)
    args = parser.parse_args(argv)
    defects = [s for s in scan_dataset(args.data_dir).test if s.defect_type != "good"]
    masks, _ = load_masks(defects, args.eval_size)
    areas = defaultdict(list)
    for sample, mask in zip(defects, masks, strict=True):
        areas[sample.defect_type].append(int(mask.sum()))
    total = sum(sum(a) for a in areas.values())
    rows = {kind: {"images": len(a), "pixel_share": sum(a) / total,
                   "median_area": float(np.median(a)) / args.eval_size ** 2}
            for kind, a in sorted(areas.items())}
    print("| defect type | images | share of defect pixels | median mask area |")
    print("|---|---|---|---|")
    for kind, r in rows.items():
        print(f"| {kind} | {r['images']} | {r['pixel_share']:.0%} | {r['median_area']:.1%} |")
    return rows


if __name__ == "__main__":
    main()
