"""Range checks of notebook parameters, run before any notebook starts.

Type conversion happens in :mod:`anomaly_utils.pipeline` (to the type of the notebook's
default); here each known name gets a rule, so that ``-p epochs -3`` or an image size the
model's strides cannot divide fails in a second with the parameter named, not an hour into a
run. The builders in :mod:`anomaly_utils.models` check the same things for direct callers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .errors import ParameterError
from .images import COLOR_MODES

Rule = Callable[[Any], str | None]
# How AE-2's training inputs are corrupted (training.patch_dataset), here so that the
# parameter check needs no TensorFlow.
CORRUPT_MODES = ("rectangle", "grid", "rectangle+shading")


def _positive_int(value: Any) -> str | None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        return "must be a positive integer"
    return None


def _non_negative_int(value: Any) -> str | None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        return "must be an integer >= 0"
    return None


def _non_negative(value: Any) -> str | None:
    if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
        return "must be a number >= 0"
    return None


def _positive(value: Any) -> str | None:
    if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
        return "must be a number > 0"
    return None


def _fraction(value: Any) -> str | None:
    if not isinstance(value, int | float) or not 0 < value < 1:
        return "must be strictly between 0 and 1"
    return None


def _percent(value: Any) -> str | None:
    if not isinstance(value, int | float) or not 0 < value <= 100:
        return "must be in (0, 100]"
    return None


def _unit_interval(value: Any) -> str | None:
    if not isinstance(value, int | float) or not 0 <= value <= 1:
        return "must be in [0, 1]"
    return None


def _multiple_of(n: int) -> Rule:
    def rule(value: Any) -> str | None:
        if _positive_int(value) or value % n:
            return f"must be a positive multiple of {n} (the model's total stride)"
        return None
    return rule


def _map_kind(value: Any) -> str | None:
    from .scoring import map_components

    try:
        map_components(value)
    except ParameterError as error:
        return f"is not a valid map kind ({error.message}; {error.fix})"
    return None


def _one_of(*choices: str) -> Rule:
    def rule(value: Any) -> str | None:
        return None if value in choices else f"must be one of {choices}"
    return rule


COMMON: dict[str, Rule] = {
    "epochs": _positive_int, "batch_size": _positive_int, "learning_rate": _positive,
    "val_fraction": _fraction, "eval_size": _multiple_of(8), "seed": _non_negative,
    "color_mode": _one_of(*COLOR_MODES), "early_stopping_patience": _non_negative,
    "latent_dim": _positive_int, "map_kind": _map_kind,
}
RULES: dict[str, dict[str, Rule]] = {
    "01_data_exploration": {"image_size": _positive_int, "n_samples": _positive_int,
                            "color_mode": COMMON["color_mode"], "seed": _non_negative},
    "02_train_ae1": {**COMMON, "image_size": _multiple_of(8), "variant": _one_of("ae", "vae"),
                     "vae_samples": _non_negative},
    "03_train_ae2": {**COMMON, "image_size": _multiple_of(16), "patch_size": _multiple_of(16),
                     "patches_per_epoch": _positive_int, "stride": _positive_int,
                     "ssim_weight": _non_negative, "l1_weight": _non_negative,
                     "gms_weight": _non_negative,
                     "smooth_sigma": _non_negative, "topk_percent": _percent,
                     "score_method": _one_of("max", "mean", "topk"),
                     "bottleneck": _one_of("global", "spatial", "unet"),
                     "corrupt": _unit_interval,
                     "corrupt_mode": _one_of("auto", *CORRUPT_MODES),
                     "ensemble_size": _positive_int, "pad": _non_negative_int},
    "04_threshold_selection": {
        "strategy": _one_of("percentile", "mean_std", "max", "target_fpr", "f1_optimal"),
        "percentile": _percent, "k_std": _non_negative, "target_fpr": _fraction,
        "pixel_percentile": _percent, "min_defect_area": _non_negative,
        "n_bootstrap": _positive_int},
    "05_results_gallery": {"per_defect": _positive_int, "rows_per_figure": _positive_int},
}


def validate(notebook: str, params: dict[str, Any]) -> None:
    """Check ``params`` of ``notebook`` against its rules.

    Raises:
        ParameterError: naming the parameter, the notebook, the value and the valid range.
    """
    for name, rule in RULES.get(notebook, {}).items():
        if name in params and (problem := rule(params[name])):
            raise ParameterError(f"parameter '{name}' of {notebook} {problem}, got "
                                 f"{params[name]!r}", fix=f"pass a valid value with -p {name} ...")
    sizes = {"patch_size", "image_size"} <= params.keys()
    if notebook == "03_train_ae2" and sizes and params["patch_size"] > params["image_size"]:
        raise ParameterError(
            f"parameter 'patch_size' ({params['patch_size']}) of {notebook} is larger "
            f"than image_size ({params['image_size']})",
            fix="use a patch_size <= image_size")
    if notebook == "03_train_ae2" and params.get("pad", 0) >= params.get("image_size", 1 << 30):
        raise ParameterError(
            f"parameter 'pad' ({params['pad']}) of {notebook} must be smaller than image_size "
            f"({params['image_size']})", fix="use a pad of a few patches' strides, e.g. 16")
    if notebook == "03_train_ae2" and params.get("pad") and params.get("bottleneck") == "unet":
        raise ParameterError(
            f"parameter 'pad' ({params['pad']}) of {notebook} needs sliding-window scoring, "
            "but the unet bottleneck is scored by inpainting whole images",
            fix="use -p pad 0 with -p bottleneck unet")
