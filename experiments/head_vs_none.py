"""AE-2 with its segmentation head against the same AE-2 without it, on one finished run.

A run trained with ``head="segmentation"`` holds the plain AE-2 as well (the head's
two-stage training leaves it unchanged), so ``head="none"`` is the same model scored with
its reconstruction error map (the run's ``map_kind``, smoothing and normalisation). Both are
measured on the pseudo-labelled validation set (the lab's choices are made there) and, for
the record, on the test split.

Usage: ``python experiments/head_vs_none.py runs/<id>``; prints a table and writes
``runs/<id>/head_vs_none.json``.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np

from anomaly_utils.artifacts import read_json, write_json
from anomaly_utils.data import pseudo_anomalies
from anomaly_utils.data.loading import load_run_dataset, resize_mask
from anomaly_utils.evaluation import metrics
from anomaly_utils.models.storage import load_model
from anomaly_utils.scoring.scorer import Scorer, training_sample
from anomaly_utils.scoring.stored import load_scores


def measured(labels, scores, masks, maps, has_mask) -> dict:
    return {"image_auroc": metrics.image_auroc(labels, scores),
            "pixel_auroc": metrics.pixel_auroc(masks[has_mask], maps[has_mask]),
            "aupro": metrics.aupro(masks[has_mask], maps[has_mask])}


def main(run_dir: Path) -> dict:
    params = read_json(run_dir / "params.json")["notebooks"]["03_train_ae2"]
    with_head = Scorer.load(run_dir, "ae2")
    if with_head.config.head == "none":
        raise SystemExit(f"{run_dir}: AE-2 was trained without a head")
    ds = load_run_dataset(params)
    plain = Scorer(load_model(run_dir / "ae2" / "model.keras"),
                   dataclasses.replace(with_head.config, head="none", norm_mean=None,
                                       norm_std=None))
    if params["normalize_maps"]:
        plain.fit_normalization(training_sample(ds.train_images, 200, params["seed"]))
    images, labels, masks, _ = pseudo_anomalies.make_labelled_validation(ds.val_images,
                                                                          params["seed"])
    masks = np.stack([resize_mask(m, params["eval_size"]) for m in masks])
    result = {}
    for split in ("val_pseudo", "test"):
        stored = load_scores(run_dir / "ae2" / f"scores_{split}.npz")
        has = stored["has_mask"] | (stored["labels"] == 0)
        result[f"segmentation {split}"] = measured(stored["labels"], stored["scores"],
                                                   stored["masks"], stored["maps"], has)
        if split == "val_pseudo":
            scored = plain.score(images)
            result[f"none {split}"] = measured(labels, scored.scores, masks, scored.maps,
                                               np.ones(len(labels), bool))
        else:
            scored = plain.score(ds.test_images)
            result[f"none {split}"] = measured(ds.test_labels, scored.scores, ds.test_masks,
                                               scored.maps, ds.test_has_mask
                                               | (ds.test_labels == 0))
    print(f"{'head / split':24s} image AUROC  pixel AUROC  AUPRO")
    for name, row in result.items():
        print(f"{name:24s} {row['image_auroc']:.3f}        {row['pixel_auroc']:.3f}"
              f"        {row['aupro']:.3f}")
    write_json(run_dir / "head_vs_none.json", result)
    return result


if __name__ == "__main__":
    main(Path(sys.argv[1]))
