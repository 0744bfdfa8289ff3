"""Does averaging AE-2's maps over flipped copies of each image help? On one finished run.

Test-time flip averaging: each image is scored as it is and flipped (left-right, up-down,
both; with ``--turns`` also transposed), every map is flipped back, and the maps are averaged;
the image score is the peak of the averaged map after the head's mean filter, as for one map.
The blend with the floor is rebuilt from the averaged scores, standardised on the clean
validation normals as notebook 04 does. Everything is judged on the run's pseudo-labelled
validation set (selection score) and, for the record, on the test split.

Usage: ``python experiments/flip_averaging.py runs/<id> [--turns]``; prints one row per
variant and writes ``runs/<id>/flip_averaging.json``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from anomaly_utils.artifacts import read_json, write_json
from anomaly_utils.data.loading import load_run_dataset
from anomaly_utils.evaluation import metrics
from anomaly_utils.evaluation.selection import selection_score
from anomaly_utils.scoring.blend import Standardiser, combine
from anomaly_utils.scoring.head_maps import peak_of_mean_filtered
from anomaly_utils.scoring.scorer import Scorer
from anomaly_utils.scoring.stored import load_scores
from anomaly_utils.scoring.validation_set import shared_validation

FLIPS = {"identity": lambda a: a,
         "left-right": lambda a: a[:, :, ::-1],
         "up-down": lambda a: a[:, ::-1],
         "both": lambda a: a[:, ::-1, ::-1]}
TURNS = {"transpose": lambda a: np.swapaxes(a, 1, 2),
         "anti-transpose": lambda a: np.swapaxes(a[:, ::-1, ::-1], 1, 2)}
VARIANTS = {"one map": ["identity"], "left-right": ["identity", "left-right"],
            "four flips": list(FLIPS)}


def averaged_maps(scorer: Scorer, images: np.ndarray, names: list[str],
                  cache: dict) -> np.ndarray:
    """(N, E, E) float32: the mean over ``names`` of the maps of the transformed images,
    each transformed back (every transform here is its own inverse)."""
    transforms = {**FLIPS, **TURNS}
    maps = []
    for name in names:
        if name not in cache:
            f = transforms[name]
            cache[name] = f(scorer.score(np.ascontiguousarray(f(images))).maps)
        maps.append(cache[name])
    return np.mean(maps, axis=0, dtype=np.float32)


def measured(split: dict, scores: np.ndarray, maps: np.ndarray) -> dict:
    has = np.asarray(split["has_mask"], bool) | (np.asarray(split["labels"]) == 0)
    masks = np.asarray(split["masks"], bool)
    pixel = (metrics.pixel_auroc(masks[has], maps[has]) if masks[has].any() else None)
    return {"image_auroc": metrics.image_auroc(split["labels"], scores), "pixel_auroc": pixel,
            "aupro": metrics.aupro(masks[has], maps[has]) if pixel is not None else None}


def main(run_dir: Path, turns: bool) -> dict:
    params = read_json(run_dir / "params.json")["notebooks"]["03_train_ae2"]
    scorer = Scorer.load(run_dir, "ae2")
    if not scorer.heads:
        raise SystemExit(f"{run_dir}: AE-2 was trained without a head")
    ds = load_run_dataset(params)
    pseudo = shared_validation(run_dir, ds, params["seed"], params["eval_size"])
    images = {"val": ds.val_images, "val_pseudo": pseudo.images, "test": ds.test_images}
    stored = {s: load_scores(run_dir / "ae2" / f"scores_{s}.npz") for s in images}
    floor = {s: load_scores(run_dir / "floor" / f"scores_{s}.npz") for s in images}
    variants = dict(VARIANTS)
    if turns:
        variants["eight (flips and turns)"] = [*FLIPS, *TURNS]
    caches = {s: {} for s in images}
    window = params.get("head_score_window", 0.08)
    result = {}
    for variant, names in variants.items():
        scored = {}
        for split, batch in images.items():
            maps = averaged_maps(scorer, batch, names, caches[split])
            scored[split] = (peak_of_mean_filtered(maps, window), maps)
        standardisers = {"floor": Standardiser.of_normals(floor["val"]),
                         "ae2": Standardiser.of_normals({"scores": scored["val"][0],
                                                         "maps": scored["val"][1]})}
        for candidate in ("ae2", "floor+ae2"):
            row = {}
            for split in ("val_pseudo", "test"):
                scores, maps = scored[split]
                if candidate != "ae2":
                    blended = combine({"floor": (floor[split]["scores"], floor[split]["maps"]),
                                       "ae2": (scores, maps)}, standardisers)
                    scores, maps = blended.scores, blended.maps
                row[split] = measured(stored[split], scores, maps)
            row["selection"] = selection_score(row["val_pseudo"])
            result[f"{candidate}, {variant}"] = row
    print(f"{'candidate, variant':36s} val selection (image / pixel) | test image / pixel / AUPRO")
    for name, row in result.items():
        v, t = row["val_pseudo"], row["test"]
        print(f"{name:36s} {row['selection']:.3f} ({metrics.shown(v['image_auroc'], 3)} / "
              f"{metrics.shown(v['pixel_auroc'], 3)}) | {metrics.shown(t['image_auroc'], 3)} / "
              f"{metrics.shown(t['pixel_auroc'], 3)} / {metrics.shown(t['aupro'], 3)}")
    write_json(run_dir / "flip_averaging.json", result)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--turns", action="store_true",
                        help="also transpose (for square textures with no direction)")
    args = parser.parse_args()
    main(args.run, args.turns)
