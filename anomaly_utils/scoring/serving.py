"""Any candidate of a finished run, loaded to score new images: one interface for all.

A network (AE-1, AE-2 with or without its head) loads through :class:`Scorer` in Keras'
safe mode; the statistics floor through :class:`StatisticsFloor`; a blend loads its parts
and the standardisation notebook 04 stored (:mod:`anomaly_utils.scoring.blend`). Either way
the caller gets a :class:`ServedCandidate`: the colour mode to read images in and a
``score`` function from images of any size to a :class:`ScoreResult`, each candidate
resizing them to its own input, so that the ``score`` command serves whichever candidate a
run recommends. A run on parts (``cut-parts``) scores new images cut alike
(:func:`score_in_parts`).

Example:
    >>> served = load_candidate("runs/<id>", "floor")  # doctest: +SKIP
    >>> served.score([read_image("x.png", served.color_mode)]).scores.shape  # doctest: +SKIP
    (1,)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from anomaly_utils.data.loading import resize_image
from anomaly_utils.data.parts import parts_of
from anomaly_utils.errors import ArtifactError, ParameterError
from anomaly_utils.scoring.blend import combine, read_blend
from anomaly_utils.scoring.candidates import BY_NAME, CANDIDATES
from anomaly_utils.scoring.image_score import read_choice
from anomaly_utils.scoring.statistics_floor import StatisticsFloor
from anomaly_utils.scoring.stored import ScoreResult, as_stored

FLOOR_COLOR_MODES = {1: "grayscale", 3: "rgb"}  # the floor's channels -> the colour mode


@dataclass(frozen=True)
class ServedCandidate:
    """A loaded candidate.

    Attributes:
        name: the candidate's name (``floor``, ``ae1``, ``ae2``, ``blend``).
        color_mode: ``"rgb"`` or ``"grayscale"``, the mode to read images in.
        score: a sequence of N (H, W, C) uint8 images, any H and W -> :class:`ScoreResult`
            with ``scores`` (N,) and ``maps`` (N, E, E) float32.
    """

    name: str
    color_mode: str
    score: Callable[[Sequence[np.ndarray]], ScoreResult]


def _resized(score: Callable[[np.ndarray], ScoreResult], size: int):
    def resized_score(originals: Sequence[np.ndarray]) -> ScoreResult:
        return score(np.stack([resize_image(image, size) for image in originals]))
    return resized_score


def load_candidate(run_dir: str | os.PathLike, name: str) -> ServedCandidate:
    """Load candidate ``name`` from ``run_dir/<name>/`` (its registry entry's files), scoring
    images with the image score its validation set chose (``image_score.json``).

    Raises:
        ParameterError: ``name`` is not a candidate.
        ArtifactError: its files are missing, corrupt or refused by safe mode, or a blend's
            parts read images in different colour modes.
    """
    if name not in CANDIDATES:
        raise ParameterError(f"candidate must be one of {CANDIDATES}, got {name!r}",
                             fix=f"pass --model with one of {', '.join(CANDIDATES)}")
    served = _load_own(run_dir, name)
    choice = read_choice(Path(run_dir) / name)

    def chosen_score(originals: Sequence[np.ndarray]) -> ScoreResult:
        result = served.score(originals)
        return replace(result, scores=choice.scores(result.scores, result.maps))

    return ServedCandidate(name, served.color_mode, chosen_score)


def _load_own(run_dir: str | os.PathLike, name: str) -> ServedCandidate:
    """Candidate ``name`` with its own image score."""
    folder = Path(run_dir) / name
    candidate = BY_NAME[name]
    if candidate.parts:
        standardisers = read_blend(folder)
        parts = {part: load_candidate(run_dir, part) for part in standardisers}
        modes = {part.color_mode for part in parts.values()}
        if len(modes) != 1:
            raise ArtifactError(f"the parts of {name} in '{run_dir}' read images as {modes}",
                                fix="rerun the run: its notebooks disagree on color_mode")

        def blend_score(originals: Sequence[np.ndarray]) -> ScoreResult:
            results = {p: parts[p].score(originals) for p in parts}
            # the parts' maps as notebook 04 read them from their score files, so that a
            # blend scored by its maps (image_score.json) gives the scores stored
            return combine({p: (r.scores, as_stored(r.maps)) for p, r in results.items()},
                           standardisers)

        return ServedCandidate(name, modes.pop(), blend_score)
    if candidate.network:
        # Imported here: it loads Keras and its backend (seconds), which the floor never needs.
        from anomaly_utils.scoring.scorer import Scorer

        scorer = Scorer.load(run_dir, name)
        return ServedCandidate(name, scorer.config.color_mode,
                               _resized(scorer.score, scorer.config.image_size))
    floor = StatisticsFloor.load(folder)
    height, _, channels = floor.image_shape
    return ServedCandidate(name, FLOOR_COLOR_MODES[int(channels)],
                           _resized(floor.score, int(height)))


def score_in_parts(served: ServedCandidate, originals: Sequence[np.ndarray],
                   parts: int | str) -> tuple[np.ndarray, list[np.ndarray]]:
    """Score images with a candidate trained on their parts (``cut-parts``): each image is
    cut as ``cut-parts --parts PARTS`` cuts it, its score is the highest of its parts', and
    its map the parts' maps side by side.

    Args:
        served: the candidate (:func:`load_candidate`).
        originals: N (H, W, C) uint8 images, any H and W.
        parts: the run's setting, as its data summary records it ("auto" or a number).

    Returns:
        ``(scores, maps)``: float (N,), and per image a float32 (H, W) map at the image's
        own resolution.
    """
    cuts = [parts_of(*image.shape[:2], parts) for image in originals]
    crops = [part.crop(image) for image, cut in zip(originals, cuts, strict=True)
             for part in cut]
    result = served.score(crops)  # every part of every image in one call
    scores, maps, first = [], [], 0
    for cut in cuts:
        span = slice(first, first + len(cut))
        scores.append(float(np.max(result.scores[span])))
        maps.append(np.concatenate(
            [cv2.resize(np.asarray(part_map, np.float32), crop.shape[1::-1],
                        interpolation=cv2.INTER_LINEAR)
             for crop, part_map in zip(crops[span], result.maps[span], strict=True)],
            axis=cut[0].axis))
        first += len(cut)
    return np.array(scores, np.float64), maps
