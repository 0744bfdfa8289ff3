"""How hard each pasted anomaly kind is, next to each real defect type of the test set.

Scores a finished run's model (its own scoring settings, via ``Scorer.load``) on the
validation set of ``benchmarks.ae2_experiments`` (three copies of the validation normals,
anomalies seeded with seed + 1, drawn from ``--val-kinds``) and reports the image and pixel
AUROC of each pasted kind against the clean copies, beside the run's per-defect test
metrics from ``metrics.json``. When validation is much easier than the test set, this says
which kinds are too easy.

Usage::

    python -m benchmarks.validation_by_kind --run-dir runs/ID --data-dir DIR [--model ae2] \
        [--val-kinds cut_paste stain scratch shading]

Prints a markdown table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from benchmarks.common import pasted_validation_set


def by_kind(run_dir: Path, data_dir: str, model: str, val_kinds: tuple[str, ...]) -> list[dict]:
    """Rows {"set", "kind", "n", "image_auroc", "pixel_auroc"}: one per pasted kind
    ("validation") and per test defect type ("test", from the run's metrics.json)."""
    from anomaly_utils import data, metrics
    from anomaly_utils.artifacts import read_json
    from anomaly_utils.experiment import Scorer

    notebook = "02_train_ae1" if model == "ae1" else "03_train_ae2"
    params = read_json(run_dir / "params.json")["notebooks"][notebook]
    scorer = Scorer.load(run_dir, model)
    c = scorer.config
    ds = data.load_dataset(data_dir, image_size=c.image_size, color_mode=c.color_mode,
                           val_fraction=params["val_fraction"], seed=params["seed"],
                           mask_size=c.eval_size)
    images, labels, masks, kinds = pasted_validation_set(ds.val_images, 3, params["seed"] + 1,
                                                         c.eval_size, val_kinds)
    result = scorer.score(images)
    kinds = np.asarray(kinds)
    rows = []
    for kind in val_kinds:
        keep = (kinds == kind) | (labels == 0)
        rows.append({"set": "validation", "kind": kind, "n": int((kinds == kind).sum()),
                     "image_auroc": metrics.image_auroc(labels[keep], result.scores[keep]),
                     "pixel_auroc": metrics.pixel_auroc(masks[keep], result.maps[keep])})
    for defect, m in read_json(run_dir / "metrics.json")[model]["per_defect"].items():
        rows.append({"set": "test", "kind": defect, "n": m["n"],
                     "image_auroc": m["image_auroc"], "pixel_auroc": m["pixel_auroc"]})
    return rows


def main() -> None:
    from anomaly_utils.pseudo_anomalies import PSEUDO_ANOMALY_KINDS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", required=True, type=Path)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--model", default="ae2", choices=("ae1", "ae2"))
    parser.add_argument("--val-kinds", nargs="+", default=list(PSEUDO_ANOMALY_KINDS))
    args = parser.parse_args()
    rows = by_kind(args.run_dir, args.data_dir, args.model, tuple(args.val_kinds))
    print("| set | kind | n | image AUROC | pixel AUROC |\n|---|---|---|---|---|")
    for r in rows:
        pixel = "–" if r["pixel_auroc"] is None else f"{r['pixel_auroc']:.3f}"
        print(f"| {r['set']} | {r['kind']} | {r['n']} | {r['image_auroc']:.3f} | {pixel} |")


if __name__ == "__main__":
    main()
