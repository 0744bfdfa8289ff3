"""Which synthetic-anomaly fills the segmentation head should train on: a comparison on a
finished run's AE-2.

For each fill set, one head is trained on top of ``runs/<id>/ae2`` (the same widths, learning rate,
opacity, clean fraction, batch, augmentation and schedule as the run; ``--epochs`` and
``--patches`` default to the run's), then
the run's own validation set, the one the lab chooses on (its held-out normals clean and
with the pseudo-anomaly mix, real-like kinds included, never the head's own anomalies;
:func:`anomaly_utils.scoring.validation_set.shared_validation`) and, for the record only,
the test set are scored. ``--val-draws`` further draws of pseudo-anomalies on the same
normals (seeds seed + 1, ...) are scored beside it. Prints one row per fill set: seconds of
training, image / pixel AUROC on the run's validation set, on the extra draws, and on the test set,
then the pixel AUROC of each pseudo-anomaly kind over all draws and of each test defect type
(image AUROC where a type has no masks). The sets run one after another in this one
process. The default sets are DRAEM's three fills, then those plus each of ``gradient``,
``crack``, ``blur`` and ``texture`` (:mod:`anomaly_utils.data.training_fills`) alone, then
plus all four.

Usage::

    python experiments/head_fills.py runs/<id> --out /tmp/fills [--epochs 12] \\
        [--sets "image,noise,colour;image,noise,colour,crack"] [--patches 1280] [--seed 0] \\
        [--data-dir data/elpv/mono] [--val-draws 0]

Writes ``<out>/fills.json`` after every set (a stopped comparison keeps what it finished).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from anomaly_utils.artifacts import read_json, write_json
from anomaly_utils.data import pseudo_anomalies
from anomaly_utils.data.loading import load_run_dataset, resize_mask
from anomaly_utils.data.training_anomalies import DRAEM_FILLS
from anomaly_utils.evaluation import metrics
from anomaly_utils.models.losses import make_ae2_loss
from anomaly_utils.models.segmentation_head import build_segmentation_head
from anomaly_utils.scoring.scorer import Scorer
from anomaly_utils.scoring.validation_set import shared_validation
from anomaly_utils.seeding import set_global_seed
from anomaly_utils.training.head import fit_segmentation_head

NEW = ("gradient", "crack", "blur", "texture")


def default_sets() -> list[tuple[str, ...]]:
    base = tuple(DRAEM_FILLS)
    return [base, *[(*base, kind) for kind in NEW], (*base, *NEW)]


def evaluate(result, labels, masks, kinds=None) -> dict:
    """Image and pixel AUROC of a scored set (pixels of images with a mask or label 0), and,
    given the kinds, each kind's pixel AUROC (image AUROC where it has no masks)."""
    has = masks.reshape(len(masks), -1).any(axis=1) | (labels == 0)
    row = {"image_auroc": metrics.image_auroc(labels, result.scores),
           "pixel_auroc": (metrics.pixel_auroc(masks[has], result.maps[has])
                           if masks[has].any() else None)}
    if kinds is not None:
        by_kind = metrics.per_defect_metrics(labels, result.scores, np.asarray(kinds),
                                             masks, result.maps)
        row["by_kind"] = {k: v["pixel_auroc"] if v["pixel_auroc"] is not None
                          else v["image_auroc"] for k, v in by_kind.items()}
    return row


def _fmt(value) -> str:
    return "  -  " if value is None else f"{value:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=None, help="default: the run's")
    parser.add_argument("--patches", type=int, default=None, help="default: the run's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sets", default="", help="fill sets, ';' between sets, ',' inside")
    parser.add_argument("--val-draws", type=int, default=0,
                        help="further pseudo-anomaly draws on the validation normals")
    parser.add_argument("--data-dir", default=None, help="the run's data, moved (default: "
                        "the run's data_dir)")
    args = parser.parse_args()
    sets = ([tuple(s.split(",")) for s in args.sets.split(";")] if args.sets
            else default_sets())

    params = read_json(args.run_dir / "params.json")["notebooks"]["03_train_ae2"]
    ds = load_run_dataset(params, data_dir=args.data_dir or params["data_dir"])
    base = Scorer.load(args.run_dir, "ae2")
    config = type(base.config)(**{**base.config.__dict__, "head": "segmentation",
                                  "head_score_window": params.get("head_score_window", 0.08)})
    shared = shared_validation(args.run_dir, ds, params["seed"], params["eval_size"])
    draws = [pseudo_anomalies.make_balanced_validation(ds.val_images, params["seed"] + 1 + k)
             for k in range(args.val_draws)]
    val = np.concatenate([shared.images, *[d[0] for d in draws]])
    v_labels = np.concatenate([shared.labels, *[d[1] for d in draws]])
    v_masks = np.concatenate([shared.masks, *[np.stack([resize_mask(m, params["eval_size"])
                                                        for m in d[2]]) for d in draws]])
    v_kinds = [*shared.kinds, *[kind for d in draws for kind in d[3]]]
    lab = np.arange(len(val)) < len(shared.images)  # the run's own set
    epochs = args.epochs or params.get("head_epochs", 12)
    patches = args.patches or params.get("head_patches_per_epoch", 1280)
    test_masks = ds.test_masks.copy()
    test_masks[~ds.test_has_mask] = False
    widths = params.get("head_widths", [16, 32, 64])
    print(f"{args.run_dir.name}: {len(ds.train_images)} train, {len(val)} validation "
          f"({int(v_labels[lab].sum())} pseudo-anomalous; {int(v_labels.sum())} in "
          f"{len(draws)} draws), {len(ds.test_images)} test; head "
          f"{widths}, {epochs} epochs of {patches}", flush=True)

    rows: list[dict] = []
    for fills in sets:
        set_global_seed(args.seed)
        head = build_segmentation_head(ds.train_images.shape[-1], widths, seed=args.seed)
        options = {"fills": fills,
                   "opacity": tuple(params.get("anomaly_opacity", (0.0, 0.8))),
                   "clean_fraction": params.get("anomaly_clean_fraction", 0.5)}
        start = time.perf_counter()
        fitted = fit_segmentation_head(
            base.model, head, ds.train_images, args.out / "_".join(fills),
            patch_size=params["patch_size"], epochs=epochs, patches_per_epoch=patches,
            batch_size=params.get("batch_size", 32),
            learning_rate=params.get("head_learning_rate", 1e-3), seed=args.seed,
            training=params.get("head_training", "two_stage"),
            focal_gamma=params.get("focal_gamma", 2.0), augment=params.get("augment", False),
            reconstruction_loss=make_ae2_loss(ssim_weight=params.get("ssim_weight", 1.0),
                                              l1_weight=params.get("l1_weight", 0.5),
                                              gms_weight=params.get("gms_weight", 0.0)),
            anomaly_options=options)
        seconds = time.perf_counter() - start
        scorer = Scorer(base.model, config, head=fitted["head"])
        scored = scorer.score(val)
        first = SimpleNamespace(scores=scored.scores[lab], maps=scored.maps[lab])
        row = {"fills": list(fills), "train_s": round(seconds, 1),
               "val": evaluate(first, v_labels[lab], v_masks[lab]),
               "val_draws": evaluate(scored, v_labels, v_masks, v_kinds),
               "test": evaluate(scorer.score(ds.test_images), ds.test_labels, test_masks,
                                ds.test_types)}
        row["val_selection"] = (row["val"]["image_auroc"] + row["val"]["pixel_auroc"]) / 2
        rows.append(row)
        write_json(args.out / "fills.json", {"run": str(args.run_dir), "args": {
            k: str(v) for k, v in vars(args).items()}, "rows": rows})
        v, a, t = row["val"], row["val_draws"], row["test"]
        print(f"{'+'.join(fills):42s} {seconds:6.0f}s | val {_fmt(v['image_auroc'])} "
              f"{_fmt(v['pixel_auroc'])} (selection {row['val_selection']:.3f}) | draws {_fmt(a['image_auroc'])} "
              f"{_fmt(a['pixel_auroc'])} | test {_fmt(t['image_auroc'])} "
              f"{_fmt(t['pixel_auroc'])}", flush=True)
        print("    draws by kind: " + ", ".join(f"{k} {_fmt(x)}"
                                                for k, x in a["by_kind"].items()), flush=True)
        print("    test by type: " + ", ".join(f"{k} {_fmt(x)}"
                                               for k, x in t["by_kind"].items()), flush=True)


if __name__ == "__main__":
    main()
