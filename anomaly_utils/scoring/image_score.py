"""From a map to one image score: the candidate's own rule, or the scale-adaptive peak,
whichever the run's validation set prefers.

Each candidate has its own image score: the peak of its map after a mean filter of one size
(the floor: 5 eval pixels; AE-2's head: 8 % of the side), the map's peak, or, for the blend,
the mean of its parts' standardised scores. A filter of one size suits defects of about
that size. The **scale-adaptive peak** does not pick one: it takes the map's peak after mean
filters of several sizes (:data:`WINDOW_FRACTIONS` of the map's side, 1 to 65 pixels at 128),
standardises each by its mean and standard deviation over the clean validation normals, and
keeps the largest. A defect counts at the size at which it stands out most from normal
images: a large faint area at a wide window, a thin crack at a narrow one.

Which of the two a candidate uses is decided on its validation scores, by the image AUROC
that the selection judges (:func:`validation_image_auroc`: the pasted anomalies, and the
dataset's labelled validation defects where there are any); the candidate keeps its own rule
unless the scale-adaptive peak is higher (AE-1, the study's baseline, always keeps its own:
``Candidate.own_score_only``). Validation is a few hundred images, so the choice also
reports the scale-adaptive peak's lead over the own rule with its 90 % interval over
bootstrap resamples of them (:func:`~anomaly_utils.evaluation.choice_confidence.image_auroc_lead`):
an interval that spans zero is a choice validation cannot settle. The choice, its lead and
the normals' statistics are stored
in ``<candidate>/image_score.json`` (:func:`write_choice`), so that the ``score`` command
gives new images the score their thresholds were chosen on; a run made before this file
existed keeps its own rule. docs/experiments.md ("One image score per defect size") has the
measurements across the development sets.

Example:
    >>> normals = np.zeros((4, 32, 32)); normals[:, 0, 0] = [0.1, 0.2, 0.3, 0.4]
    >>> peak = ScaleAdaptivePeak.of_normals(normals)
    >>> wide = np.zeros((1, 32, 32)); wide[0, 8:24, 8:24] = 0.2  # weak but large
    >>> bool(peak.apply(wide)[0] > peak.apply(normals).max())
    True
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from anomaly_utils.artifacts import read_json, write_json
from anomaly_utils.errors import ArtifactError, DataError
from anomaly_utils.evaluation.choice_confidence import INTERVAL, image_auroc_lead
from anomaly_utils.evaluation.selection import validation_metrics

CHOICE_FILE = "image_score.json"  # in the candidate's folder
OWN, SCALE_ADAPTIVE = "own", "scale_adaptive"
RULES = (OWN, SCALE_ADAPTIVE)
# Mean-filter sides as fractions of the map's side; 0 is the single pixel.
WINDOW_FRACTIONS = (0.0, 1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2)
MIN_STD = 1e-6  # a window whose normals all peak alike is shifted, not divided by zero


def window_sizes(side: int) -> tuple[int, ...]:
    """The odd mean-filter sides for maps of ``side`` pixels (1, 5, 9, 17, 33, 65 at 128),
    without repeats."""
    return tuple(dict.fromkeys(2 * int(f * side / 2) + 1 for f in WINDOW_FRACTIONS))


def window_peaks(maps: np.ndarray, windows: tuple[int, ...]) -> np.ndarray:
    """(N, K) float64: each (E, E) map's maximum after a mean filter of each of K sides."""
    maps = np.asarray(maps, np.float32)
    peaks = np.empty((len(maps), len(windows)))
    for i, m in enumerate(maps):
        for k, w in enumerate(windows):
            filtered = cv2.blur(m, (w, w), borderType=cv2.BORDER_REFLECT) if w > 1 else m
            peaks[i, k] = filtered.max()
    return peaks


@dataclass(frozen=True)
class ScaleAdaptivePeak:
    """The largest standardised peak over mean-filter sides (see the module docstring).

    Attributes:
        windows: the K filter sides, eval pixels.
        mean, std: (K,) of each side's peak over the clean validation normals.
    """

    windows: tuple[int, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def of_normals(cls, maps: np.ndarray) -> ScaleAdaptivePeak:
        """Fitted on the maps (N, E, E) of N >= 1 defect-free images."""
        maps = np.asarray(maps)
        if maps.ndim != 3 or not len(maps):
            raise DataError(f"the scale-adaptive peak needs normal maps (N, E, E), N >= 1; "
                            f"got shape {maps.shape}", fix="score the validation normals first")
        windows = window_sizes(min(maps.shape[1:]))
        peaks = window_peaks(maps, windows)
        return cls(windows, tuple(peaks.mean(axis=0).tolist()),
                   tuple(np.maximum(peaks.std(axis=0), MIN_STD).tolist()))

    def apply(self, maps: np.ndarray) -> np.ndarray:
        """(N,) float32 image scores of maps (N, E, E), in standard deviations of the
        normals' peaks."""
        z = (window_peaks(maps, self.windows) - np.asarray(self.mean)) / np.asarray(self.std)
        return z.max(axis=1).astype(np.float32)


@dataclass
class ImageScoreChoice:
    """A candidate's image score: ``rule`` (:data:`RULES`), the validation image AUROC of
    each rule (None where validation has no anomalies), the fitted scale-adaptive peak, and
    the scale-adaptive peak's ``lead`` over the own rule on bootstrap resamples of the
    validation images (``{"mean", "low", "high"}``; None where validation has no anomalies
    or the choice was stored before leads were)."""

    rule: str
    validation_auroc: dict[str, float | None] = field(default_factory=dict)
    peak: ScaleAdaptivePeak | None = None
    lead: dict[str, float] | None = None

    def scores(self, own_scores: np.ndarray, maps: np.ndarray) -> np.ndarray:
        """The image scores (N,) float32 under this rule, from the candidate's own scores
        (N,) and its maps (N, E, E)."""
        if self.rule == SCALE_ADAPTIVE:
            return self.peak.apply(maps)
        return np.asarray(own_scores, np.float32)

    def row(self) -> dict[str, str | float | None]:
        """The choice as a table row for reports: the rule, each rule's validation image
        AUROC and the scale-adaptive peak's lead with its interval (``""`` without one)."""
        return {"image score": self.rule,
                **{f"validation AUROC, {rule}": self.validation_auroc.get(rule) for rule in RULES},
                f"scale-adaptive lead, {INTERVAL:.0%} interval": self.lead_text()}

    def lead_text(self) -> str:
        """``"+0.012 [-0.004, +0.028]"``: the lead and its interval; ``""`` without one."""
        if self.lead is None:
            return ""
        return f"{self.lead['mean']:+.3f} [{self.lead['low']:+.3f}, {self.lead['high']:+.3f}]"

    def describe(self) -> str:
        """One line for reports: the rule and the validation AUROCs it was chosen on."""
        own, adaptive = (self.validation_auroc.get(r) for r in RULES)
        if own is None or adaptive is None:
            return f"{self.rule.replace('_', '-')} (validation has no anomalies to compare)"
        text = (f"{self.rule.replace('_', '-')} (validation image AUROC: own "
                f"{own:.3f}, scale-adaptive {adaptive:.3f}")
        if self.lead is not None:
            text += f"; scale-adaptive's lead, {INTERVAL:.0%} interval: {self.lead_text()}"
        return text + ")"


def validation_image_auroc(val_pseudo: dict[str, np.ndarray]) -> float | None:
    """The image AUROC the selection judges: the mean of the pasted anomalies' and, where
    there are any, the labelled validation defects' (``val_pseudo`` as
    :func:`~anomaly_utils.evaluation.selection.validation_metrics` takes it)."""
    metrics = validation_metrics(val_pseudo)
    values = [metrics.get(k) for k in ("image_auroc", "labelled_image_auroc")]
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def choose_image_score(normal_maps: np.ndarray, val_pseudo: dict[str, np.ndarray],
                       own_only: bool = False) -> ImageScoreChoice:
    """The candidate's own rule, or the scale-adaptive peak if it ranks the validation set
    better.

    Args:
        normal_maps: (N, E, E) maps of the clean validation normals.
        val_pseudo: the pseudo-labelled validation scores, with the candidate's own
            ``scores`` (P,), ``maps`` (P, E, E), ``labels``, ``masks`` and optionally
            ``types`` and ``has_mask``.
        own_only: keep the own rule whatever validation says (both AUROCs are still
            reported).
    """
    peak = ScaleAdaptivePeak.of_normals(normal_maps)
    adaptive = peak.apply(val_pseudo["maps"])
    aurocs = {OWN: validation_image_auroc(val_pseudo),
              SCALE_ADAPTIVE: validation_image_auroc({**val_pseudo, "scores": adaptive})}
    compared = aurocs[OWN] is not None and aurocs[SCALE_ADAPTIVE] is not None
    better = not own_only and compared and aurocs[SCALE_ADAPTIVE] > aurocs[OWN]
    lead = image_auroc_lead(val_pseudo, adaptive) if compared else None
    return ImageScoreChoice(SCALE_ADAPTIVE if better else OWN, aurocs, peak, lead)


def write_choice(folder: str | os.PathLike, choice: ImageScoreChoice) -> None:
    """Store ``choice`` as ``folder/image_score.json``."""
    write_json(Path(folder) / CHOICE_FILE,
               {"rule": choice.rule, "validation_auroc": choice.validation_auroc,
                "peak": asdict(choice.peak) if choice.peak else None, "lead": choice.lead})


def read_choice(folder: str | os.PathLike) -> ImageScoreChoice:
    """The choice stored in ``folder``; the candidate's own rule where there is none (a run
    made before the choice was stored)."""
    path = Path(folder) / CHOICE_FILE
    if not path.is_file():
        return ImageScoreChoice(OWN)
    try:
        stored = read_json(path)
        peak = stored["peak"] and ScaleAdaptivePeak(
            *(tuple(stored["peak"][k]) for k in ("windows", "mean", "std")))
        lead = stored.get("lead")  # None in a run made before leads were stored
        choice = ImageScoreChoice(stored["rule"], dict(stored["validation_auroc"]), peak,
                                  lead and {k: float(lead[k]) for k in ("mean", "low", "high")})
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"'{path}' does not describe an image score ({exc})",
                            fix="rerun the notebook that scored this candidate") from exc
    if choice.rule not in RULES or (choice.rule == SCALE_ADAPTIVE and choice.peak is None):
        raise ArtifactError(f"'{path}' names rule {choice.rule!r} without what it needs",
                            fix="rerun the notebook that scored this candidate")
    return choice
