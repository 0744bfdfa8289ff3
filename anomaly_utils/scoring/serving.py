"""Any candidate of a finished run, loaded to score new images: one interface for all.

A network (AE-1, AE-2 with or without its head) loads through :class:`Scorer` in Keras'
safe mode; the statistics floor through :class:`StatisticsFloor`. Either way the caller
gets a :class:`ServedCandidate`: the input it expects (side in pixels, colour mode) and a
``score`` function from (N, S, S, C) images to a :class:`ScoreResult`, so that the
``score`` command serves whichever candidate a run recommends.

Example:
    >>> served = load_candidate("runs/<id>", "floor")  # doctest: +SKIP
    >>> served.score(images).scores.shape  # doctest: +SKIP
    (N,)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from anomaly_utils.errors import ParameterError
from anomaly_utils.scoring.candidates import BY_NAME, CANDIDATES, FLOOR
from anomaly_utils.scoring.scorer import Scorer
from anomaly_utils.scoring.statistics_floor import StatisticsFloor
from anomaly_utils.scoring.stored import ScoreResult

FLOOR_COLOR_MODES = {1: "grayscale", 3: "rgb"}  # the floor's channels -> the colour mode


@dataclass(frozen=True)
class ServedCandidate:
    """A loaded candidate.

    Attributes:
        name: the candidate's name (``floor``, ``ae1``, ``ae2``).
        image_size: side of the square images ``score`` takes, pixels.
        color_mode: ``"rgb"`` or ``"grayscale"``.
        score: (N, S, S, C) uint8 or float [0, 1] images -> :class:`ScoreResult` with
            ``scores`` (N,) and ``maps`` (N, E, E) float32.
    """

    name: str
    image_size: int
    color_mode: str
    score: Callable[[np.ndarray], ScoreResult]


def load_candidate(run_dir: str | os.PathLike, name: str) -> ServedCandidate:
    """Load candidate ``name`` from ``run_dir/<name>/`` (its registry entry's files).

    Raises:
        ParameterError: ``name`` is not a candidate.
        ArtifactError: its files are missing, corrupt or refused by safe mode.
    """
    if name not in CANDIDATES:
        raise ParameterError(f"candidate must be one of {CANDIDATES}, got {name!r}",
                             fix=f"pass --model with one of {', '.join(CANDIDATES)}")
    folder = Path(run_dir) / name
    if BY_NAME[name].network:
        scorer = Scorer.load(run_dir, name)
        return ServedCandidate(name, scorer.config.image_size, scorer.config.color_mode,
                               scorer.score)
    assert name == FLOOR
    floor = StatisticsFloor.load(folder)
    height, _, channels = floor.image_shape
    return ServedCandidate(name, int(height), FLOOR_COLOR_MODES[int(channels)], floor.score)
