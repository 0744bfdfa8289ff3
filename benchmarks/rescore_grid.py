"""Choose how a trained run's model is scored, on validation data only.

Reconstructs once, then scores with every map kind, smoothing, score aggregation and
per-pixel normalisation in a grid. For each setting it reports the image and pixel AUROC on
the run's pseudo-labelled validation set (the held-out normals, half with pasted synthetic
anomalies, as ``score_splits`` builds it; ``--val-copies 3 --val-seed 1`` builds the larger
set of ``benchmarks.ae2_experiments`` instead) and, for the final report only, on the test set.

The per-pixel normalisation statistics are fitted on a seeded sample of *training* images,
never on the validation normals they are judged with.

Usage::

    python -m benchmarks.rescore_grid --run-dir runs/ID --data-dir DIR [--model ae2]

Appends one JSON line per setting to ``runs/experiments/rescore_<dataset>.jsonl`` and prints a
markdown table sorted by validation image AUROC.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from benchmarks.common import (
    ROOT,
    append_jsonl,
    pasted_validation_set,
    validation_and_test_metrics,
)

MAP_KINDS = ("l2", "l1", "ssim", "ssim+l1")
SIGMAS = (2.0, 4.0, 8.0)
METHODS = ("max", "topk")


def rescore(run_dir: Path, data_dir: str, model: str, norm_images: int, val_copies: int = 1,
            val_seed: int | None = None, kinds: tuple[str, ...] = MAP_KINDS,
            sigmas: tuple[float, ...] = SIGMAS, model_file: Path | None = None,
            val_kinds: tuple[str, ...] | None = None) -> list[dict]:
    """``model_file``: score this model (e.g. one ``ae2_experiments`` trained with another
    seed) in place of the run's own, with the run's scoring settings and the model's
    training seed (which also draws the validation split). ``val_kinds``: the pasted
    anomaly kinds (default: the lab's mix, ``pseudo_anomalies.PSEUDO_ANOMALY_KINDS``)."""
    from anomaly_utils import data, pseudo_anomalies, scoring
    from anomaly_utils.artifacts import read_json
    from anomaly_utils.experiment import (
        Scorer,
        ScoringConfig,
        load_members,
        normal_error_stats,
        training_sample,
    )

    notebook = "02_train_ae1" if model == "ae1" else "03_train_ae2"
    params = read_json(run_dir / "params.json")["notebooks"][notebook]
    seed = params["seed"]
    if model_file is None:
        scorer = Scorer.load(run_dir, model)
    else:  # the run's scoring settings only: its own model is never loaded
        config = ScoringConfig(**read_json(run_dir / model / "scoring.json"))
        scorer = Scorer(load_members(model_file.parent, config.ensemble_size), config)
        seed = read_json(model_file.parent / "config.json")["training"]["seed"]
    c = scorer.config
    ds = data.load_dataset(data_dir, image_size=c.image_size, color_mode=c.color_mode,
                           val_fraction=params["val_fraction"], seed=seed,
                           mask_size=c.eval_size)
    val_kinds = val_kinds or pseudo_anomalies.PSEUDO_ANOMALY_KINDS
    images, labels, val_masks, _ = pasted_validation_set(
        ds.val_images, val_copies, seed if val_seed is None else val_seed, c.eval_size, val_kinds)
    norm = training_sample(ds.train_images, norm_images, seed)

    start = time.perf_counter()
    splits = {name: (x.astype(np.float32) / 255.0, scorer.reconstruct(x))
              for name, x in (("val", images), ("test", ds.test_images), ("norm", norm))}
    print(f"reconstructed in {time.perf_counter() - start:.0f} s", flush=True)

    rows = []
    for kind in kinds:
        for sigma in sigmas:
            maps = {name: scoring.anomaly_map(x, r, kind=kind, smooth_sigma=sigma)
                    for name, (x, r) in splits.items()}
            mean, std = normal_error_stats(maps["norm"])
            for normalize in (False, True):
                for method in METHODS:
                    out = {}
                    for split in ("val", "test"):
                        m = (maps[split] - mean) / std if normalize else maps[split]
                        out[split] = (scoring.image_scores(m, method=method),
                                      scoring.resize_maps(m, c.eval_size))
                    rows.append({
                        "run": run_dir.name, "model": model, "val_copies": val_copies,
                        "model_file": None if model_file is None else str(model_file),
                        "seed": seed,
                        "val_seed": seed if val_seed is None else val_seed,
                        "val_kinds": list(val_kinds), "map_kind": kind,
                        "smooth_sigma": sigma, "normalize": normalize, "score_method": method,
                        **validation_and_test_metrics(labels, out["val"][0], val_masks,
                                                      out["val"][1], ds, *out["test"]),
                    })
                    print(json.dumps(rows[-1]), flush=True)
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| map | σ | normalised | score | val image | val pixel | test image | test pixel "
             "| test AUPRO |", "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: -r["val_image_auroc"]):
        lines.append(f"| {r['map_kind']} | {r['smooth_sigma']:g} | {r['normalize']} | "
                     f"{r['score_method']} | {r['val_image_auroc']:.3f} | "
                     f"{r['val_pixel_auroc']:.3f} | {r['test_image_auroc']:.3f} | "
                     f"{r['test_pixel_auroc']:.3f} | {r['test_aupro']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", required=True, type=Path)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--model", default="ae2", choices=("ae1", "ae2"))
    parser.add_argument("--norm-images", type=int, default=200,
                        help="training images sampled to fit the per-pixel normalisation")
    parser.add_argument("--val-copies", type=int, default=1,
                        help="copies of the validation normals to paste anomalies into (the "
                             "run's own pseudo-labelled set: 1; ae2_experiments uses 3)")
    parser.add_argument("--val-seed", type=int, default=None,
                        help="seed of the pasted anomalies (default: the run's seed, as the "
                             "run's own set; ae2_experiments uses seed + 1)")
    parser.add_argument("--kinds", nargs="+", default=MAP_KINDS,
                        help="map kinds to try (scoring.anomaly_map's kind), e.g. gms ssim+l1")
    parser.add_argument("--sigmas", nargs="+", type=float, default=SIGMAS,
                        help="smoothing sigmas to try, in pixels of the model's image size")
    parser.add_argument("--model-file", type=Path, default=None,
                        help="a model.keras to score instead of the run's (its config.json "
                             "next to it gives the training seed, which draws the split; for "
                             "an ensemble run, the members in member<k>/ beside it too)")
    parser.add_argument("--val-kinds", nargs="+", default=None,
                        help="pasted anomaly kinds of the validation set (default: the lab's "
                             "mix cut_paste stain scratch; 'shading' adds wide bands)")
    args = parser.parse_args()
    rows = rescore(args.run_dir, args.data_dir, args.model, args.norm_images, args.val_copies,
                   args.val_seed, tuple(args.kinds), tuple(args.sigmas), args.model_file,
                   tuple(args.val_kinds) if args.val_kinds else None)
    append_jsonl(ROOT / "runs" / "experiments" / f"rescore_{Path(args.data_dir).name}.jsonl",
                 rows)
    print(markdown(rows))


if __name__ == "__main__":
    main()
