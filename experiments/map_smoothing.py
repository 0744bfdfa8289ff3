"""Would smoothing a candidate's stored map, by a width its validation set chooses, find
large defects better?

A candidate's map is scored pixel by pixel; a defect that covers a quarter of the image (the
*uneven* bands of magnetic_tile, the dark cell parts of ELPV) is found pixel by pixel too,
and a map that lights up only its edges or its texture misses most of its area. A Gaussian
of sigma s eval pixels spreads each response over its neighbourhood. This script smooths
the maps each candidate of a finished run stored (``<run>/<candidate>/scores_*.npz``; no
model is loaded), for every sigma of ``--sigmas``, and prints the pixel AUROC and AUPRO on
the run's pseudo-labelled validation set (which would choose the sigma), per validation
kind, and, for the record only, on the test split where it has masks. The image scores are
left as stored.

Usage::

    python experiments/map_smoothing.py runs/<id>-real [runs/<id>-defaults ...] \\
        [--sigmas 0 1 2 4 8]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy import ndimage

from anomaly_utils.evaluation import metrics
from anomaly_utils.scoring.stored import load_run_scores


def smoothed(maps: np.ndarray, sigma: float) -> np.ndarray:
    """(N, E, E) maps, each smoothed by a Gaussian of ``sigma`` pixels (0: as they are)."""
    if sigma == 0:
        return maps
    return ndimage.gaussian_filter(maps, sigma=(0, sigma, sigma), mode="reflect")


def pixel_metrics(split: dict, sigma: float, keep: np.ndarray | None = None) -> tuple:
    """Pixel AUROC and AUPRO of a split's stored maps smoothed by ``sigma``, over the
    images ``keep`` selects (all by default); (None, None) without defect pixels."""
    masks, maps = split["masks"], split["maps"]
    if keep is not None:
        masks, maps = masks[keep], maps[keep]
    if not masks.any():
        return None, None
    maps = smoothed(maps, sigma)
    return metrics.pixel_auroc(masks, maps), metrics.aupro(masks, maps)


def fmt(value: float | None) -> str:
    return "  n/a" if value is None else f"{value:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--sigmas", nargs="+", type=float, default=[0, 1, 2, 4, 8])
    args = parser.parse_args()
    for run in args.runs:
        scores = load_run_scores(run, splits=("test", "val_pseudo"))
        print(f"\n{run}: sigma, validation pixel AUROC / AUPRO, test pixel AUROC / AUPRO")
        for name, splits in scores.items():
            val, test = splits["val_pseudo"], splits["test"]
            kinds = sorted(set(val["types"][val["labels"] == 1].astype(str)))
            print(f"  {name} (eval {val['maps'].shape[1]} px); per kind: {', '.join(kinds)}")
            clean = val["labels"] == 0
            has = np.asarray(test["has_mask"], bool)  # as the report keeps them
            for sigma in args.sigmas:
                v_px, v_pro = pixel_metrics(val, sigma)
                t_px, t_pro = pixel_metrics(test, sigma, None if has.all() else has)
                per_kind = [pixel_metrics(val, sigma, clean | (val["types"] == k))[0]
                            for k in kinds]
                print(f"    {sigma:4g}  val {fmt(v_px)} / {fmt(v_pro)}   test {fmt(t_px)} / "
                      f"{fmt(t_pro)}   kinds {' '.join(fmt(x) for x in per_kind)}", flush=True)


if __name__ == "__main__":
    main()
