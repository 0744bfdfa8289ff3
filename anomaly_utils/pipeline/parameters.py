"""The notebooks' parameters: what each notebook declares in its ``parameters`` cell (name,
default, type), the allowed range of each value, and how command-line overrides are resolved.

``NAME`` applies to every notebook that declares it; ``ae1.NAME`` / ``ae2.NAME`` (or
``02.NAME``) to one notebook only. An unknown name is an error that lists the notebooks and
what they accept; values are converted to the type of the notebook's default and checked
against :data:`RULES` before anything runs.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anomaly_utils.data.images import AUTO_COLOR, COLOR_MODES
from anomaly_utils.data.loading import VAL_SPLITS
from anomaly_utils.data.training_anomalies import FILL_KINDS
from anomaly_utils.errors import ParameterError
from anomaly_utils.models.vocabulary import HEAD_TRAININGS
from anomaly_utils.scoring import statistics_floor as floor
from anomaly_utils.scoring.candidates import REGISTRY
from anomaly_utils.scoring.eigen_residual import floor_eigen_problem
from anomaly_utils.scoring.map_kinds import HEADS, map_components
from anomaly_utils.training.masks import CORRUPT_MODES
from anomaly_utils.training.strategy import STRATEGIES

REPO_ROOT = Path(__file__).resolve().parents[2]


def _notebook_dir() -> Path:
    """The notebooks a run executes: a checkout's ``notebooks/``, else the copy installed
    with the package (``anomaly_utils/notebooks``, see pyproject.toml)."""
    checkout = REPO_ROOT / "notebooks"
    if (checkout / "01_data_exploration.ipynb").is_file():
        return checkout
    return Path(__file__).resolve().parents[1] / "notebooks"


NOTEBOOK_DIR = _notebook_dir()
NOTEBOOKS = ("01_data_exploration", "02_train_ae1", "03_train_ae2", "04_threshold_selection",
             "05_results_gallery")
# -p SCOPE.NAME: a notebook by its number, the data notebook, or a fitted candidate's notebook.
SCOPES = {**{nb[:2]: nb for nb in NOTEBOOKS}, "data": NOTEBOOKS[0],
          **{c.name: c.notebook for c in REGISTRY if not c.parts}}
PATH_PARAMETERS = ("data_dir", "run_dir")
DEFAULTS = "defaults"  # the preset name of the notebooks' own defaults


@dataclass(frozen=True)
class Declared:
    """A parameter as declared in a notebook's ``parameters`` cell."""

    name: str
    default: Any
    help: str


def declared_parameters(notebook: str | Path) -> dict[str, Declared]:
    """Parameters declared by a notebook's cell tagged ``parameters``, with their defaults."""
    import papermill

    path = Path(notebook)
    if not path.suffix:
        path = NOTEBOOK_DIR / f"{notebook}.ipynb"
    declared = {}
    for name, info in papermill.inspect_notebook(str(path)).items():
        try:
            default = ast.literal_eval(info["default"])
        except (ValueError, SyntaxError):
            default = info["default"]
        declared[name] = Declared(name, default, info.get("help", ""))
    return declared


def coerce(name: str, value: Any, default: Any) -> Any:
    """Convert a command-line string ``value`` to the type of the notebook's ``default``."""
    if not isinstance(value, str) or isinstance(default, str):
        return value
    if value.lower() in ("none", "null"):
        return None
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        parsed = value
    if isinstance(default, bool):
        if isinstance(parsed, bool):
            return parsed
        if value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
    elif isinstance(default, int):
        if isinstance(parsed, int) and not isinstance(parsed, bool):
            return parsed
    elif isinstance(default, float):
        if isinstance(parsed, int | float) and not isinstance(parsed, bool):
            return float(parsed)
    elif default is None or isinstance(default, list | tuple | dict):
        return parsed
    raise ParameterError(
        f"parameter '{name}' expects a {type(default).__name__} (default {default!r}), "
        f"got {value!r}", fix=f"pass e.g. -p {name} {default!r}")


def _notebook_default(name: str, default: Any) -> Any:
    """A declared default as the run uses it: relative paths are taken from ``notebooks/``.

    The parameters cells are written for a kernel whose working directory is ``notebooks/``
    (``"../data/synthetic_carpet"``), while paths given on the command line are taken from
    the caller's working directory; both are made absolute so that the pre-flight checks and
    the notebooks see the same folder wherever the command was typed.
    """
    if name in PATH_PARAMETERS and isinstance(default, str) and default:
        return str((NOTEBOOK_DIR / Path(default).expanduser()).resolve())
    return default


def resolve_parameters(overrides: dict[str, Any],
                       notebooks: tuple[str, ...] = NOTEBOOKS) -> dict[str, dict[str, Any]]:
    """Each notebook's effective parameters: its declared defaults, then ``overrides``.

    Raises:
        ParameterError: a name no notebook declares, an unknown scope, or a wrong type.
    """
    declared = {nb: declared_parameters(nb) for nb in notebooks}
    effective = {nb: {name: _notebook_default(name, d.default) for name, d in params.items()}
                 for nb, params in declared.items()}
    for key, value in overrides.items():
        scope, _, name = key.rpartition(".")
        if scope and scope not in SCOPES:
            raise ParameterError(f"unknown scope '{scope}' in parameter '{key}'",
                                 fix=f"use one of {sorted(SCOPES)} (e.g. ae2.epochs)")
        targets = [SCOPES[scope]] if scope else list(notebooks)
        hits = [nb for nb in targets if nb in declared and name in declared[nb]]
        if not hits:
            accepted = "; ".join(f"{nb}: {', '.join(declared[nb])}" for nb in targets
                                 if nb in declared)
            where = f"notebook {targets[0]}" if scope else "any notebook"
            raise ParameterError(f"parameter '{key}' is not declared by {where} ({accepted})",
                                 fix="check the spelling against the parameters cells")
        for nb in hits:
            value_here = value
            if name in PATH_PARAMETERS and isinstance(value, str) and value:
                value_here = str(Path(value).expanduser().resolve())
            effective[nb][name] = coerce(key, value_here, declared[nb][name].default)
    return effective


Rule = Callable[[Any], str | None]


def _int_at_least(low: int, words: str) -> Rule:
    def rule(value: Any) -> str | None:
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
        return None if ok else f"must be {words}"
    return rule


_positive_int = _int_at_least(1, "a positive integer")
_non_negative_int = _int_at_least(0, "an integer >= 0")
_at_least_ten = _int_at_least(10, "an integer >= 10 (bootstrap resamples)")


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

    try:
        map_components(value)
    except ParameterError as error:
        return f"is not a valid map kind ({error.message}; {error.fix})"
    return None


def _widths(value: Any) -> str | None:
    if not isinstance(value, list | tuple) or not value or any(_positive_int(v) for v in value):
        return "must be a non-empty list of positive integers, e.g. [16, 32, 64]"
    return None


def _fills(value: Any) -> str | None:
    if not isinstance(value, list | tuple) or not value or any(v not in FILL_KINDS
                                                                 for v in value):
        return f"must be a non-empty list of {FILL_KINDS}"
    return None


def _range_in_unit_interval(value: Any) -> str | None:
    if not isinstance(value, list | tuple) or len(value) != 2 \
            or any(_unit_interval(v) for v in value) or value[0] > value[1]:
        return "must be [low, high] with 0 <= low <= high <= 1"
    return None


def _clean_fraction(value: Any) -> str | None:
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value < 1:
        return "must be in [0, 1) (1 would leave no anomaly to learn from)"
    return None


def _window_fraction(value: Any) -> str | None:
    bad = not isinstance(value, int | float) or isinstance(value, bool) or not 0 < value <= 1
    return "must be in (0, 1], a fraction of the image side" if bad else None


def _one_of(*choices: str) -> Rule:
    def rule(value: Any) -> str | None:
        return None if value in choices else f"must be one of {choices}"
    return rule


THRESHOLD_STRATEGIES = ("percentile", "mean_std", "max", "target_fpr", "f1_optimal")


# "strategy" names two things: how 02 and 03 distribute training, and how 04 picks its
# threshold. An unscoped -p strategy VALUE reaches all three, so each rule names the scoped
# form when it sees the other meaning's value.
def _strategy_rule(meaning: str, choices: tuple[str, ...], other_meaning: str,
                   other_choices: tuple[str, ...], scoped: str) -> Rule:
    """A rule for one meaning of "strategy"; ``scoped`` is the fix, with ``{value}`` in it."""
    def rule(value: Any) -> str | None:
        if value in choices:
            return None
        hint = (f"; {value!r} is {other_meaning}, which {scoped.format(value=value)}"
                if value in other_choices else "")
        return f"({meaning}) must be one of {choices}{hint}"
    return rule


_distribution = _strategy_rule(
    "the training distribution", STRATEGIES, "a threshold strategy", THRESHOLD_STRATEGIES,
    "notebook 04 takes: -p 04.strategy {value}")
_threshold_strategy = _strategy_rule(
    "the threshold strategy", THRESHOLD_STRATEGIES, "a training distribution", STRATEGIES,
    "notebooks 02 and 03 take: -p ae1.strategy {value} -p ae2.strategy {value}")


def _devices(value: Any) -> str | None:
    if value is None or (isinstance(value, list | tuple) and value
                         and all(isinstance(d, str) and d for d in value)):
        return None
    return "must be None or a list of device names such as ['/gpu:0', '/gpu:1']"


COMMON: dict[str, Rule] = {
    "epochs": _positive_int, "batch_size": _positive_int, "learning_rate": _positive,
    "val_fraction": _fraction, "val_split": _one_of(*VAL_SPLITS), "eval_size": _multiple_of(8),
    "seed": _non_negative, "color_mode": _one_of(AUTO_COLOR, *COLOR_MODES),
    "early_stopping_patience": _non_negative, "latent_dim": _positive_int, "map_kind": _map_kind}
RULES: dict[str, dict[str, Rule]] = {
    "01_data_exploration": {"image_size": _positive_int, "n_samples": _positive_int,
                            "seed": _non_negative, **{name: COMMON[name] for name in (
                                "color_mode", "val_fraction", "val_split", "eval_size")},
                            "floor_variant": _one_of("auto", *floor.FLOOR_VARIANTS),
                            "floor_gradient": _one_of("auto", *floor.GRADIENT_FEATURES),
                            "floor_form": _one_of("auto", *floor.FLOOR_FORMS),
                            "floor_normalize": _one_of("auto", *floor.NORMALISATIONS),
                            "floor_image_size": _positive_int, "floor_eigen": floor_eigen_problem,
                            "floor_windows": floor.floor_windows_problem},
    "02_train_ae1": {**COMMON, "image_size": _multiple_of(8), "variant": _one_of("ae", "vae"),
                     "vae_samples": _non_negative, "strategy": _distribution,
                     "devices": _devices},
    "03_train_ae2": {**COMMON, "strategy": _distribution, "devices": _devices,
                     "image_size": _multiple_of(16), "patch_size": _multiple_of(16),
                     "patches_per_epoch": _positive_int, "stride": _positive_int,
                     "ssim_weight": _non_negative, "l1_weight": _non_negative,
                     "gms_weight": _non_negative,
                     "smooth_sigma": _non_negative, "topk_percent": _percent,
                     "score_method": _one_of("max", "mean", "topk"),
                     "bottleneck": _one_of("global", "spatial", "unet"),
                     "corrupt": _unit_interval,
                     "corrupt_mode": _one_of("auto", *CORRUPT_MODES),
                     "ensemble_size": _positive_int, "pad": _non_negative_int,
                     "collapse_retries": _non_negative_int,
                     "head": _one_of(*HEADS), "head_training": _one_of(*HEAD_TRAININGS),
                     "head_widths": _widths, "head_epochs": _positive_int,
                     "head_patches_per_epoch": _positive_int,
                     "head_learning_rate": _positive, "focal_gamma": _non_negative,
                     "anomaly_fills": _fills, "anomaly_opacity": _range_in_unit_interval,
                     "anomaly_clean_fraction": _clean_fraction,
                     "head_score_window": _window_fraction},
    "04_threshold_selection": {
        "strategy": _threshold_strategy,
        "percentile": _percent, "k_std": _non_negative, "target_fpr": _fraction,
        "pixel_percentile": _percent, "min_defect_area": _non_negative,
        "n_bootstrap": _at_least_ten, "hedge": _one_of("blend", "none")},
    "05_results_gallery": {"per_defect": _positive_int, "rows_per_figure": _positive_int,
                           "show_inline": _one_of("recommended", "all")},
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
    if notebook == "03_train_ae2" and params.get("head", "none") != "none" and \
            params.get("bottleneck") == "unet":
        raise ParameterError(
            f"parameter 'head' ({params['head']!r}) of {notebook} works on a plain AE-2, "
            f"not with the unet bottleneck ({params.get('bottleneck')!r})",
            fix="use -p head none, or bottleneck spatial or global")
    if notebook == "03_train_ae2" and params.get("pad") and params.get("bottleneck") == "unet":
        raise ParameterError(
            f"parameter 'pad' ({params['pad']}) of {notebook} needs sliding-window scoring, "
            "but the unet bottleneck is scored by inpainting whole images",
            fix="use -p pad 0 with -p bottleneck unet")


def check_parameters(notebook: str, namespace: dict[str, Any]) -> None:
    """Check a notebook's parameters where it runs (JupyterLab, papermill, nbval): its first
    code cell calls this, so a value edited by hand fails as :func:`validate` fails on the
    command line, before data is loaded or a model trained.

    Args:
        notebook: the notebook's name, e.g. ``"03_train_ae2"``.
        namespace: the kernel's variables (``globals()``), the parameters' current values.

    Raises:
        ParameterError: as :func:`validate`, naming the parameter, its value and the range.
    """
    if notebook not in RULES:
        raise ParameterError(f"notebook {notebook!r} has no parameter rules",
                             fix=f"use one of {sorted(RULES)}")
    validate(notebook, {name: namespace[name] for name in RULES[notebook] if name in namespace})


def preset_overrides(name: str | None) -> dict[str, Any]:
    """The parameters of preset ``notebooks/params/<name>.yaml`` (``{}`` for None and
    :data:`DEFAULTS`, the notebooks' own defaults).

    Raises:
        ParameterError: no such preset, naming the ones there are.
    """
    if not name or name == DEFAULTS:
        return {}
    import yaml

    path = NOTEBOOK_DIR / "params" / f"{name}.yaml"
    if not path.is_file():
        available = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise ParameterError(f"preset '{name}' does not exist ({path})",
                             fix=f"use one of {available}, {DEFAULTS} or auto")
    return {str(k): v for k, v in (yaml.safe_load(path.read_text()) or {}).items()}
