"""Fit the statistics floor and choose its settings on the pseudo-labelled validation set.

Five stages, each chosen by the selection score (mean of validation image and pixel AUROC,
:func:`anomaly_utils.evaluation.selection.choose_candidate`):

1. every variant and gradient kind asked for (:data:`FLOOR_VARIANTS` x
   :data:`GRADIENT_FEATURES` with ``"auto"``), with the windows of the first scale asked for;
2. the first stage's variant and gradient with the windows of every other scale
   (:data:`WINDOW_SCALES` with ``"auto"``: the largest window a quarter or half the side);
3. where the second stage's floor is positional, its Gaussian form against its nearest-pixel
   form (:data:`FLOOR_FORMS` with ``"auto"``; :mod:`anomaly_utils.scoring.pixel_bank`);
4. the third stage's floor against the same floor fitted on images normalised otherwise
   (:data:`CHOSEN_NORMALISATIONS` with ``"auto"``: each image divided by its mean instead of
   standardised by its mean and standard deviation);
5. the fourth stage's floor alone against the same floor with the eigen-image residual of
   each side asked for averaged into its maps (:data:`EIGEN_SIDES` with ``"auto"``).

The third and fifth stages reuse the Gaussians before them: the third costs one pass over
the training images and one scoring of the validation set, the fifth one eigendecomposition
per fold and side and the eigen-image maps of the validation set (the floor keeps the local maps it
already made of those images, and scoring them again for the stored scores reuses them too).
The fourth fits its floor anew (other features) and scores the validation set once.
With ``form="nearest"`` every floor is positional and in that form from the first stage on;
with a fixed ``normalize`` every floor is normalised so and the fourth stage is left out.
Notebook 01 calls :func:`fit_floor`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from anomaly_utils.errors import ParameterError
from anomaly_utils.evaluation.selection import choose_by_validation, choose_candidate
from anomaly_utils.scoring.eigen_residual import AUTO, MIN_IMAGES, eigen_sides
from anomaly_utils.scoring.statistics_floor import (
    CHOSEN_NORMALISATIONS,
    FLOOR_FORMS,
    FLOOR_VARIANTS,
    GRADIENT_FEATURES,
    NORMALISATIONS,
    WINDOW_SCALES,
    StatisticsFloor,
    as_unit_images,
    default_windows,
    window_scales,
)


@dataclass
class FloorChoice:
    """The chosen floor and how it was chosen.

    Attributes:
        floor: the fitted floor (with its eigen-image residual where chosen).
        name: its row in ``validation``, e.g. ``"positional, directional + eigen 32 px"``
            or ``"positional, directional, windows to 0.5 + eigen 32 px"`` (:func:`floor_name`).
        validation: row -> validation metrics (``validation_metrics``), every floor tried.
        choices: the ``choose_candidate`` result of each stage that ran, in order.
        note: why the nearest-pixel or the eigen-image stage was skipped, or ``""``.
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


NEAREST = ", nearest pixel"  # appended to a floor's row name in the nearest-pixel form


def normalisation_suffix(normalize: str) -> str:
    """What a floor's row name ends with for its image normalisation: nothing for the
    standard one (the names rows had before the others), else e.g. ``", gain-normalised"``."""
    return "" if normalize == "standard" else f", {normalize}-normalised"


def floor_name(variant: str, gradient: str, scale: float) -> str:
    """A floor's row name: ``"<variant>, <gradient>"``, with ``", windows to <scale>"`` where
    the largest window is not a quarter of the side (the names rows had before the scale)."""
    name = f"{variant}, {gradient}"
    return name if scale == WINDOW_SCALES[0] else f"{name}, windows to {scale:g}"


def _challenge(name: str, floor: StatisticsFloor, challengers: dict[str, StatisticsFloor],
               images, labels, masks, validation: dict, choices: list,
               ) -> tuple[str, StatisticsFloor]:
    """Score ``challengers`` on the validation set, add their rows to ``validation`` and keep
    the best of them and the floor ``name`` already chosen; returns its name and floor."""
    _, rows = choose_by_validation({n: f.score for n, f in challengers.items()},
                                   images, labels, masks)
    validation.update(rows)
    chosen = choose_candidate({n: validation[n] for n in (name, *challengers)})
    choices.append(chosen)
    return chosen["model"], challengers.get(chosen["model"], floor)


def fit_floor(train_images: np.ndarray, images: np.ndarray, labels: np.ndarray,
              masks: np.ndarray, *, variant: str = AUTO, gradient: str = AUTO,
              windows: Any = AUTO, form: str = AUTO, normalize: str = AUTO,
              eigen: Any = AUTO, eval_size: int = 128) -> FloorChoice:
    """Fit the floors asked for on ``train_images`` and keep the one validation prefers.

    Args:
        train_images: (N, H, W, C) defect-free images, uint8 or float in [0, 1].
        images, labels, masks: the pseudo-labelled validation set, (P, H, W, C) images at the
            training images' size, (P,) labels (1 = anomalous), (P, E, E) bool masks.
        variant, gradient: a value of :data:`FLOOR_VARIANTS` / :data:`GRADIENT_FEATURES`, or
            ``"auto"`` for each.
        windows: ``"auto"`` or the largest window's share of the image side
            (:func:`~anomaly_utils.scoring.statistics_floor.window_scales`).
        form: a value of :data:`FLOOR_FORMS`, or ``"auto"`` (the nearest-pixel form is tried
            where the chosen variant is positional).
        normalize: a value of :data:`NORMALISATIONS`, or ``"auto"`` (the first stages with
            the standard normalisation, then each of :data:`CHOSEN_NORMALISATIONS`).
        eigen: ``"auto"``, ``"none"`` or an eigen-image side in pixels (:func:`eigen_sides`).
        eval_size: side of the maps, pixels.

    Returns:
        :class:`FloorChoice`.
    """
    variants = _options(variant, FLOOR_VARIANTS, "floor_variant")
    gradients = _options(gradient, GRADIENT_FEATURES, "floor_gradient")
    forms = _options(form, FLOOR_FORMS, "floor_form")
    normalisations = CHOSEN_NORMALISATIONS if normalize == AUTO else \
        _options(normalize, NORMALISATIONS, "floor_normalize")
    only_nearest = forms == ("nearest",)
    if only_nearest:
        if "positional" not in variants:
            raise ParameterError("floor_form 'nearest' needs the positional variant, "
                                 f"floor_variant is {variant!r}",
                                 fix="set floor_variant to 'positional' or 'auto'")
        variants = ("positional",)
    scales = window_scales(windows)
    sides = eigen_sides(eigen)
    # Checked and converted once here rather than by each of the five or more fits.
    train_images = as_unit_images(train_images, "train_images")
    side = min(train_images.shape[1:3])

    first_normalisation = normalisations[0]
    suffix = normalisation_suffix(first_normalisation)

    def fitted(v: str, g: str, scale: float) -> StatisticsFloor:
        return StatisticsFloor(v, windows=default_windows(side, scale), eval_size=eval_size,
                               gradient=g, form="nearest" if only_nearest else "gaussian",
                               normalize=first_normalisation).fit(train_images)

    floors = {floor_name(v, g, scales[0]) + suffix: fitted(v, g, scales[0])
              for v in variants for g in gradients}
    first, validation = choose_by_validation({n: f.score for n, f in floors.items()},
                                             images, labels, masks)
    choices = [first]
    name, floor = first["model"], floors[first["model"]]
    if len(scales) > 1:
        wider = {floor_name(floor.variant, floor.gradient, s) + suffix:
                 fitted(floor.variant, floor.gradient, s) for s in scales[1:]}
        name, floor = _challenge(name, floor, wider, images, labels, masks, validation, choices)
    notes = []
    if "nearest" in forms and not only_nearest:
        if floor.variant == "positional":
            nearest = {name + NEAREST: floor.with_nearest(train_images)}
            name, floor = _challenge(name, floor, nearest, images, labels, masks, validation,
                                     choices)
        else:
            notes.append("no nearest-pixel form: the global variant's one cell would keep "
                         "every training pixel")
    if len(normalisations) > 1:
        renormalised = {  # "auto": the stages before ran with the standard normalisation
            name + normalisation_suffix(n): StatisticsFloor(
                floor.variant, windows=floor.windows, eval_size=eval_size,
                gradient=floor.gradient, form=floor.form, normalize=n).fit(train_images)
            for n in normalisations[1:]}
        name, floor = _challenge(name, floor, renormalised, images, labels, masks,
                                 validation, choices)
    if sides and len(train_images) < MIN_IMAGES:
        if eigen != AUTO:
            raise ParameterError(f"floor_eigen {eigen} needs at least {MIN_IMAGES} training "
                                 f"images, the dataset has {len(train_images)}",
                                 fix="set floor_eigen to 'none'")
        sides = ()
        notes.append(f"no eigen-image residual: {len(train_images)} training images, "
                     f"it needs {MIN_IMAGES}")
    note = "; ".join(notes)
    if not sides:
        return FloorChoice(floor, name, validation, choices, note)
    fused = {f"{name} + eigen {s} px": floor.with_eigen(s, train_images) for s in sides}
    name, floor = _challenge(name, floor, fused, images, labels, masks, validation, choices)
    return FloorChoice(floor, name, validation, choices, note)
