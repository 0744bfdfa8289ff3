"""Rescore finished runs' candidates on the shared, balanced validation set.

Until the shared set existed, every candidate pasted its own pseudo-anomalies into the
validation normals at its own image size, so the floor, AE-1 and AE-2 were judged on
different draws (different kinds and counts; 12 anomalous images on the carpet). This script
loads the trained candidates of finished runs (no training), scores the run's shared set
(:func:`anomaly_utils.scoring.validation_set.shared_validation`, built in
``<run>/validation/`` if absent) and prints, per candidate: the selection score on the old
per-candidate set (from ``scores_val_pseudo.npz``), on the shared set, the shared set's image
AUROC per kind, and the test image AUROC, then each set's choice against the test's best.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python experiments/shared_validation.py runs/<run> [...] \\
        [--out runs/shared_validation.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from anomaly_utils.artifacts import read_json
from anomaly_utils.data.loading import load_dataset
from anomaly_utils.evaluation import metrics
from anomaly_utils.evaluation.selection import (
    choose_candidate,
    selection_score,
    validation_metrics,
)
from anomaly_utils.scoring.statistics_floor import StatisticsFloor
from anomaly_utils.scoring.stored import CANDIDATES, FLOOR, load_scores
from anomaly_utils.scoring.validation_set import shared_validation

ROOT = Path(__file__).resolve().parents[1]


def data_dir_of(params: dict) -> Path:
    """The run's data folder: as the notebooks saw it, else as given on the command line."""
    seen = Path(params["notebooks"]["01_data_exploration"]["data_dir"])
    return seen if seen.is_dir() else ROOT / params["overrides"]["data_dir"]


def candidate(run: Path, name: str, first: dict):
    """``(score function, image_size, color_mode)`` of one trained candidate of ``run``."""
    if name == FLOOR:
        return StatisticsFloor.load(run / FLOOR).score, first["floor_image_size"], "auto"
    from anomaly_utils.scoring.scorer import Scorer  # loads the backend

    scorer = Scorer.load(run, name)
    return scorer.score, scorer.config.image_size, scorer.config.color_mode


def rescore(run: Path) -> dict:
    """Old and shared validation metrics and the test image AUROC of each candidate."""
    params = read_json(run / "params.json")
    first = params["notebooks"]["01_data_exploration"]
    data_dir = data_dir_of(params)
    out = {}
    for name in CANDIDATES:
        score, size, color_mode = candidate(run, name, first)
        ds = load_dataset(data_dir, image_size=size, color_mode=color_mode,
                          val_fraction=first["val_fraction"], seed=first["seed"],
                          mask_size=first["eval_size"],
                          allow_missing_masks=first["allow_missing_masks"])
        pseudo = shared_validation(run, ds, first["seed"], first["eval_size"])
        result = score(pseudo.images)
        shared = validation_metrics({"labels": pseudo.labels, "scores": result.scores,
                                     "masks": pseudo.masks, "maps": result.maps})
        clean = result.scores[pseudo.labels == 0]
        by_kind = {}
        for kind in sorted(set(pseudo.kinds[pseudo.labels == 1])):
            scores = result.scores[pseudo.kinds == kind]
            by_kind[kind] = metrics.image_auroc(
                np.r_[np.zeros(len(clean)), np.ones(len(scores))], np.r_[clean, scores])
        old = validation_metrics(load_scores(run / name / "scores_val_pseudo.npz"))
        test = load_scores(run / name / "scores_test.npz")
        out[name] = {"old": old, "shared": shared, "by_kind": by_kind,
                     "test_image_auroc": metrics.image_auroc(test["labels"], test["scores"]),
                     "n_shared": len(pseudo.labels)}
    return out


def report(run: Path, out: dict) -> None:
    print(f"== {run.name}  (shared set: {next(iter(out.values()))['n_shared']} images)")
    for name, row in out.items():
        kinds = " ".join(f"{k}={v:.2f}" for k, v in row["by_kind"].items())
        print(f"  {name:6s} old {selection_score(row['old']):.3f}  shared "
              f"{selection_score(row['shared']):.3f}  test image {row['test_image_auroc']:.3f}"
              f"  | {kinds}")
    best = max(out, key=lambda n: out[n]["test_image_auroc"])
    for which in ("old", "shared"):
        choice = choose_candidate({n: r[which] for n, r in out.items()})["model"]
        regret = out[best]["test_image_auroc"] - out[choice]["test_image_auroc"]
        print(f"  {which:6s} validation chooses {choice} (test best {best}, regret {regret:.3f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    results = {}
    for run in args.runs:
        results[run.name] = rescore(run)
        report(run, results[run.name])
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
