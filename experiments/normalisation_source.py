"""Do AE-2's per-pixel normalisation statistics from training images hold for unseen normals?

AE-2's maps are z-scored per pixel with the mean and spread of the error on 200 training
images (notebook 03, ``normalize_maps``). The model has seen those images, so its error on them
may be smaller than on defect-free images it has not seen; then every unseen image looks more
anomalous than it is, and the statistics would need a calibration split of their own.

This measures it on a finished run: the errors of the validation normals (held out from
training) against the training sample's statistics. If the statistics hold, the held-out
normals' z-scores have mean about 0 and spread about 1, and statistics fitted on the held-out
normals themselves are close to the training ones.

Usage: ``python experiments/normalisation_source.py runs/<id>`` (a run with AE-2 normalised).
Prints a table and writes ``runs/<id>/normalisation_source.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from anomaly_utils.artifacts import read_json, write_json
from anomaly_utils.data.loading import load_run_dataset
from anomaly_utils.scoring.scorer import Scorer, normal_error_stats, training_sample


def main(run_dir: Path) -> dict:
    params = read_json(run_dir / "params.json")["notebooks"]["03_train_ae2"]
    ds = load_run_dataset(params)
    scorer = Scorer.load(run_dir, "ae2")
    if scorer.config.norm_mean is None:
        raise SystemExit(f"{run_dir}: AE-2 is not normalised (normalize_maps false)")
    stored_mean = np.asarray(scorer.config.norm_mean, np.float32)
    stored_std = np.asarray(scorer.config.norm_std, np.float32)
    _, train_maps = scorer.reconstruct_with_maps(training_sample(ds.train_images, 200,
                                                                 params["seed"]))
    _, held_out_maps = scorer.reconstruct_with_maps(ds.val_images)
    train_mean, train_std = normal_error_stats(train_maps)
    held_mean, held_std = normal_error_stats(held_out_maps)
    z_train = (train_maps - stored_mean) / stored_std
    z_held = (held_out_maps - stored_mean) / stored_std
    result = {
        "run": str(run_dir), "n_train_sample": len(train_maps),
        "n_held_out_normals": len(held_out_maps),
        "stored_statistics_reproduced": bool(np.allclose(train_mean, stored_mean, atol=1e-5)),
        "mean_error_train": float(train_maps.mean()),
        "mean_error_held_out": float(held_out_maps.mean()),
        "held_out_over_train_error": float(held_out_maps.mean() / train_maps.mean()),
        "z_train_mean": float(z_train.mean()), "z_train_std": float(z_train.std()),
        "z_held_out_mean": float(z_held.mean()), "z_held_out_std": float(z_held.std()),
        "median_ratio_of_per_pixel_means": float(np.median(held_mean / train_mean)),
        "median_ratio_of_per_pixel_spreads": float(np.median(held_std / train_std)),
        "peak_z_train_median": float(np.median(z_train.max(axis=(1, 2)))),
        "peak_z_held_out_median": float(np.median(z_held.max(axis=(1, 2)))),
    }
    write_json(run_dir / "normalisation_source.json", result)
    return result


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    print(json.dumps(main(Path(sys.argv[1])), indent=2))
