"""A finished run's candidates under both image-score rules, and its test split without one
defect type: read from the stored scores, nothing is trained or scored again.

Per candidate: the image score chosen on validation, the scale-adaptive peak's lead over the
own rule with its 90 % interval (stored by the run, or computed again where the run predates
it), and the test image AUROC under each rule, for the record (the test never chooses). The
own rule of a candidate that took the scale-adaptive peak is recomputed where the stored
scores allow it: the floor (the peak of its stored map after its score window: the maps
are stored at half precision, so within 4e-5 of the score, relative) and the blend (its
parts' standardised scores, exactly); AE-2's own score needs its image-resolution maps and is left
out. With ``--without TYPE``, the pooled test metrics of each candidate with and without
the images of that defect type. With ``--pixels``, where the test split has masks: each
candidate's pixel AUROC per defect type against the defect-free images' pixels (as the
report's per-type table) and within that type's images alone, with the type's share of the
defect pixels, and the pooled pixel AUROC with the defect-free images' pixels as the only
negatives: what separates the pooled figure from the per-type ones is then the unmarked
pixels of the defective images; the median map of those far from any defect against the
normals'; and the pooled pixel AUROC on validation and test of each map minus its own low
percentile. With ``--masks-again DATA_DIR``: each candidate's pooled pixel AUROC and AUPRO
with the stored test masks and with the dataset's masks resized again by the lab's current
:func:`~anomaly_utils.data.loading.resize_mask` (the maps are the stored ones).

Usage::

    python experiments/run_breakdown.py runs/<id>-real --without uneven
    python experiments/run_breakdown.py runs/<id>-real --pixels
    python experiments/run_breakdown.py runs/<id>-real --masks-again DATA_DIR
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

from anomaly_utils.data.images import read_mask
from anomaly_utils.data.layout import scan_dataset
from anomaly_utils.data.loading import resize_mask
from anomaly_utils.evaluation import metrics
from anomaly_utils.scoring.blend import Standardiser, combine
from anomaly_utils.scoring.candidates import BY_NAME, CANDIDATES
from anomaly_utils.scoring.image_score import (
    OWN,
    SCALE_ADAPTIVE,
    choose_image_score,
    read_choice,
    window_peaks,
)
from anomaly_utils.scoring.statistics_floor import StatisticsFloor
from anomaly_utils.scoring.stored import load_scores

SPLITS = ("val", "val_pseudo", "test")


def own_scores(run: Path, name: str, stored: dict) -> dict[str, np.ndarray] | None:
    """The candidate's own image scores per split, or None where the stored scores do not
    give them back."""
    if read_choice(run / name).rule == OWN:
        return {split: stored[split]["scores"] for split in SPLITS}
    if name == "floor":
        window = StatisticsFloor.load(run / name).score_window
        return {split: window_peaks(stored[split]["maps"], (window,))[:, 0] for split in SPLITS}
    if BY_NAME[name].parts:
        parts = {p: {split: load_scores(run / p / f"scores_{split}.npz") for split in SPLITS}
                 for p in BY_NAME[name].parts}
        standardisers = {p: Standardiser.of_normals(parts[p]["val"]) for p in parts}
        return {split: combine({p: (parts[p][split]["scores"], parts[p][split]["maps"])
                                for p in parts}, standardisers).scores for split in SPLITS}
    return None


def pooled(test: dict, keep: np.ndarray) -> list[float | None]:
    """Test image AUROC, pixel AUROC and AUPRO over the images ``keep``."""
    labels = test["labels"][keep]
    values = [metrics.image_auroc(labels, test["scores"][keep])]
    masked = keep & (test["has_mask"] | (test["labels"] == 0))
    if test["masks"][masked].any():
        values += [metrics.pixel_auroc(test["masks"][masked], test["maps"][masked]),
                   metrics.aupro(test["masks"][masked], test["maps"][masked])]
    return values


FAR = 48  # eval pixels from any marked pixel: "far" from the defect, beyond its halo
OFFSET_PERCENTILES = (5, 10, 25)


def _masked(scores: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Masks, maps and types of the images whose masks count: marked ones and the normals."""
    keep = scores["has_mask"] | (scores["labels"] == 0)
    return scores["masks"][keep], scores["maps"][keep], scores["types"][keep]


def pixel_rows(test: dict) -> list[str]:
    """Table rows (Markdown) of the ``--pixels`` breakdown of one candidate's test scores:
    per defect type, then the pooled figure with and without the defective images' unmarked
    pixels, then the median map of those unmarked pixels beyond :data:`FAR` eval pixels from
    any marked one against the normals' median."""
    masks, maps, types = _masked(test)
    normal = types == "good"
    rows = []
    for defect in sorted(set(types[~normal].tolist())):
        own = types == defect
        values = [metrics.pixel_auroc(masks[own | normal], maps[own | normal]),
                  metrics.pixel_auroc(masks[own], maps[own]),
                  masks[own].sum() / max(int(masks.sum()), 1)]
        rows.append(f"| {defect} | " + " | ".join(metrics.shown(v, 3) for v in values) + " |")
    counted = masks | normal[:, None, None]  # every pixel but the defective images' unmarked
    without = metrics.pixel_auroc(masks[counted][None, None], maps[counted][None, None])
    rows.append(f"| all, unmarked pixels of defective images left out | "
                f"{metrics.shown(without, 3)} | | |")
    rows.append(f"| all (the report's pooled figure) | "
                f"{metrics.shown(metrics.pixel_auroc(masks, maps), 3)} | | |")
    far = [maps[k][cv2.distanceTransform((~masks[k]).astype(np.uint8), cv2.DIST_L2, 5) > FAR]
           for k in np.flatnonzero(~normal & masks.any(axis=(1, 2)))]
    far = np.concatenate(far) if far else np.empty(0, np.float32)
    rows.append(f"| median map: unmarked pixels over {FAR} px from a defect / the normals | "
                f"{np.median(far) if far.size else float('nan'):.2f} / "
                f"{np.median(maps[normal]):.2f} | | |")
    return rows


def offset_rows(name: str, stored: dict) -> list[str]:
    """Pooled pixel AUROC on the pseudo-labelled validation set and the test of each map
    minus its own low percentile (:data:`OFFSET_PERCENTILES`): whether a tile's own level
    carries signal, and whether validation sees it."""
    cells = []
    for split in ("val_pseudo", "test"):
        masks, maps, _ = _masked(stored[split])
        maps = maps.astype(np.float32)
        cells.append([metrics.pixel_auroc(masks, maps)]
                     + [metrics.pixel_auroc(masks, maps - np.percentile(
                         maps, q, axis=(1, 2), keepdims=True)) for q in OFFSET_PERCENTILES])
    return [f"| {name} | {split} | " + " | ".join(metrics.shown(v, 3) for v in row) + " |"
            for split, row in zip(("validation", "test"), cells, strict=True)]


def masks_again(test: dict, data_dir: Path) -> np.ndarray:
    """The test masks of ``data_dir`` resized again to the stored masks' size, in the stored
    order: bool (N, M, M)."""
    index = scan_dataset(data_dir, allow_missing_masks=True)
    mask_of = {s.path.relative_to(index.root): s.mask_path for s in index.test}
    size = test["masks"].shape[-1]
    return np.stack([
        resize_mask(read_mask(mask_of[Path(str(path))]), size)
        if mask_of.get(Path(str(path))) is not None else np.zeros((size, size), bool)
        for path in test["paths"]])


def remasked_rows(run: Path, data_dir: Path) -> list[str]:
    """Per candidate: pooled pixel AUROC / AUPRO with the stored masks and with the masks
    resized again, and how many test masks differ."""
    rows = []
    for name in CANDIDATES:
        test = load_scores(run / name / "scores_test.npz")
        if test["masks"] is None or not test["masks"].any():
            continue
        fresh = masks_again(test, data_dir)
        keep = test["has_mask"]
        shown = [f"{metrics.shown(metrics.pixel_auroc(masks[keep], test['maps'][keep]), 4)} / "
                 f"{metrics.shown(metrics.aupro(masks[keep], test['maps'][keep]), 4)}"
                 for masks in (test["masks"], fresh)]
        differ = int((fresh != test["masks"]).any(axis=(1, 2)).sum())
        rows.append(f"| {name} | {shown[0]} | {shown[1]} | {differ} |")
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--without", help="a defect type left out of the pooled test metrics")
    parser.add_argument("--pixels", action="store_true",
                        help="pixel AUROC per defect type, with and without the normals")
    parser.add_argument("--masks-again", type=Path, metavar="DATA_DIR",
                        help="pixel metrics with the dataset's masks resized again")
    args = parser.parse_args(argv)
    print("| candidate | image score | lead, 90 % interval | test image AUROC, own | "
          "scale-adaptive |\n|---|---|---|---|---|")
    for name in CANDIDATES:
        stored = {split: load_scores(args.run / name / f"scores_{split}.npz") for split in SPLITS}
        choice = read_choice(args.run / name)
        own = own_scores(args.run, name, stored)
        if choice.lead is None and own is not None:  # a run made before leads were stored
            choice = replace(choice, lead=choose_image_score(
                stored["val"]["maps"], {**stored["val_pseudo"], "scores": own["val_pseudo"]}).lead)
        test = stored["test"]
        adaptive = (test["scores"] if choice.rule == SCALE_ADAPTIVE
                    else choice.peak.apply(test["maps"]))
        shown = [None if own is None else metrics.image_auroc(test["labels"], own["test"]),
                 metrics.image_auroc(test["labels"], adaptive)]
        print(f"| {name} | {choice.rule} | {choice.lead_text()} | "
              + " | ".join(metrics.shown(v, 3) for v in shown) + " |")
    if args.without:
        print(f"\n| candidate | test, all images | without {args.without} |\n|---|---|---|")
        for name in CANDIDATES:
            test = load_scores(args.run / name / "scores_test.npz")
            every = np.ones(len(test["labels"]), bool)
            rows = [pooled(test, keep) for keep in (every, test["types"] != args.without)]
            print(f"| {name} | " + " | ".join(" / ".join(metrics.shown(v, 3) for v in row)
                                              for row in rows) + " |")
    if args.pixels:
        offsets = []
        for name in CANDIDATES:
            stored = {split: load_scores(args.run / name / f"scores_{split}.npz")
                      for split in ("val_pseudo", "test")}
            if stored["test"]["masks"] is None or not stored["test"]["masks"].any():
                print(f"\n{name}: the test split has no masks")
                continue
            print(f"\n| {name}: defect type | pixel AUROC with the normals | within its images | "
                  "share of defect pixels |\n|---|---|---|---|")
            print("\n".join(pixel_rows(stored["test"])))
            offsets += offset_rows(name, stored)
        if offsets:
            print("\n| candidate | split | pixel AUROC | "
                  + " | ".join(f"minus each map's {q}th percentile" for q in OFFSET_PERCENTILES)
                  + " |\n|---|---|" + "---|" * (1 + len(OFFSET_PERCENTILES)))
            print("\n".join(offsets))
    if args.masks_again:
        print("\n| candidate | pixel AUROC / AUPRO, stored masks | masks resized again | "
              "masks that differ |\n|---|---|---|---|")
        print("\n".join(remasked_rows(args.run, args.masks_again)))


if __name__ == "__main__":
    main()
