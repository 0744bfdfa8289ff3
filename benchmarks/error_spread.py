"""How far a model's anomaly map spreads beyond the defects: a diagnosis on the test set.

For each defect type, the median map value of the *defect-free* pixels of its test images,
by their distance to the nearest defect pixel (at the stored maps' resolution), next to the
median over the defect-free test images. A model that localises keeps distant pixels at
the defect-free level; one whose reconstruction degrades as a whole raises them too, and
those raised normal pixels compete with other images' defect pixels in the pooled pixel
AUROC.

It also scores the maps with each image's median subtracted (a per-image baseline, which
removes such a rise), on the run's pseudo-labelled validation set and on the test set.

Reads a finished run's ``<model>/scores_test.npz`` and ``scores_val_pseudo.npz``; chooses
nothing (this is the report).

Usage::

    python -m benchmarks.error_spread --run-dir runs/ID [--model ae2]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

BANDS = ((1, 4), (4, 8), (8, 16), (16, 32), (32, None))


def spread(run_dir: Path, model: str = "ae2") -> dict[str, list[float | None]]:
    """``{defect: [median map value of normal pixels in each distance band]}`` plus
    ``{"good": [median over the defect-free images]}``; distances in map pixels."""
    from anomaly_utils.experiment import load_scores

    s = load_scores(run_dir / model / "scores_test.npz")
    maps, masks, types = s["maps"], s["masks"], s["types"].astype(str)
    result: dict[str, list[float | None]] = {"good": [float(np.median(maps[types == "good"]))]}
    for defect in sorted(set(types) - {"good"}):
        values: list[list[np.ndarray]] = [[] for _ in BANDS]
        for i in np.flatnonzero(types == defect):
            if not masks[i].any():
                continue
            distance = cv2.distanceTransform((~masks[i]).astype(np.uint8), cv2.DIST_L2, 5)
            for band, (near, far) in zip(values, BANDS, strict=True):
                inside = (distance >= near) & (distance < (far or np.inf))
                band.append(maps[i][inside])
        result[defect] = [float(np.median(np.concatenate(v))) if sum(a.size for a in v) else None
                          for v in values]
    return result


def centred(run_dir: Path, model: str = "ae2") -> list[dict]:
    """Image AUROC (map peak) and pixel AUROC of the stored maps, as they are and with each
    map's median subtracted, on the pseudo-labelled validation set and on the test set."""
    from anomaly_utils import metrics
    from anomaly_utils.experiment import load_scores

    rows = []
    for split in ("val_pseudo", "test"):
        s = load_scores(run_dir / model / f"scores_{split}.npz")
        has = s["has_mask"]
        for name, maps in (("as stored", s["maps"]),
                           ("minus its median", s["maps"] - np.median(s["maps"], axis=(1, 2),
                                                                       keepdims=True))):
            rows.append({"split": split, "map": name,
                         "image_auroc": metrics.image_auroc(s["labels"], maps.max(axis=(1, 2))),
                         "pixel_auroc": metrics.pixel_auroc(s["masks"][has], maps[has])})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", required=True, type=Path)
    parser.add_argument("--model", default="ae2", choices=("ae1", "ae2"))
    args = parser.parse_args()
    result = spread(args.run_dir, args.model)
    heads = [f"{near}-{far} px" if far else f">= {near} px" for near, far in BANDS]
    print(f"median map value of defect-free pixels, {args.run_dir.name} {args.model}; "
          f"defect-free test images: {result.pop('good')[0]:.3g}")
    print("| defect | " + " | ".join(heads) + " |")
    print("|---|" + "---|" * len(heads))
    for defect, row in result.items():
        cells = ["n/a" if v is None else f"{v:.3g}" for v in row]
        print(f"| {defect} | " + " | ".join(cells) + " |")
    print("\n| split | map | image AUROC (peak) | pixel AUROC |\n|---|---|---|---|")
    for r in centred(args.run_dir, args.model):
        print(f"| {r['split']} | {r['map']} | {r['image_auroc']:.3f} | {r['pixel_auroc']:.3f} |")


if __name__ == "__main__":
    main()
