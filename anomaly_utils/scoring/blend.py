"""A candidate made of others: the statistics floor and AE-2, standardised and averaged.

Each part's image scores and maps are standardised by the mean and standard deviation of
its own scores on the clean validation normals (``scores_val.npz``: nothing anomalous is
looked at, no weight is tuned), then averaged with equal weights. The floor and AE-2 err
on different defects (local statistics against a learned map), so where validation cannot
tell which of the two finds the real defects, their mean hedges: on the synthetic carpet
the pasted validation anomalies rank the floor first and the test ranks AE-2 first, and the
blend beat both on validation and on the test (docs/experiments.md, "Averaging candidates").
Like every candidate it is chosen only where validation prefers it.

Notebook 04 writes the blend from the parts' stored scores (:func:`write_blend`); the
``score`` command rebuilds it from the parts and ``blend.json``
(:class:`anomaly_utils.scoring.serving`).

Example:
    >>> normals = {"scores": np.array([1.0, 3.0]), "maps": np.ones((2, 4, 4))}
    >>> Standardiser.of_normals(normals).apply(np.array([5.0]), np.ones((1, 4, 4)))[0]
    array([3.])
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from anomaly_utils.artifacts import read_json, write_json
from anomaly_utils.errors import ArtifactError
from anomaly_utils.scoring.candidates import BY_NAME, REGISTRY
from anomaly_utils.scoring.image_score import choose_image_score, write_choice
from anomaly_utils.scoring.stored import ScoreResult, load_scores, save_scores

BLEND_FILE = "blend.json"  # in the blend's folder: each part's standardisation
SPLITS = ("val", "val_pseudo", "test")
MIN_STD = 1e-12  # a part whose normals all score the same is shifted, not divided by zero


@dataclass(frozen=True)
class Standardiser:
    """(value - mean) / std for a part's image scores and, separately, its map pixels."""

    score_mean: float
    score_std: float
    map_mean: float
    map_std: float

    @classmethod
    def of_normals(cls, normals: dict[str, np.ndarray]) -> Standardiser:
        """From a part's scores (N,) and maps (N, E, E) of the clean validation normals."""
        scores = np.asarray(normals["scores"], np.float64)
        maps = np.asarray(normals["maps"], np.float64)
        return cls(float(scores.mean()), max(float(scores.std()), MIN_STD),
                   float(maps.mean()), max(float(maps.std()), MIN_STD))

    def apply(self, scores: np.ndarray, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Standardised float64 scores (N,) and maps (N, E, E)."""
        return ((np.asarray(scores, np.float64) - self.score_mean) / self.score_std,
                (np.asarray(maps, np.float64) - self.map_mean) / self.map_std)


def combine(results: dict[str, tuple[np.ndarray, np.ndarray]],
            standardisers: dict[str, Standardiser]) -> ScoreResult:
    """The mean of the parts' standardised scores and maps.

    Args:
        results: part -> (scores (N,), maps (N, E, E)), the same N images, the same E.
        standardisers: part -> its :class:`Standardiser`.

    Returns:
        A :class:`ScoreResult` with float32 ``scores`` (N,) and ``maps`` (N, E, E), in
        standard deviations of the normals; ``recons`` is None (a blend reconstructs
        nothing).
    """
    shapes = {name: np.shape(maps) for name, (_, maps) in results.items()}
    if len(set(shapes.values())) != 1:
        raise ArtifactError(f"the blend's parts have maps of different shapes: {shapes}",
                            fix="score the floor and AE-2 at the same eval_size")
    standard = [standardisers[name].apply(*results[name]) for name in standardisers]
    return ScoreResult(scores=np.mean([s for s, _ in standard], axis=0).astype(np.float32),
                       maps=np.mean([m for _, m in standard], axis=0).astype(np.float32),
                       recons=None)


def write_blend(run_dir: str | os.PathLike, name: str) -> dict[str, Standardiser]:
    """Blend the parts of candidate ``name`` (its registry entry's ``parts``) from their score
    files in ``run_dir``: writes ``<name>/blend.json`` and ``<name>/scores_<split>.npz`` for
    every split, with the labels, kinds, masks and paths of the first part.

    Raises:
        ArtifactError: a part's score file is missing, or the parts scored other images.
    """
    run_dir = Path(run_dir)
    parts = BY_NAME[name].parts
    stored = {part: {split: load_scores(run_dir / part / f"scores_{split}.npz", model=part)
                     for split in SPLITS} for part in parts}
    first = stored[parts[0]]
    for part in parts[1:]:
        for split in SPLITS:
            if not (np.array_equal(stored[part][split]["labels"], first[split]["labels"])
                    and np.array_equal(stored[part][split]["paths"], first[split]["paths"])
                    and str(stored[part][split]["fingerprint"])
                    == str(first[split]["fingerprint"])):
                raise ArtifactError(f"{part} and {parts[0]} scored other {split} images in "
                                    f"'{run_dir}'", fix="rerun notebooks 01-03 of this run")
    standardisers = {part: Standardiser.of_normals(stored[part]["val"]) for part in parts}
    folder = run_dir / name
    write_json(folder / BLEND_FILE, {"parts": {p: asdict(s) for p, s in standardisers.items()}})
    blended = {split: combine({p: (stored[p][split]["scores"], stored[p][split]["maps"])
                               for p in parts}, standardisers) for split in SPLITS}
    choice = choose_image_score(blended["val"].maps, {**first["val_pseudo"],
                                                      "scores": blended["val_pseudo"].scores,
                                                      "maps": blended["val_pseudo"].maps})
    write_choice(folder, choice)
    for split in SPLITS:
        result = blended[split]
        result = replace(result, scores=choice.scores(result.scores, result.maps))
        f = first[split]
        save_scores(folder / f"scores_{split}.npz", result, labels=f["labels"],
                    types=f["types"], masks=f["masks"], has_mask=f["has_mask"],
                    paths=list(f["paths"]), fingerprint=str(f["fingerprint"]), model=name)
    return standardisers


def read_blend(folder: str | os.PathLike) -> dict[str, Standardiser]:
    """The standardisers :func:`write_blend` stored in ``folder``."""
    path = Path(folder) / BLEND_FILE
    try:
        return {part: Standardiser(**values)
                for part, values in read_json(path)["parts"].items()}
    except (KeyError, TypeError) as exc:
        raise ArtifactError(f"'{path}' does not describe a blend ({exc})",
                            fix="rerun notebook 04 for this run") from exc


def write_blends(run_dir: str | os.PathLike) -> list[str]:
    """:func:`write_blend` for every candidate of the registry made of parts; their names."""
    names = [c.name for c in REGISTRY if c.parts]
    for name in names:
        write_blend(run_dir, name)
    return names
