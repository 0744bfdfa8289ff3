"""Would a second AE-2 (and head) trained with another seed, averaged with the first, help?

Trains AE-2 and its segmentation head once more with the settings notebook 03 of a finished
run used, on the same split (the run's ``seed``), with weights and crops seeded ``--seed``,
and scores it into ``OUT/ae2/`` as notebook 03 would. Then compares, on the run's
pseudo-labelled validation set and, for the record, the test split: the run's AE-2 (seed 0),
the new one, and the mean of their head maps (image score: the head's peak of the mean map),
each alone and blended with the run's floor as notebook 04 blends, each under the image
score its validation prefers (:mod:`anomaly_utils.scoring.image_score`).

Usage::

    python experiments/second_seed.py runs/mt-e2e-real runs/mt-seed1    # 12-15 min on 2 cores
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from anomaly_utils.artifacts import read_json
from anomaly_utils.data.images import channels_for
from anomaly_utils.data.loading import load_run_dataset
from anomaly_utils.evaluation import metrics
from anomaly_utils.evaluation.selection import selection_score, validation_metrics
from anomaly_utils.models.ae2 import build_ae2
from anomaly_utils.models.losses import make_ae2_loss
from anomaly_utils.models.segmentation_head import build_segmentation_head
from anomaly_utils.scoring.blend import SPLITS, Standardiser, combine
from anomaly_utils.scoring.head_maps import peak_of_mean_filtered
from anomaly_utils.scoring.image_score import choose_image_score
from anomaly_utils.scoring.scorer import HEAD_DIR, Scorer, ScoringConfig, training_sample
from anomaly_utils.scoring.stored import load_scores, score_splits
from anomaly_utils.seeding import set_global_seed
from anomaly_utils.training.collapse import fit_until_learned
from anomaly_utils.training.datasets import patch_dataset, val_patch_dataset
from anomaly_utils.training.head import fit_segmentation_head


def train_member(run_dir: Path, out: Path, seed: int) -> None:
    """AE-2 and its head as the run's notebook 03 trained them, weights and crops seeded
    ``seed``, the split the run's own; scored into ``out``."""
    p = read_json(run_dir / "params.json")["notebooks"]["03_train_ae2"]
    if p["head"] != "segmentation" or p["bottleneck"] == "unet":
        raise SystemExit(f"{run_dir}: AE-2 has no segmentation head to train again")
    set_global_seed(seed)
    ds = load_run_dataset(p)
    channels = channels_for(ds.color_mode)
    loss = make_ae2_loss(ssim_weight=p["ssim_weight"], l1_weight=p["l1_weight"],
                         gms_weight=p["gms_weight"])
    corrupt_mode = "rectangle" if p["corrupt_mode"] == "auto" else p["corrupt_mode"]
    fit = fit_until_learned(
        lambda: build_ae2(patch_size=p["patch_size"], channels=channels,
                          latent_dim=p["latent_dim"], bottleneck=p["bottleneck"], seed=seed),
        patch_dataset(ds.train_images, p["patch_size"], p["patches_per_epoch"],
                      p["batch_size"], seed=seed, augment=p["augment"], corrupt=p["corrupt"],
                      corrupt_mode=corrupt_mode),
        val_patch_dataset(ds.val_images, p["patch_size"], batch_size=p["batch_size"],
                          seed=seed),
        out / "ae2", learning_rate=p["learning_rate"], retries=p["collapse_retries"],
        epochs=p["epochs"], seed=seed, loss=loss,
        early_stopping_patience=p["early_stopping_patience"] or None, verbose=0)
    head = fit_segmentation_head(
        fit["model"], build_segmentation_head(channels, p["head_widths"], seed=seed),
        ds.train_images, out / "ae2" / HEAD_DIR, patch_size=p["patch_size"],
        epochs=p["head_epochs"], patches_per_epoch=p["head_patches_per_epoch"],
        batch_size=p["batch_size"], learning_rate=p["head_learning_rate"], seed=seed,
        training=p["head_training"], focal_gamma=p["focal_gamma"], augment=p["augment"],
        reconstruction_loss=loss,
        anomaly_options={"fills": p["anomaly_fills"], "opacity": p["anomaly_opacity"],
                         "clean_fraction": p["anomaly_clean_fraction"]})
    scorer = Scorer([head["reconstructor"]], ScoringConfig(
        model="ae2", image_size=p["image_size"], color_mode=ds.color_mode,
        map_kind=p["map_kind"], score_method=p["score_method"],
        topk_percent=p["topk_percent"], eval_size=p["eval_size"],
        smooth_sigma=p["smooth_sigma"], patch_size=p["patch_size"], stride=p["stride"],
        seed=p["seed"], normalize=p["normalize_maps"], batch_size=p["batch_size"],
        pad=p["pad"], head="segmentation", head_score_window=p["head_score_window"]),
        head=head["head"])
    if p["normalize_maps"]:
        scorer.fit_normalization(training_sample(ds.train_images, 200, p["seed"]))
    scorer.save_config(out)
    score_splits(scorer, ds, out, p["seed"])


def adapted(labelled: dict, result: dict) -> dict:
    """``result`` ({split: (scores, maps)}) with the image score its validation set prefers,
    as ``score_splits`` and the blend store it."""
    choice = choose_image_score(result["val"][1], {**labelled["val_pseudo"],
                                                   "scores": result["val_pseudo"][0],
                                                   "maps": result["val_pseudo"][1]})
    return {s: (choice.scores(*r), r[1]) for s, r in result.items()}


def judged(labelled: dict, result: dict) -> str:
    """Validation selection / test image AUROC (and pixel AUROC / AUPRO where masked) of an
    adapted ``result``."""
    val = {**labelled["val_pseudo"], "scores": result["val_pseudo"][0],
           "maps": result["val_pseudo"][1]}
    test = labelled["test"]
    has = np.asarray(test["has_mask"], bool) | (test["labels"] == 0)
    masks, maps = test["masks"][has], result["test"][1][has]
    cells = [selection_score(validation_metrics(val)),
             metrics.image_auroc(test["labels"], result["test"][0])]
    if masks.any():
        cells += [metrics.pixel_auroc(masks, maps), metrics.aupro(masks, maps)]
    return " / ".join(metrics.shown(c, 3) for c in cells)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a finished run whose AE-2 has a head")
    parser.add_argument("out", type=Path, help="where the second AE-2 goes")
    parser.add_argument("--seed", type=int, default=1, help="weights and crops (default 1)")
    args = parser.parse_args()
    if not (args.out / "ae2" / "scores_test.npz").is_file():
        train_member(args.run, args.out, args.seed)
    window = read_json(args.run / "params.json")["notebooks"]["03_train_ae2"][
        "head_score_window"]
    first, second, floor = ({s: load_scores(folder / f"scores_{s}.npz") for s in SPLITS}
                            for folder in (args.run / "ae2", args.out / "ae2",
                                           args.run / "floor"))
    mean_maps = {s: (first[s]["maps"] + second[s]["maps"]) / 2 for s in SPLITS}
    members = {"seed 0 (the run's)": {s: (first[s]["scores"], first[s]["maps"]) for s in SPLITS},
               f"seed {args.seed}": {s: (second[s]["scores"], second[s]["maps"])
                                     for s in SPLITS},
               "mean of both": {s: (peak_of_mean_filtered(m, window), m)
                                for s, m in mean_maps.items()}}
    print("validation selection / test image AUROC [/ pixel AUROC / AUPRO]")
    for name, result in members.items():
        result = adapted(first, result)
        standardisers = {"floor": Standardiser.of_normals(floor["val"]),
                         "ae2": Standardiser.of_normals({"scores": result["val"][0],
                                                         "maps": result["val"][1]})}
        blended = {}
        for s in SPLITS:
            r = combine({"floor": (floor[s]["scores"], floor[s]["maps"]), "ae2": result[s]},
                        standardisers)
            blended[s] = (r.scores, r.maps)
        print(f"  AE-2, {name:20s} {judged(first, result)}")
        print(f"  floor + AE-2, {name:12s} {judged(first, adapted(first, blended))}")


if __name__ == "__main__":
    main()
