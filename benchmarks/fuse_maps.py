"""Fuse a coarse and a fine AE-2's anomaly maps, chosen on validation data only.

A model that sees whole tiles at a coarse scale catches large, gradual defects but outlines
small ones coarsely; a patch model at a fine scale does the opposite. This experiment takes
two finished runs of the same dataset, scores the same images with each run's AE-2 (each at
its own resolution, its map normalised per pixel by defect-free *training* images, i.e. a
z-score), resizes both maps to the evaluation size and fuses them:
``w * coarse + (1 - w) * fine`` for several weights, or the pixelwise maximum. The image score
is the fused map's peak or top-1 % mean.

The labelled validation set is built once at the finer model's resolution (the held-out
normals, ``--val-copies`` copies, half with pasted pseudo-anomalies) and resized for the
coarser model, so both models are judged on the same images. The test set is recorded for
the final report only.

Usage::

    python -m benchmarks.fuse_maps --coarse-run runs/A --fine-run runs/B --data-dir DIR \\
        [--val-copies 3 --val-seed 1]

Appends one JSON line per setting to ``runs/experiments/fuse_<dataset>.jsonl`` and prints a
markdown table sorted by the mean of validation image and pixel AUROC.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from benchmarks.common import (
    ROOT,
    append_jsonl,
    pasted_validation_set,
    validation_and_test_metrics,
)

WEIGHTS = (0.0, 0.25, 0.5, 0.6, 0.75, 0.9, 1.0)
METHODS = ("max", "topk")


def _z_maps(scorer, splits: dict[str, np.ndarray], norm: np.ndarray,
            eval_size: int) -> dict[str, np.ndarray]:
    """Each split's maps (N, E, E) as z-scores of the per-pixel normal error."""
    from anomaly_utils import scoring
    from anomaly_utils.experiment import normal_error_stats

    _, norm_maps = scorer.reconstruct_with_maps(norm)
    mean, std = normal_error_stats(norm_maps)
    out = {}
    for name, images in splits.items():
        _, maps = scorer.reconstruct_with_maps(images)
        out[name] = scoring.resize_maps((maps - mean) / std, eval_size)
    return out


def fuse(coarse_run: Path, fine_run: Path, data_dir: str, norm_images: int = 200,
         val_copies: int = 3, val_seed: int = 1) -> list[dict]:
    from anomaly_utils import data, scoring
    from anomaly_utils.artifacts import read_json
    from anomaly_utils.experiment import Scorer, training_sample

    coarse, fine = Scorer.load(coarse_run, "ae2"), Scorer.load(fine_run, "ae2")
    params = read_json(fine_run / "params.json")["notebooks"]["03_train_ae2"]
    seed, eval_size = params["seed"], fine.config.eval_size
    ds = data.load_dataset(data_dir, image_size=fine.config.image_size,
                           color_mode=fine.config.color_mode,
                           val_fraction=params["val_fraction"], seed=seed, mask_size=eval_size)
    images, labels, val_masks, _ = pasted_validation_set(ds.val_images, val_copies, val_seed,
                                                         eval_size)
    fine_splits = {"val": images, "test": ds.test_images}
    norm = training_sample(ds.train_images, norm_images, seed)

    def smaller(x: np.ndarray) -> np.ndarray:
        size = coarse.config.image_size
        return np.stack([data.resize_image(i, size) for i in x]).reshape(
            len(x), size, size, x.shape[-1])

    start = time.perf_counter()
    z_fine = _z_maps(fine, fine_splits, norm, eval_size)
    z_coarse = _z_maps(coarse, {k: smaller(v) for k, v in fine_splits.items()}, smaller(norm),
                       eval_size)
    print(f"scored both models in {time.perf_counter() - start:.0f} s", flush=True)

    rows = []
    for weight in (*WEIGHTS, "max"):
        for method in METHODS:
            out = {}
            for split in ("val", "test"):
                a, b = z_coarse[split], z_fine[split]
                fused = np.maximum(a, b) if weight == "max" else weight * a + (1 - weight) * b
                out[split] = (scoring.image_scores(fused, method=method), fused)
            rows.append({
                "coarse_run": coarse_run.name, "fine_run": fine_run.name,
                "val_copies": val_copies, "val_seed": val_seed, "coarse_weight": weight,
                "score_method": method,
                **validation_and_test_metrics(labels, out["val"][0], val_masks, out["val"][1],
                                              ds, *out["test"]),
            })
            print(json.dumps(rows[-1]), flush=True)
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| coarse weight | score | val image | val pixel | test image | test pixel "
             "| test AUPRO |", "|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: -(r["val_image_auroc"] + r["val_pixel_auroc"])):
        lines.append(f"| {r['coarse_weight']} | {r['score_method']} | "
                     f"{r['val_image_auroc']:.3f} | {r['val_pixel_auroc']:.3f} | "
                     f"{r['test_image_auroc']:.3f} | {r['test_pixel_auroc']:.3f} | "
                     f"{r['test_aupro']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coarse-run", required=True, type=Path)
    parser.add_argument("--fine-run", required=True, type=Path)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--norm-images", type=int, default=200)
    parser.add_argument("--val-copies", type=int, default=3)
    parser.add_argument("--val-seed", type=int, default=1)
    args = parser.parse_args()
    rows = fuse(args.coarse_run, args.fine_run, args.data_dir, args.norm_images,
                args.val_copies, args.val_seed)
    append_jsonl(ROOT / "runs" / "experiments" / f"fuse_{Path(args.data_dir).name}.jsonl", rows)
    print(markdown(rows))


if __name__ == "__main__":
    main()
