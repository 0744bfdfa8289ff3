"""AE-2 design experiments, selected on validation data only.

Each configuration trains AE-2 on a dataset's training split and is scored on
(1) a labelled *validation* set: the held-out defect-free training images, three copies
each, half of them with pasted pseudo-anomalies (cut-paste, stains, scratches), and
(2) the test set, recorded for the final report only. Choices are made on (1).

Usage:
    python -m benchmarks.ae2_experiments --data-dir data/synthetic_carpet --name NAME \\
        [-p key value ...]
Appends one JSON line per configuration to runs/experiments/<dataset>.jsonl and prints it.
The table in docs/experiments.md was made from those files.
"""

from __future__ import annotations

import argparse
import ast
import json
import time
from pathlib import Path

import numpy as np

from benchmarks.common import ROOT, pasted_validation_set, validation_and_test_metrics

DEFAULTS = {
    "image_size": 256, "color_mode": "rgb", "patch_size": 128, "latent_dim": 100,
    "bottleneck": "global", "epochs": 25, "patches_per_epoch": 640, "batch_size": 32,
    "learning_rate": 5e-4, "ssim_weight": 1.0, "l1_weight": 0.0, "gms_weight": 0.0,
    "corrupt": 0.0, "corrupt_mode": "rectangle",
    "augment": True,
    "stride": 32, "map_kind": "ssim", "smooth_sigma": 4.0, "score_method": "topk",
    "topk_percent": 1.0, "normalize_maps": False, "eval_size": 128, "seed": 0,
    "val_fraction": 0.1, "ensemble_size": 1,
}


EVAL_GRID = [(kind, sigma, method) for kind in ("ssim", "l1", "l2", "ssim+l1")
             for sigma in (1.0, 2.0, 4.0) for method in ("max", "topk")]


def run(data_dir: str, settings: dict, eval_grid: bool = False) -> list[dict]:
    from anomaly_utils import data, experiment, models, scoring, training
    from anomaly_utils.experiment import Scorer, ScoringConfig, training_sample
    from anomaly_utils.images import channels_for
    from anomaly_utils.seeding import set_global_seed

    s = {**DEFAULTS, **settings}
    set_global_seed(s["seed"])
    ds = data.load_dataset(data_dir, image_size=s["image_size"], color_mode=s["color_mode"],
                           val_fraction=s["val_fraction"], seed=s["seed"],
                           mask_size=s["eval_size"])
    start = time.perf_counter()
    work = ROOT / "runs" / "experiments" / "work" / f"{time.time_ns()}"
    inpainting = s["bottleneck"] == "unet"  # as notebook 03: grid masks in training and scoring
    mode = "grid" if inpainting else s["corrupt_mode"]
    fits = []
    for member in range(s["ensemble_size"]):  # as notebook 03: member k trains with seed + k
        member_seed = experiment.member_seed(s["seed"], member)
        model = models.build_ae2(patch_size=s["patch_size"],
                                 channels=channels_for(s["color_mode"]),
                                 latent_dim=s["latent_dim"], bottleneck=s["bottleneck"],
                                 seed=member_seed)
        fits.append(training.fit_autoencoder(
            model, training.patch_dataset(ds.train_images, s["patch_size"],
                                          s["patches_per_epoch"], s["batch_size"],
                                          seed=member_seed, augment=s["augment"],
                                          corrupt=s["corrupt"], corrupt_mode=mode),
            training.val_patch_dataset(ds.val_images, s["patch_size"],
                                       batch_size=s["batch_size"], seed=member_seed,
                                       corrupt_mode=mode if inpainting else None),
            experiment.member_dir(work, member), epochs=s["epochs"],
            learning_rate=s["learning_rate"], seed=member_seed,
            loss=models.make_ae2_loss(s["ssim_weight"], s["l1_weight"], s["gms_weight"]),
            verbose=0))
    train_seconds = time.perf_counter() - start
    images, labels, val_masks, _ = pasted_validation_set(ds.val_images, 3, s["seed"] + 1,
                                                         s["eval_size"])
    variants = EVAL_GRID if eval_grid else [(s["map_kind"], s["smooth_sigma"],
                                             s["score_method"])]
    rows = []
    for kind, sigma, method in variants:
        scorer = Scorer([fit["model"] for fit in fits], ScoringConfig(
            model="ae2", image_size=s["image_size"], color_mode=s["color_mode"],
            map_kind=kind, score_method=method, topk_percent=s["topk_percent"],
            eval_size=s["eval_size"], smooth_sigma=sigma, patch_size=s["patch_size"],
            stride=s["stride"], normalize=s["normalize_maps"], batch_size=s["batch_size"],
            ensemble_size=s["ensemble_size"],
            inpaint_cells=list(scoring.grid_cells(s["patch_size"])) if inpainting else []))
        if s["normalize_maps"]:
            scorer.fit_normalization(training_sample(ds.train_images, 200, s["seed"]))
        val = scorer.score(images)
        test = scorer.score(ds.test_images)
        rows.append({
            "settings": {**settings, "map_kind": kind, "smooth_sigma": sigma,
                         "score_method": method},
            "train_seconds": round(train_seconds, 1),
            "final_val_loss": float(np.mean([fit["history"]["val_loss"][-1] for fit in fits])),
            **validation_and_test_metrics(labels, val.scores, val_masks, val.maps, ds,
                                          test.scores, test.maps),
        })
    return rows


def markdown_table(path: Path) -> str:
    """The rows of a results file as a markdown table (validation first, test last)."""
    lines = ["| experiment | settings (over the script's defaults) | train s | val image AUROC "
             "| val pixel AUROC | test image AUROC | test pixel AUROC | test AUPRO |",
             "|---|---|---|---|---|---|---|---|"]
    for line in path.read_text().splitlines():
        r = json.loads(line)
        settings = ", ".join(f"{k}={v}" for k, v in r["settings"].items())

        def f(key, r=r):
            return "n/a" if r[key] is None else f"{r[key]:.3f}"

        lines.append(f"| {r['name']} | {settings} | {r['train_seconds']:.0f} | "
                     f"{f('val_image_auroc')} | {f('val_pixel_auroc')} | "
                     f"{f('test_image_auroc')} | {f('test_pixel_auroc')} | {f('test_aupro')} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--table", metavar="JSONL", help="print a results file as markdown")
    parser.add_argument("--data-dir")
    parser.add_argument("--name")
    parser.add_argument("-p", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"))
    parser.add_argument("--eval-grid", action="store_true",
                        help="score the trained model with every map kind, smoothing and score")
    args = parser.parse_args()
    if args.table:
        print(markdown_table(Path(args.table)))
        return
    if not args.data_dir or not args.name:
        parser.error("--data-dir and --name are required to run an experiment")
    settings = {}
    for key, value in args.p:
        if key not in DEFAULTS:
            raise SystemExit(f"unknown setting {key!r}; known: {sorted(DEFAULTS)}")
        try:
            settings[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            settings[key] = value
    out = ROOT / "runs" / "experiments" / f"{Path(args.data_dir).name}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    for row in run(args.data_dir, settings, args.eval_grid):
        result = {"name": args.name, **row}
        with out.open("a") as handle:
            handle.write(json.dumps(result) + "\n")
        print(json.dumps(result))


if __name__ == "__main__":
    main()
