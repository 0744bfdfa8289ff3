"""How many labelled real defects does validation need to choose the right candidate?

A dataset may hold a few labelled defects in ``val/<defect>/``; the lab then chooses among
its candidates on them (:func:`anomaly_utils.evaluation.selection.validation_metrics`). This
script simulates that with finished runs, without training or rescoring: for k labelled
defects it draws k of the test defects at random (``--draws`` times, seeded), scores each
candidate by the image AUROC of the clean validation normals (``scores_val.npz``) against
those k, chooses the best, and measures the choice on the *remaining* test images. It prints,
per k, how often the choice is the candidate that is best on the remaining test, and the mean
test image AUROC lost against that best (regret). With ``--shared`` (the JSON that
experiments/shared_validation.py writes) it also chooses as the lab does, on the mean of the
pasted anomalies' selection score and the labelled defects' (regret printed as "blend"). The
labelled defects are scored by image AUROC alone, which keeps the thousands of draws cheap.

Usage::

    .venv/bin/python experiments/labelled_validation.py runs/<run> [...] \\
        [--ks 1 2 3 5 10 20] [--draws 500] [--shared runs/shared_validation.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from anomaly_utils.evaluation.selection import selection_score
from anomaly_utils.scoring.stored import CANDIDATES, load_scores


def simulate(run: Path, ks: list[int], draws: int, pasted: dict | None = None,
             seed: int = 0) -> dict[int, tuple]:
    """``{k: (share of draws choosing the remaining test's best, mean regret, mean regret of
    the blend with ``pasted`` ({candidate: selection score}) or None)}``."""
    val = {c: load_scores(run / c / "scores_val.npz")["scores"] for c in CANDIDATES}
    test = {c: load_scores(run / c / "scores_test.npz") for c in CANDIDATES}
    labels = test[CANDIDATES[0]]["labels"]
    defects = np.flatnonzero(labels == 1)
    rng = np.random.default_rng(seed)
    out = {}
    for k in ks:
        if k >= len(defects):
            continue
        hits, regrets, blended = [], [], []
        for _ in range(draws):
            drawn = rng.choice(defects, k, replace=False)
            rest = np.setdiff1d(np.arange(len(labels)), drawn)
            labelled = {c: roc_auc_score(np.r_[np.zeros(len(val[c])), np.ones(k)],
                                         np.r_[val[c], test[c]["scores"][drawn]])
                        for c in CANDIDATES}
            chosen = max(CANDIDATES, key=labelled.get)
            on_rest = {c: roc_auc_score(labels[rest], test[c]["scores"][rest])
                       for c in CANDIDATES}
            best = max(on_rest.values())
            hits.append(on_rest[chosen] == best)
            regrets.append(best - on_rest[chosen])
            if pasted:
                blend = max(CANDIDATES, key=lambda c: (labelled[c] + pasted[c]) / 2)
                blended.append(best - on_rest[blend])
        out[k] = (float(np.mean(hits)), float(np.mean(regrets)),
                  float(np.mean(blended)) if pasted else None)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--ks", nargs="+", type=int, default=[1, 2, 3, 5, 10, 20])
    parser.add_argument("--draws", type=int, default=500)
    parser.add_argument("--shared", type=Path, help="experiments/shared_validation.py --out")
    args = parser.parse_args()
    shared = json.loads(args.shared.read_text()) if args.shared else {}
    for run in args.runs:
        pasted = ({c: selection_score(shared[run.name][c]["shared"]) for c in CANDIDATES}
                  if run.name in shared else None)
        print(f"== {run.name}")
        for k, (hit, regret, blend) in simulate(run, args.ks, args.draws, pasted).items():
            also = f", blend {blend:.3f}" if blend is not None else ""
            print(f"  k={k:3d}: labelled alone chooses the test's best in {hit:5.1%} of draws, "
                  f"mean regret {regret:.3f}{also}")


if __name__ == "__main__":
    main()
