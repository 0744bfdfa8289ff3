"""Scoring ideas measured on a finished run's AE-2, on validation data first.

* **Low-pass colour error** (``--probe lowpass``): ``|G_s * (x - x_hat)|``, the error of the
  Gaussian-blurred *signed* difference (mean over channels,
  :func:`anomaly_utils.scoring.lowpass_error_map`), added to the run's map. Since session 7
  the carpet default's map contains it (weight 1, sigma 2); the probe measured the choice. The
  weave of a texture is reconstructed slightly out of phase, a residual that averages out
  under the blur, while a shift of colour or brightness does not; the question is whether
  this finds the carpet's colour defects that the run's map misses.
* **Shift test-time augmentation** (``--probe shifts``): reconstruct reflect-padded copies of
  each image shifted by ``(dy, dx)`` in {-s, 0, s}^2, shift each map back, average (each
  pixel over the copies that saw it). Costs 9 reconstructions; a cheap substitute for an
  ensemble if the model's errors depend on where the texture falls on its grid.
* **Border padding** (``--probe pad``): reflect-pad each image by 8, 16 or 32 px before it
  is reconstructed, mapped and smoothed, and crop the map back
  (:attr:`anomaly_utils.experiment.ScoringConfig.pad`). Normal images' peaks sit on the
  border far more often than their share of the pixels, because border pixels are covered
  by fewer windows and compared and smoothed against a mirrored, not a real, neighbourhood
  (on the carpet, 6 of the 24 validation normals peak within 2 px of the border).
* **How an ensemble combines** (``--probe combine``, runs with ``ensemble_size`` > 1): the
  map of the members' mean reconstruction (what :class:`anomaly_utils.experiment.Scorer`
  does since this probe) against the mean of the members' maps (what it did before).

Every other probe starts from the maps the lab's Scorer makes.
``--model-dir`` probes another ensemble (e.g. one ``ae2_experiments`` trained with another
seed, kept under ``runs/experiments/work/``) with the run's scoring settings; its
``config.json`` gives the seed that draws its validation split.

Both use the run's map kind, smoothing, per-pixel normalisation (refitted on the same 200
training images with the probe applied) and score, and the larger validation set of
``benchmarks.ae2_experiments`` (three copies of the validation normals, pseudo-anomalies
seeded with seed + 1). The test columns are for the report only.

Usage::

    python -m benchmarks.scoring_probes --run-dir runs/ID --data-dir DIR --probe lowpass
    python -m benchmarks.scoring_probes --run-dir runs/ID --data-dir DIR --probe shifts
    python -m benchmarks.scoring_probes --run-dir runs/ID --data-dir DIR --probe pad
    python -m benchmarks.scoring_probes --run-dir runs/ID --data-dir DIR --probe combine \
        [--model-dir runs/experiments/work/NS]

Prints one line per setting and appends it to ``runs/experiments/probes_<dataset>.jsonl``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from benchmarks.common import (
    ROOT,
    append_jsonl,
    pasted_validation_set,
    validation_and_test_metrics,
)

LOWPASS_SIGMAS = (1.0, 2.0, 4.0, 8.0)
LOWPASS_WEIGHTS = ("equal", 1.0)  # equal: all components 1/n; 1.0: added to the run's map
SHIFTS = (2, 4)
PADS = (8, 16, 32)


def shifted_maps(scorer, images: np.ndarray, shift: int) -> np.ndarray:
    """Maps (N, H, W) of ``images`` (N, H, W, C) uint8 by ``scorer`` (unsmoothed and not
    normalised), averaged over the nine reflect-padded shifts by {-shift, 0, shift} in each
    axis."""
    n, size = len(images), images.shape[1]
    padded = np.pad(images, ((0, 0), (shift, shift), (shift, shift), (0, 0)), mode="reflect")
    total = np.zeros((n, size, size), np.float32)
    count = np.zeros((size, size), np.float32)
    for dy in (-shift, 0, shift):
        for dx in (-shift, 0, shift):
            crop = padded[:, shift + dy:shift + dy + size, shift + dx:shift + dx + size]
            m = scorer.reconstruct_with_maps(crop)[1]
            # crop pixel (i, j) is image pixel (i + dy, j + dx)
            rows = slice(max(0, dy), size + min(0, dy))
            cols = slice(max(0, dx), size + min(0, dx))
            total[:, rows, cols] += m[:, max(0, -dy):size - max(0, dy),
                                      max(0, -dx):size - max(0, dx)]
            count[rows, cols] += 1
    return total / count


def probe(run_dir: Path, data_dir: str, which: str, model_dir: Path | None = None,
          ) -> list[dict]:
    import dataclasses

    from scipy import ndimage

    from anomaly_utils import data, scoring
    from anomaly_utils.artifacts import read_json
    from anomaly_utils.experiment import (
        Scorer,
        ScoringConfig,
        load_members,
        normal_error_stats,
        training_sample,
    )

    params = read_json(run_dir / "params.json")["notebooks"]["03_train_ae2"]
    seed = params["seed"]
    c = ScoringConfig(**read_json(run_dir / "ae2" / "scoring.json"))
    if model_dir is None:
        model_dir = run_dir / "ae2"
    else:
        seed = read_json(model_dir / "config.json")["training"]["seed"]
    members = load_members(model_dir, c.ensemble_size)
    # maps before smoothing and normalisation, which evaluate() applies to every probe alike
    raw_scorer = Scorer(members, dataclasses.replace(c, smooth_sigma=0.0, normalize=False))
    ds = data.load_dataset(data_dir, image_size=c.image_size, color_mode=c.color_mode,
                           val_fraction=params["val_fraction"], seed=seed,
                           mask_size=c.eval_size)
    images, labels, val_masks, _ = pasted_validation_set(ds.val_images, 3, seed + 1,
                                                         c.eval_size)
    splits = {"val": images, "test": ds.test_images,
              "norm": training_sample(ds.train_images, 200, seed)}

    def smooth(m: np.ndarray) -> np.ndarray:
        if c.smooth_sigma <= 0:
            return m
        return ndimage.gaussian_filter(m, (0, c.smooth_sigma, c.smooth_sigma), mode="reflect")

    def evaluate(setting: dict, raw: dict[str, np.ndarray], smoothed: bool = False) -> dict:
        maps = raw if smoothed else {name: smooth(m) for name, m in raw.items()}
        mean, std = normal_error_stats(maps["norm"])
        out = {}
        for name in ("val", "test"):
            m = (maps[name] - mean) / std if c.normalize else maps[name]
            out[name] = (scoring.image_scores(m, method=c.score_method,
                                              topk_percent=c.topk_percent),
                         scoring.resize_maps(m, c.eval_size))
        row = {"run": run_dir.name, "model_dir": str(model_dir), "seed": seed, "probe": which,
               **setting,
               **validation_and_test_metrics(labels, out["val"][0], val_masks, out["val"][1],
                                             ds, *out["test"])}
        print(json.dumps(row), flush=True)
        return row

    floats = {name: x.astype(np.float32) / 255.0 for name, x in splits.items()}
    base = {name: raw_scorer.reconstruct_with_maps(x)[1] for name, x in splits.items()}
    rows = [evaluate({"setting": f"the lab's map ({c.map_kind}, {len(members)} model(s))"},
                     base)]
    if which == "combine":
        single = dataclasses.replace(raw_scorer.config, ensemble_size=1)
        rows.append(evaluate({"setting": "mean of the members' maps"},
                             {name: np.mean([Scorer(m, single).reconstruct_with_maps(x)[1]
                                             for m in members], axis=0)
                              for name, x in splits.items()}))
    elif which == "lowpass":
        parts = len(scoring.map_components(c.map_kind))
        single = dataclasses.replace(raw_scorer.config, ensemble_size=1)
        recons = {name: [Scorer(m, single).reconstruct(x) for m in members]
                  for name, x in splits.items()}
        for sigma in LOWPASS_SIGMAS:
            low = {name: np.mean([scoring.lowpass_error_map(floats[name], r, sigma)
                                  for r in recons[name]], axis=0)
                   for name in splits}
            rows.append(evaluate({"setting": f"lowpass σ={sigma:g} alone"}, low))
            for weight in LOWPASS_WEIGHTS:
                # the run's map is an equal blend of its parts, each weighted 1/parts
                if weight == "equal":
                    mixed = {name: (base[name] * parts + low[name]) / (parts + 1)
                             for name in splits}
                else:
                    mixed = {name: base[name] + weight * low[name] for name in splits}
                rows.append(evaluate({"setting": f"{c.map_kind} + lowpass σ={sigma:g}, "
                                                 f"weight {weight}"}, mixed))
    elif which == "pad":
        for pad in PADS:
            padded = Scorer(members, dataclasses.replace(c, normalize=False, pad=pad))
            rows.append(evaluate({"setting": f"reflect-padded by {pad} px"},
                                 {name: padded.reconstruct_with_maps(x)[1]
                                  for name, x in splits.items()}, smoothed=True))
    else:
        for shift in SHIFTS:
            rows.append(evaluate({"setting": f"9 shifts of ±{shift} px"},
                                 {name: shifted_maps(raw_scorer, x, shift)
                                  for name, x in splits.items()}))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", required=True, type=Path)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--probe", required=True,
                        choices=("lowpass", "shifts", "combine", "pad"))
    parser.add_argument("--model-dir", type=Path, default=None,
                        help="an ensemble's folder (model.keras, member<k>/) to probe instead "
                             "of the run's, with the run's scoring settings")
    args = parser.parse_args()
    rows = probe(args.run_dir, args.data_dir, args.probe, args.model_dir)
    append_jsonl(ROOT / "runs" / "experiments" / f"probes_{Path(args.data_dir).name}.jsonl",
                 rows)
    print("| setting | val image | val pixel | mean | test image | test pixel | test AUPRO |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['setting']} | {r['val_image_auroc']:.3f} | {r['val_pixel_auroc']:.3f} | "
              f"{(r['val_image_auroc'] + r['val_pixel_auroc']) / 2:.3f} | "
              f"{r['test_image_auroc']:.3f} | {r['test_pixel_auroc']:.3f} | "
              f"{r['test_aupro']:.3f} |")


if __name__ == "__main__":
    main()
