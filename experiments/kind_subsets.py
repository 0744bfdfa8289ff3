"""Would validation rank the candidates more like the test on a subset of its kinds?

The ranking of ``candidate_ranking.py`` (its candidates, each counted once, and its rho,
top-1 and regret against the test image AUROC from ``metrics.json``), with each candidate's
validation selection score recomputed from its stored scores
(``scores_val_pseudo.npz``, under the image score its run chose) on the clean normals and
the pasted anomalies of one subset of kinds in :data:`SUBSETS` at a time. Validation's
first choice is the highest selection score, without the close-call rule.

Usage::

    python experiments/kind_subsets.py runs/quality-<set>-<stamp>-defaults runs/quality-<set>-<stamp>-real
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from candidate_ranking import agreement, candidates  # experiments/ is the script's folder

from anomaly_utils.evaluation.selection import selection_score, validation_metrics
from anomaly_utils.scoring.image_score import read_choice
from anomaly_utils.scoring.stored import load_scores

SUBSETS = {
    "all nine": None,
    "sharp": ("cut_paste", "stain", "scratch"),
    "real-like": ("faint_area", "crack", "local_blur", "texture_warp", "dark_region", "shading"),
    "large": ("faint_area", "shading", "dark_region", "texture_warp"),
}
_PER_IMAGE = ("labels", "scores", "masks", "maps", "types", "has_mask")


def subset_selection(val: dict, kinds: tuple[str, ...] | None) -> float | None:
    """The selection score on the clean normals and the anomalies of ``kinds`` (all: None)."""
    labels = np.asarray(val["labels"])
    keep = np.ones(len(labels), bool) if kinds is None else \
        (labels == 0) | np.isin(np.asarray(val["types"]).astype(str), kinds)
    return selection_score(validation_metrics({k: np.asarray(val[k])[keep]
                                               for k in _PER_IMAGE if k in val}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args()
    rows = candidates(args.runs)
    for row in rows:
        folder = Path(next(r for r in args.runs if r.name == row["run"])) / row["candidate"]
        val = load_scores(folder / "scores_val_pseudo.npz", model=row["candidate"])
        val["scores"] = read_choice(folder).scores(val["scores"], val["maps"])
        row["subsets"] = {k: subset_selection(val, kinds) for k, kinds in SUBSETS.items()}
    print(f"{len(rows)} candidates; rho against the test image AUROC, top-1, regret:")
    for k in SUBSETS:
        a = agreement([{**r, "selection": r["subsets"][k]} for r in rows], "image_auroc")
        first = max(rows, key=lambda r: r["subsets"][k])
        print(f"  {k:10s} rho {a['rho']:5.2f}  top-1 {'yes' if a['top1'] else 'no ':3s}  "
              f"regret {a['regret']:.3f}  first: {first['run']}:{first['candidate']}")


if __name__ == "__main__":
    main()
