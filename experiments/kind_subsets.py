"""Would validation rank the candidates more like the test on a subset of its kinds?

For each finished run given (an auto run: both ``<id>-defaults`` and ``<id>-real``, the
second's shared floor and AE-1 counted once), every candidate's validation selection score
(mean of image and pixel AUROC, :func:`anomaly_utils.evaluation.selection.validation_metrics`)
on the clean normals against the pasted anomalies of each subset of kinds in :data:`SUBSETS`,
each candidate under the image score its run chose (``image_score.json``); then Spearman's
rho against the test image AUROC, validation's first choice (without the close-call rule) and
what it lost on the test (regret).

Usage::

    python experiments/kind_subsets.py runs/quality-<set>-<stamp>-defaults runs/quality-<set>-<stamp>-real
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from anomaly_utils.evaluation import metrics
from anomaly_utils.evaluation.selection import validation_metrics
from anomaly_utils.scoring.image_score import read_choice
from anomaly_utils.scoring.stored import load_run_scores

SUBSETS = {
    "all nine": None,
    "sharp": ("cut_paste", "stain", "scratch"),
    "real-like": ("faint_area", "crack", "local_blur", "texture_warp", "dark_region", "shading"),
    "large": ("faint_area", "shading", "dark_region", "texture_warp"),
}
SHARED = ("floor", "ae1")  # a later run of an auto command takes these from the first


def selection_on(val: dict, kinds: tuple[str, ...] | None) -> float:
    """The selection score on the clean normals and the anomalies of ``kinds`` (all: None)."""
    labels = np.asarray(val["labels"])
    keep = np.ones(len(labels), bool) if kinds is None else \
        (labels == 0) | np.isin(np.asarray(val["types"]).astype(str), kinds)
    subset = {k: np.asarray(a)[keep] for k, a in val.items()
              if k in ("labels", "scores", "masks", "maps", "types", "has_mask")}
    m = validation_metrics(subset)
    return (m["image_auroc"] + m["pixel_auroc"]) / 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args()
    names, selection, test = [], {k: [] for k in SUBSETS}, []
    for i, run in enumerate(args.runs):
        for name, splits in load_run_scores(run, splits=("test", "val_pseudo")).items():
            if i and name in SHARED:
                continue
            choice = read_choice(run / name)
            for split in splits.values():
                split["scores"] = choice.scores(split["scores"], split["maps"])
            names.append(f"{run.name}:{name}")
            test.append(metrics.image_auroc(splits["test"]["labels"], splits["test"]["scores"]))
            for k, kinds in SUBSETS.items():
                selection[k].append(selection_on(splits["val_pseudo"], kinds))
    test = np.asarray(test)
    print(f"test's best: {names[int(test.argmax())]} {test.max():.3f} ({len(names)} candidates)")
    for k, values in selection.items():
        pick = int(np.argmax(values))
        print(f"  {k:10s} rho {spearmanr(values, test)[0]:5.2f}   first: {names[pick]} "
              f"test {test[pick]:.3f}, regret {test.max() - test[pick]:.3f}")


if __name__ == "__main__":
    main()
