"""Does the pseudo-labelled validation set rank candidates the way the test set does?

A validation set can only choose if the candidate it ranks first is also good on the real
defects. For each development set this script scores a grid of candidates, the statistics
floor's variants and settings (cheap, so the grid can be wide enough to rank), plus, with
``--runs``, the floor / AE-1 / AE-2 of finished lab runs, on two validation sets built from
the same held-out normals:

- ``sharp``: the old mix of small sharp pastes (``SHARP_KINDS``: cut_paste, stain, scratch);
- ``mix``: the lab's validation mix (``VALIDATION_MIX``: those, shading and the real-like
  kinds faint_area, crack, local_blur, texture_warp, dark_region), half the normals with one;
- ``balanced``: the set a run now builds (``make_balanced_validation``): every normal clean,
  and twice as many anomalous copies, an equal number of each kind of the mix.

Per set and mix it prints Spearman's rank correlation between the validation selection score
(mean of validation image and pixel AUROC, as the lab chooses) and the test image AUROC
(and, where the test set has masks, the test pixel AUROC), whether the validation's first
choice is the test's best, and the test image AUROC lost by following validation (regret).

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python experiments/rank_agreement.py \\
        [--sets carpet magnetic_tile elpv_mono elpv_poly] [--image-size 128] \\
        [--runs runs/quality-elpv_mono-... ...] [--out runs/rank_agreement.json] \\
        [--val-split items]
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from anomaly_utils.artifacts import read_json
from anomaly_utils.data.loading import VAL_SPLITS, load_dataset, resize_mask
from anomaly_utils.data.pseudo_anomalies import (
    SHARP_KINDS,
    VALIDATION_MIX,
    make_balanced_validation,
    make_labelled_validation,
)
from anomaly_utils.evaluation import metrics
from anomaly_utils.evaluation.selection import selection_score, validation_metrics
from anomaly_utils.scoring.statistics_floor import FLOOR_VARIANTS, StatisticsFloor
from anomaly_utils.scoring.stored import CANDIDATES, load_scores

ROOT = Path(__file__).resolve().parents[1]
SETS = {"carpet": (ROOT / "data" / "synthetic_carpet", False),
        "magnetic_tile": (ROOT.parent / "shared" / "datasets" / "magnetic_tile", False),
        "elpv_mono": (ROOT / "data" / "elpv" / "mono", True),
        "elpv_poly": (ROOT / "data" / "elpv" / "poly", True),
        # magnetic_tile split tile by tile (experiments/unseen_tiles.py build).
        "magnetic_tile_unseen": (ROOT / "data" / "mt_unseen_tiles", False)}
MIXES = {"sharp": (make_labelled_validation, SHARP_KINDS),
         "mix": (make_labelled_validation, VALIDATION_MIX),
         "balanced": (make_balanced_validation, VALIDATION_MIX)}
GRID = {"variant": FLOOR_VARIANTS, "windows": ((3, 7, 15), (7, 15, 31)),
        "smooth_sigma": (0.0, 4.0), "normalize": (True, False)}


def floor_grid() -> list[dict]:
    """Every combination of :data:`GRID`: the floor configurations ranked."""
    return [dict(zip(GRID, values, strict=True)) for values in itertools.product(*GRID.values())]


def name_of(config: dict) -> str:
    return (f"floor {config['variant']} w{'-'.join(map(str, config['windows']))} "
            f"s{config['smooth_sigma']:g}{'' if config['normalize'] else ' raw'}")


def pseudo_sets(val_images: np.ndarray, eval_size: int, seed: int) -> dict[str, tuple]:
    """Each mix's (images, labels, masks at eval_size) from the same validation normals."""
    out = {}
    for mix, (make, kinds) in MIXES.items():
        images, labels, masks, _ = make(val_images, seed, kinds=kinds)
        out[mix] = (images, labels, np.stack([resize_mask(m, eval_size) for m in masks]))
    return out


def test_metrics(ds, scores: np.ndarray, maps: np.ndarray) -> dict[str, float | None]:
    has = ds.test_has_mask
    return {"image_auroc": metrics.image_auroc(ds.test_labels, scores),
            "pixel_auroc": metrics.pixel_auroc(ds.test_masks[has], maps[has])
            if has.any() and ds.test_masks[has].any() else None}


def floor_rows(ds, sets: dict, eval_size: int) -> list[dict]:
    rows = []
    for config in floor_grid():
        floor = StatisticsFloor(eval_size=eval_size, **config).fit(ds.train_images)
        row = {"candidate": name_of(config)}
        for mix, (images, labels, masks) in sets.items():
            result = floor.score(images)
            row[mix] = selection_score(validation_metrics(
                {"labels": labels, "scores": result.scores, "masks": masks,
                 "maps": result.maps}))
        test = floor.score(ds.test_images)
        row.update({f"test_{k}": v for k, v in test_metrics(ds, test.scores, test.maps).items()})
        rows.append(row)
    return rows


def run_rows(run_dir: Path, sets: dict) -> list[dict]:
    """The candidates of a finished run: validation from its stored mix, test from metrics.json.
    The stored validation is the lab's mix; the sharp mix is not stored, so it stays None."""
    report = read_json(run_dir / "metrics.json")
    rows = []
    for name in CANDIDATES:
        if name not in report:
            continue
        val = load_scores(run_dir / name / "scores_val_pseudo.npz")
        rows.append({"candidate": f"{run_dir.name}:{name}", "sharp": None, "balanced": None,
                     "mix": selection_score(validation_metrics(val)),
                     "test_image_auroc": report[name]["image_auroc"],
                     "test_pixel_auroc": report[name].get("pixel_auroc")})
    return rows


def agreement(rows: list[dict], mix: str, test_key: str) -> dict:
    """Spearman's rho of validation against test, top-1 agreement and the test regret."""
    pairs = [(r[mix], r[test_key]) for r in rows if r[mix] is not None and r[test_key] is not None]
    if len(pairs) < 3:
        return {"n": len(pairs), "rho": None, "top1": None, "regret": None}
    val, test = map(np.asarray, zip(*pairs, strict=True))
    rho = float(spearmanr(val, test).statistic)
    chosen = int(np.argmax(val))
    return {"n": len(pairs), "rho": rho, "top1": bool(test[chosen] == test.max()),
            "regret": float(test.max() - test[chosen])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--eval-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val-split", default="images", choices=VAL_SPLITS,
                        help="how the validation normals are drawn (load_dataset's val_split)")
    parser.add_argument("--runs", nargs="*", default=[], help="finished runs, matched to a set "
                        "by their data_dir")
    parser.add_argument("--out", default=str(ROOT / "runs" / "rank_agreement.json"))
    args = parser.parse_args()
    report = {}
    for name in args.sets:
        folder, image_labels_only = SETS[name]
        if not folder.is_dir():
            print(f"skipped {name}: {folder} is absent")
            continue
        start = time.perf_counter()
        ds = load_dataset(folder, image_size=args.image_size, color_mode="auto",
                          val_fraction=0.1, seed=args.seed, mask_size=args.eval_size,
                          allow_missing_masks=image_labels_only, val_split=args.val_split)
        sets = pseudo_sets(ds.val_images, args.eval_size, args.seed)
        rows = floor_rows(ds, sets, args.eval_size)
        for run in map(Path, args.runs):
            params = read_json(run / "params.json")
            if Path(params["notebooks"]["01_data_exploration"]["data_dir"]).resolve() == \
                    folder.resolve():
                rows += run_rows(run, sets)
        result = {"rows": rows, "seconds": time.perf_counter() - start}
        for mix in MIXES:
            for test_key in ("test_image_auroc", "test_pixel_auroc"):
                result[f"{mix}/{test_key}"] = agreement(rows, mix, test_key)
        report[name] = result
        print(f"\n{name} ({len(rows)} candidates, {result['seconds']:.0f} s)")
        print(f"  {'validation':<11}{'test metric':<18}{'n':>4}{'rho':>8}{'top-1':>8}{'regret':>8}")
        for mix in MIXES:
            for test_key in ("test_image_auroc", "test_pixel_auroc"):
                a = result[f"{mix}/{test_key}"]
                if a["rho"] is None:
                    continue
                print(f"  {mix:<11}{test_key[5:]:<18}{a['n']:>4}{a['rho']:>8.2f}"
                      f"{str(a['top1']):>8}{a['regret']:>8.3f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1, default=float) + "\n")
    print(f"\nwritten: {args.out}")


if __name__ == "__main__":
    main()
