"""Fit the statistics floor and choose its settings on the pseudo-labelled validation set.

Two stages, each chosen by the selection score (mean of validation image and pixel AUROC,
:func:`anomaly_utils.evaluation.selection.choose_candidate`):

1. every variant and gradient kind asked for (:data:`FLOOR_VARIANTS` x
   :data:`GRADIENT_FEATURES` with ``"auto"``);
2. the first stage's floor alone against the same floor with the eigen-image residual of
   each side asked for averaged into its maps (:data:`EIGEN_SIDES` with ``"auto"``).

The second stage reuses the first's Gaussians, so it costs one SVD per side and one scoring
of the validation set. Notebook 01 calls :func:`fit_floor`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from anomaly_utils.errors import ParameterError
from anomaly_utils.evaluation.selection import choose_by_validation, choose_candidate
from anomaly_utils.scoring.eigen_residual import AUTO, MIN_IMAGES, eigen_sides
from anomaly_utils.scoring.statistics_floor import (
    FLOOR_VARIANTS,
    GRADIENT_FEATURES,
    StatisticsFloor,
)


@dataclass
class FloorChoice:
    """The chosen floor and how it was chosen.

    Attributes:
        floor: the fitted floor (with its eigen-image residual where chosen).
        name: its row in ``validation``, e.g. ``"positional, directional + eigen 32 px"``.
        validation: row -> validation metrics (``validation_metrics``), every floor tried.
        choices: the two stages' ``choose_candidate`` results (the second stage's is absent
            where no eigen-image side was tried).
        note: why the second stage was skipped, or ``""``.
    """

    floor: StatisticsFloor
    name: str
    validation: dict[str, dict[str, float | None]]
    choices: list[dict[str, Any]]
    note: str = ""


def _options(value: Any, everything: tuple, name: str) -> tuple:
    if value == AUTO:
        return everything
    if value not in everything:
        raise ParameterError(f"{name} {value!r} is not known",
                             fix=f"use 'auto' or one of {everything}")
    return (value,)


def fit_floor(train_images: np.ndarray, images: np.ndarray, labels: np.ndarray,
              masks: np.ndarray, *, variant: str = AUTO, gradient: str = AUTO,
              eigen: Any = AUTO, eval_size: int = 128) -> FloorChoice:
    """Fit the floors asked for on ``train_images`` and keep the one validation prefers.

    Args:
        train_images: (N, H, W, C) defect-free images, uint8 or float in [0, 1].
        images, labels, masks: the pseudo-labelled validation set, (P, H, W, C) images at the
            training images' size, (P,) labels (1 = anomalous), (P, E, E) bool masks.
        variant, gradient: a value of :data:`FLOOR_VARIANTS` / :data:`GRADIENT_FEATURES`, or
            ``"auto"`` for each.
        eigen: ``"auto"``, ``"none"`` or an eigen-image side in pixels (:func:`eigen_sides`).
        eval_size: side of the maps, pixels.

    Returns:
        :class:`FloorChoice`.
    """
    variants = _options(variant, FLOOR_VARIANTS, "floor_variant")
    gradients = _options(gradient, GRADIENT_FEATURES, "floor_gradient")
    sides = eigen_sides(eigen)
    floors = {f"{v}, {g}": StatisticsFloor(v, eval_size=eval_size, gradient=g).fit(train_images)
              for v in variants for g in gradients}
    first, validation = choose_by_validation({n: f.score for n, f in floors.items()},
                                             images, labels, masks)
    name, floor = first["model"], floors[first["model"]]
    note = ""
    if sides and len(train_images) < MIN_IMAGES:
        if eigen != AUTO:
            raise ParameterError(f"floor_eigen {eigen} needs at least {MIN_IMAGES} training "
                                 f"images, the dataset has {len(train_images)}",
                                 fix="set floor_eigen to 'none'")
        sides, note = (), (f"no eigen-image residual: {len(train_images)} training images, "
                           f"it needs {MIN_IMAGES}")
    if not sides:
        return FloorChoice(floor, name, validation, [first], note)
    fused = {f"{name} + eigen {s} px": floor.with_eigen(s, train_images) for s in sides}
    _, fused_validation = choose_by_validation({n: f.score for n, f in fused.items()},
                                               images, labels, masks)
    validation.update(fused_validation)
    second = choose_candidate({n: validation[n] for n in (name, *fused)})
    chosen = second["model"]
    return FloorChoice(fused.get(chosen, floor), chosen, validation, [first, second], note)
