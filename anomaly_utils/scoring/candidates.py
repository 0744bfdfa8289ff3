"""The candidates a run fits, scores and chooses among: one registry entry each.

A candidate is made by one notebook and keeps its files in one folder of the run
(``<run>/<name>/``: its model or fitted statistics, and ``scores_<split>.npz`` for every
split), under the name that ``metrics.json`` and the reports use. Everything that lists
candidates reads :data:`REGISTRY`: the scope of ``-p <name>.<parameter>``
(``pipeline.parameters``), what a sweep or an auto run copies between runs
(``pipeline.sharing``, ``pipeline.sweep``), the score files and their order in reports
(``scoring.stored``), the ``score`` command's ``--model`` choices and the files it needs
(``pipeline.score_images``), how a finished candidate is loaded to score new images
(``scoring.serving``), and the figures' colours (``visualization.plots``). A new candidate
is its notebook and one entry here.

Pure data (no numpy), so the command line reads it without loading anything heavy.

Example:
    >>> [c.name for c in REGISTRY], MODELS
    (['floor', 'ae1', 'ae2', 'blend'], ('ae1', 'ae2'))
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Candidate:
    """One candidate of a run.

    Attributes:
        name: its folder in the run and its key in ``metrics.json``.
        label: how reports and figures name it.
        notebook: the notebook that fits and scores it (e.g. ``"03_train_ae2"``).
        network: a saved Keras model that ``Scorer`` loads and ``score --model`` serves;
            its test scores keep the reconstructions the gallery shows.
        color: its colour in figures (hex RGB).
        files: what its folder holds once fitted, the files that ``score`` loads.
        parts: the candidates it is made of (a blend of their standardised scores, written
            by its notebook from their score files, :mod:`anomaly_utils.scoring.blend`);
            empty for a candidate fitted on the data.
        own_score_only: keeps its own image score even where validation prefers the
            scale-adaptive peak (:mod:`anomaly_utils.scoring.image_score`): AE-1, the
            original study's baseline, is scored as the study scored it.
    """

    name: str
    label: str
    notebook: str
    network: bool
    color: str
    files: tuple[str, ...]
    parts: tuple[str, ...] = ()
    own_score_only: bool = False


REGISTRY: tuple[Candidate, ...] = (  # in report order: the floor first, as the bar to clear
    Candidate("floor", "statistics floor", "01_data_exploration", False, "#55a868",
              ("statistics_floor.json", "statistics_floor.npz")),
    Candidate("ae1", "AE-1", "02_train_ae1", True, "#4c72b0", ("model.keras", "scoring.json"),
              own_score_only=True),
    Candidate("ae2", "AE-2", "03_train_ae2", True, "#dd8452", ("model.keras", "scoring.json")),
    Candidate("blend", "floor + AE-2", "04_threshold_selection", False, "#8172b3",
              ("blend.json",), parts=("floor", "ae2")),
)
CANDIDATES: tuple[str, ...] = tuple(c.name for c in REGISTRY)
MODELS: tuple[str, ...] = tuple(c.name for c in REGISTRY if c.network)
BY_NAME: dict[str, Candidate] = {c.name: c for c in REGISTRY}
FLOOR = "floor"  # the training-free statistics floor (notebook 01)
assert FLOOR in CANDIDATES and FLOOR not in MODELS
assert all(part in BY_NAME and not BY_NAME[part].parts for c in REGISTRY for part in c.parts)
