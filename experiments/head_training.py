"""Learning curve of AE-2's segmentation head on a finished run's AE-2.

Trains the head two-stage on top of ``runs/<id>/ae2/model.keras`` with the given settings and,
every ``--every`` epochs, scores the validation set the lab chooses on (validation normals
with the lab's pseudo-anomaly kinds: cut-paste, stains, scratches; never the head's own
Perlin anomalies) and, for the record only, the test set. Prints one row per checkpoint:
epoch, seconds of training, validation and test image AUROC / pixel AUROC / AUPRO. With
``--val-kinds`` a second validation set is drawn from those kinds (for example all four,
shading included) and reported beside the first; ``curve.json`` also holds the test pixel
AUROC of each defect type.

Usage::

    python experiments/head_training.py runs/<id> --out /tmp/head --epochs 30 --every 5 \\
        [--widths 16,32,64] [--fills image,noise,colour] [--opacity 0,0.8] [--training joint] \\
        [--val-kinds cut_paste,stain,scratch,shading]

Writes ``<out>/curve.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import keras
import numpy as np

from anomaly_utils.artifacts import read_json, write_json
from anomaly_utils.data import pseudo_anomalies
from anomaly_utils.data.loading import load_run_dataset, resize_mask
from anomaly_utils.evaluation import metrics
from anomaly_utils.models.segmentation_head import build_segmentation_head, head_of
from anomaly_utils.scoring.scorer import Scorer
from anomaly_utils.training.head import fit_segmentation_head


def evaluate(scorer: Scorer, images, labels, masks, result=None) -> dict:
    """Image AUROC, pixel AUROC and AUPRO of ``scorer`` (or of its ``result`` on ``images``)."""
    result = scorer.score(images) if result is None else result
    has = masks.reshape(len(masks), -1).any(axis=1) | (labels == 0)
    return {"image_auroc": metrics.image_auroc(labels, result.scores),
            "pixel_auroc": metrics.pixel_auroc(masks[has], result.maps[has]),
            "aupro": metrics.aupro(masks[has], result.maps[has])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--every", type=int, default=5)
    parser.add_argument("--patches", type=int, default=1280)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--widths", default="16,32,64")
    parser.add_argument("--fills", default="image,noise,colour")
    parser.add_argument("--opacity", default="0,0.8")
    parser.add_argument("--clean", type=float, default=0.5)
    parser.add_argument("--training", default="two_stage")
    parser.add_argument("--window", type=float, default=21 / 256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val-kinds", default="", help="kinds of a second validation set")
    args = parser.parse_args()

    params = read_json(args.run_dir / "params.json")["notebooks"]["03_train_ae2"]
    ds = load_run_dataset(params)
    base = Scorer.load(args.run_dir, "ae2")
    channels = ds.train_images.shape[-1]
    pseudo, p_labels, p_masks, _ = pseudo_anomalies.make_labelled_validation(
        ds.val_images, params["seed"])
    p_masks = np.stack([resize_mask(m, params["eval_size"]) for m in p_masks])
    extra = None
    if args.val_kinds:
        e_images, e_labels, e_masks, _ = pseudo_anomalies.make_labelled_validation(
            ds.val_images, params["seed"], kinds=args.val_kinds.split(","))
        extra = (e_images, e_labels,
                 np.stack([resize_mask(m, params["eval_size"]) for m in e_masks]))
    test_masks = ds.test_masks.copy()
    test_masks[~ds.test_has_mask] = False

    options = {"fills": tuple(args.fills.split(",")),
               "opacity": tuple(float(v) for v in args.opacity.split(",")),
               "clean_fraction": args.clean}
    head = build_segmentation_head(channels, [int(w) for w in args.widths.split(",")],
                                   seed=args.seed)
    rows: list[dict] = []
    start = time.perf_counter()
    trained_seconds = [0.0]

    class Curve(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if (epoch + 1) % args.every and epoch + 1 != args.epochs:
                return
            trained_seconds[0] = time.perf_counter() - start - sum(r["eval_s"] for r in rows)
            t0 = time.perf_counter()
            config = type(base.config)(**{**base.config.__dict__, "head": "segmentation",
                                          "head_score_window": args.window})
            scorer = Scorer(base.model, config, head=head_of(self.model))
            test_result = scorer.score(ds.test_images)
            row = {"epoch": epoch + 1, "train_s": round(trained_seconds[0], 1),
                   "loss": float(logs["loss"]),
                   "val": evaluate(scorer, pseudo, p_labels, p_masks),
                   "test": evaluate(scorer, ds.test_images, ds.test_labels, test_masks,
                                    test_result)}
            if extra is not None:
                row["val_extra"] = evaluate(scorer, *extra)
            by_type = metrics.per_defect_metrics(ds.test_labels, test_result.scores,
                                                 ds.test_types, test_masks, test_result.maps)
            row["test_pixel_by_type"] = {k: v["pixel_auroc"] for k, v in by_type.items()}
            row["eval_s"] = time.perf_counter() - t0
            rows.append(row)
            v, t = row["val"], row["test"]
            print(f"epoch {row['epoch']:3d} {row['train_s']:7.1f}s loss {row['loss']:.4f} | "
                  f"val {v['image_auroc']:.3f} {v['pixel_auroc']:.3f} {v['aupro']:.3f} | "
                  f"test {t['image_auroc']:.3f} {t['pixel_auroc']:.3f} {t['aupro']:.3f}"
                  + (f" | val_extra {row['val_extra']['image_auroc']:.3f} "
                     f"{row['val_extra']['pixel_auroc']:.3f} {row['val_extra']['aupro']:.3f}"
                     if extra is not None else ""), flush=True)
            print("    test pixel AUROC by type: " + ", ".join(
                f"{k} {v:.3f}" for k, v in row["test_pixel_by_type"].items()), flush=True)

    fit_segmentation_head(base.model, head, ds.train_images, args.out / "head",
                          patch_size=params["patch_size"], epochs=args.epochs,
                          patches_per_epoch=args.patches, batch_size=args.batch,
                          learning_rate=args.lr, seed=args.seed, training=args.training,
                          anomaly_options=options, verbose=0, callbacks=[Curve()])
    write_json(args.out / "curve.json", {"args": {k: str(v) for k, v in vars(args).items()},
                                         "rows": rows})
    print(json.dumps(rows[-1]))


if __name__ == "__main__":
    main()
