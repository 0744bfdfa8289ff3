"""A model's scores of each split on disk (``scores_<split>.npz``): written once after
training, read by threshold selection, the report and the gallery.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from anomaly_utils.artifacts import load_npz, save_npz
from anomaly_utils.errors import ArtifactError
from anomaly_utils.scoring.candidates import (  # noqa: F401 - FLOOR: read here by callers
    BY_NAME,
    CANDIDATES,
    FLOOR,
    MODELS,
)
from anomaly_utils.scoring.image_score import choose_image_score, write_choice
from anomaly_utils.scoring.validation_set import shared_validation

if TYPE_CHECKING:  # the Scorer loads TensorFlow; reading stored scores must not
    from anomaly_utils.scoring.scorer import Scorer

MAP_DTYPE = np.float16  # maps on disk: half the size, 3 significant digits


def as_stored(maps: np.ndarray) -> np.ndarray:
    """Maps (N, E, E) rounded as a score file keeps them, as float32: what a candidate made
    from stored maps (the blend) was computed from."""
    return np.asarray(maps).astype(MAP_DTYPE).astype(np.float32)


@dataclass
class ScoreResult:
    """Scores of N images: ``scores`` (N,) float32, ``maps`` (N, E, E) float32 at
    ``eval_size``, ``recons`` (N, S, S, C) float32 in [0, 1] at the model's resolution;
    with a segmentation head, ``maps`` is the head's and ``error_maps`` (N, E, E) float32 the
    reconstruction error map beside it (else ``None``)."""

    scores: np.ndarray
    maps: np.ndarray
    recons: np.ndarray
    error_maps: np.ndarray | None = None


def save_scores(path: str | os.PathLike, result: ScoreResult, *, labels: np.ndarray,
                types: np.ndarray, masks: np.ndarray | None, has_mask: np.ndarray | None,
                paths: list, fingerprint: str, model: str, keep_recons: bool = False) -> None:
    """Write a score file (``.npz``, no pickle): scores, labels, types, maps, masks.

    Maps are stored as :data:`MAP_DTYPE` at the scoring config's ``eval_size``, masks as bool; the
    dataset fingerprint and model name are stored so a score file from another run or
    dataset is refused on load. A head's error maps are stored as ``error_maps``. With
    ``keep_recons``, the reconstructions are stored too, as uint8 ``recons`` (N, S, S, C),
    so that the gallery shows them without loading the model (and TensorFlow).
    """
    n = len(result.scores)
    masks = np.zeros((n, *result.maps.shape[1:]), bool) if masks is None else masks
    has_mask = np.zeros(n, bool) if has_mask is None else has_mask
    extra = {} if result.error_maps is None else {
        "error_maps": result.error_maps.astype(MAP_DTYPE)}
    if keep_recons:
        extra["recons"] = np.round(np.clip(result.recons, 0, 1) * 255).astype(np.uint8)
    save_npz(path, **extra, scores=result.scores, labels=np.asarray(labels, np.int64),
             types=np.asarray(types, dtype=str), maps=result.maps.astype(MAP_DTYPE),
             masks=masks.astype(bool), has_mask=has_mask.astype(bool),
             paths=np.asarray([os.fsdecode(p) for p in paths], dtype=str),
             fingerprint=np.asarray(fingerprint), model=np.asarray(model))


def load_scores(path: str | os.PathLike, fingerprint: str | None = None,
                model: str | None = None, *, with_recons: bool = False) -> dict[str, np.ndarray]:
    """Load a score file, refusing one from another dataset or model.

    Returns a dict with ``scores`` (N,), ``labels`` (N,), ``types`` (N,), ``maps``
    (N, E, E) float32, ``masks`` (N, E, E) bool, ``has_mask`` (N,), ``paths`` (N,), and,
    from a model with a segmentation head, ``error_maps`` (N, E, E) float32; a test split's
    file also holds ``recons`` (N, S, S, C) uint8, the reconstructions at the model's
    resolution, which ``with_recons`` requires.
    """
    data = load_npz(path)
    required = {"scores", "labels", "types", "maps", "masks", "has_mask", "fingerprint", "model"}
    required |= {"recons"} if with_recons else set()
    if missing := required - set(data):
        raise ArtifactError(f"score file '{path}' lacks {sorted(missing)}",
                            fix="rerun the training notebook that writes it")
    if fingerprint is not None and str(data["fingerprint"]) != fingerprint:
        raise ArtifactError(
            f"score file '{path}' comes from dataset {data['fingerprint']} but this run's "
            f"dataset is {fingerprint}", fix="use score files from the same run")
    if model is not None and str(data["model"]) != model:
        raise ArtifactError(f"score file '{path}' belongs to model {data['model']}, not {model}",
                            fix="check the run directory's layout")
    data["maps"] = data["maps"].astype(np.float32)
    if "error_maps" in data:
        data["error_maps"] = data["error_maps"].astype(np.float32)
    return data



def load_run_scores(run_dir: str | os.PathLike,
                    splits: tuple[str, ...] = ("test", "val", "val_pseudo")) -> dict[str, dict]:
    """Every candidate's stored scores of a run, ``{candidate: {split: load_scores(...)}}``
    for :data:`CANDIDATES`.

    Raises:
        ArtifactError: a score file is missing, belongs to another model, or the models'
            files come from different datasets.
    """
    run_dir = Path(run_dir)
    scores = {}
    for name in CANDIDATES:
        first = load_scores(run_dir / name / f"scores_{splits[0]}.npz", model=name)
        fingerprint = str(first["fingerprint"])
        scores[name] = {splits[0]: first, **{
            split: load_scores(run_dir / name / f"scores_{split}.npz", fingerprint, name)
            for split in splits[1:]}}
    fingerprints = {str(s[splits[0]]["fingerprint"]) for s in scores.values()}
    if len(fingerprints) != 1:
        raise ArtifactError(f"the models' score files in '{run_dir}' come from different "
                            f"datasets: {sorted(fingerprints)}",
                            fix="score every candidate on the same data (rerun notebooks 01-03)")
    return scores


@dataclass
class SplitScores:
    """What :func:`score_splits` wrote: the results on each split (see :class:`ScoreResult`)."""

    val: ScoreResult
    val_pseudo: ScoreResult
    test: ScoreResult


def score_splits(scorer: Scorer, ds, run_dir: str | os.PathLike, seed: int = 0, *,
                 name: str | None = None, eval_size: int | None = None) -> SplitScores:
    """Score a dataset's validation normals, a pseudo-labelled validation set and the test set.

    Writes ``run_dir/<model>/scores_val.npz``, ``scores_val_pseudo.npz`` (the validation
    normals with pasted synthetic anomalies, for
    choosing a candidate and an F1-optimal threshold without touching the test set) and
    ``scores_test.npz`` (with an autoencoder's reconstructions, for the gallery), each stamped with the
    dataset fingerprint. The pseudo-labelled set is the run's shared one
    (:func:`anomaly_utils.scoring.validation_set.shared_validation`), the same anomalies for
    every candidate. The image scores stored are those of the rule the validation set
    prefers, the scorer's own or the scale-adaptive peak of its maps
    (:mod:`anomaly_utils.scoring.image_score`; the choice in ``<model>/image_score.json``).

    Args:
        scorer: anything with ``score(images) -> ScoreResult``: the trained model and how to
            score it (:class:`Scorer`), or the statistics floor.
        ds: an :class:`anomaly_utils.data.loading.AnomalyDataset` loaded at the model's resolution,
            with masks at the scoring resolution.
        run_dir: the run directory.
        seed: seeds the pseudo-anomalies.
        name, eval_size: the model folder and the maps' side, pixels (default: the scorer's
            ``config.model`` and ``config.eval_size``).
    """
    name = name or scorer.config.model
    eval_size = eval_size or scorer.config.eval_size
    folder = Path(run_dir) / name
    fingerprint = ds.fingerprint
    val = scorer.score(ds.val_images)
    pseudo = shared_validation(run_dir, ds, seed, eval_size)
    val_pseudo = scorer.score(pseudo.images)
    test = scorer.score(ds.test_images)
    choice = choose_image_score(val.maps, {
        "labels": pseudo.labels, "scores": val_pseudo.scores, "maps": val_pseudo.maps,
        "masks": pseudo.masks, "types": pseudo.kinds, "has_mask": pseudo.has_mask},
        own_only=name in BY_NAME and BY_NAME[name].own_score_only)
    val, val_pseudo, test = (replace(r, scores=choice.scores(r.scores, r.maps))
                             for r in (val, val_pseudo, test))
    write_choice(folder, choice)
    save_scores(folder / "scores_val.npz", val, labels=np.zeros(len(val.scores), int),
                types=np.full(len(val.scores), "good"), masks=None, has_mask=None, paths=[],
                fingerprint=fingerprint, model=name)
    save_scores(folder / "scores_val_pseudo.npz", val_pseudo, labels=pseudo.labels,
                types=pseudo.kinds, masks=pseudo.masks,
                has_mask=pseudo.has_mask, paths=[], fingerprint=fingerprint,
                model=name)
    save_scores(folder / "scores_test.npz", test, labels=ds.test_labels, types=ds.test_types,
                masks=ds.test_masks, has_mask=ds.test_has_mask,
                paths=[p.relative_to(ds.index.root) for p in ds.test_paths],
                fingerprint=fingerprint, model=name, keep_recons=name in MODELS)
    return SplitScores(val, val_pseudo, test)
