"""Would averaging candidates beat choosing one? Fusions of finished runs' stored scores.

An auto run (``python -m anomaly_utils run --data-dir DIR``) leaves two runs: the defaults
and ``--preset real``. This script reads their stored scores (``<run>/<candidate>/scores_*.npz``),
standardises each candidate's image scores and maps by the mean and standard deviation of
its own scores on the clean validation normals (``scores_val.npz``: nothing anomalous is
looked at), and averages them over every subset of two or more candidates. Each fusion is
judged as the lab judges a candidate, by the selection score on the run's pseudo-labelled
validation set (``scores_val_pseudo.npz``; :func:`anomaly_utils.evaluation.selection.selection_score`),
and, for the record only, on the test split.

Usage::

    python experiments/candidate_fusion.py --run floor=runs/<defaults>/floor \\
        --run ae1=runs/<defaults>/ae1 --run ae2=runs/<defaults>/ae2 \\
        --run ae2_real=runs/<real>/ae2 [--how mean]

Prints one row per candidate and fusion: validation image / pixel AUROC and selection
score, test image / pixel AUROC ("n/a" without masks), the validation's first choice
marked; then the rank agreement (Spearman's rho) of the validation selection score and the
test image AUROC, over the candidates alone and over candidates and fusions.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from anomaly_utils.evaluation import metrics
from anomaly_utils.evaluation.selection import selection_score, validation_metrics
from anomaly_utils.scoring.blend import SPLITS, Standardiser
from anomaly_utils.scoring.stored import load_scores


def standardised(folder: Path) -> dict[str, dict[str, np.ndarray]]:
    """A candidate's scores and maps of every split, float64, standardised by its clean
    validation normals as the lab's blend is (:class:`Standardiser`)."""
    raw = {split: load_scores(folder / f"scores_{split}.npz") for split in SPLITS}
    standardiser = Standardiser.of_normals(raw["val"])
    out = {}
    for split, z in raw.items():
        scores, maps = standardiser.apply(z["scores"], z["maps"])
        out[split] = {**z, "scores": scores, "maps": maps}
    return out


def fuse(parts: list[dict[str, np.ndarray]], how: str) -> dict[str, np.ndarray]:
    """The first part's labels and masks with the mean (or max) of the parts' scores and
    maps, which must cover the same images in the same order."""
    reduce = np.mean if how == "mean" else np.max
    for part in parts[1:]:
        if not np.array_equal(part["labels"], parts[0]["labels"]):
            raise SystemExit("the runs scored other images: fuse runs of the same data and seed")
    return {**parts[0], "scores": reduce([p["scores"] for p in parts], axis=0),
            "maps": reduce([p["maps"] for p in parts], axis=0)}


def report(name: str, fused: dict[str, dict[str, np.ndarray]]) -> dict:
    val = validation_metrics(fused["val_pseudo"])
    test = fused["test"]
    has = np.asarray(test["has_mask"], bool)
    masks = np.asarray(test["masks"], bool)
    return {"name": name, "val_image": val["image_auroc"], "val_pixel": val["pixel_auroc"],
            "selection": selection_score(val),
            "test_image": metrics.image_auroc(test["labels"], test["scores"]),
            "test_pixel": (metrics.pixel_auroc(masks[has], test["maps"][has])
                           if masks[has].any() else None)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", required=True, metavar="NAME=FOLDER",
                        help="a candidate's folder in a finished run, under a name")
    parser.add_argument("--how", choices=("mean", "max"), default="mean")
    args = parser.parse_args()
    folders = dict(item.split("=", 1) for item in args.run)
    scored = {name: standardised(Path(folder)) for name, folder in folders.items()}
    rows = [report(name, s) for name, s in scored.items()]
    for size in range(2, len(scored) + 1):
        for subset in itertools.combinations(scored, size):
            fused = {split: fuse([scored[n][split] for n in subset], args.how)
                     for split in SPLITS}
            rows.append(report("+".join(subset), fused))
    best = max(rows, key=lambda r: r["selection"])
    print(f"{'candidate':28s} val image / pixel (selection) | test image / pixel")
    for r in rows:
        mark = "  <- validation's choice" if r is best else ""
        print(f"{r['name']:28s} {metrics.shown(r['val_image'], 3)} / "
              f"{metrics.shown(r['val_pixel'], 3)} ({r['selection']:.3f}) | "
              f"{metrics.shown(r['test_image'], 3)} / {metrics.shown(r['test_pixel'], 3)}{mark}")
    singles = rows[:len(scored)]
    for label, subset in (("candidates", singles), ("candidates and fusions", rows)):
        rho = spearmanr([r["selection"] for r in subset], [r["test_image"] for r in subset])[0]
        print(f"Spearman rho, validation selection vs test image AUROC, {len(subset)} "
              f"{label}: {rho:.2f}")


if __name__ == "__main__":
    main()
