"""``run --preset auto``: one run per preset on the same data, and the candidate the
validation data prefers among all of them.

No fixed setting serves every dataset: on magnetic_tile the default AE-2 (128 px, 64 px
patches) is beaten by the training-free floor while the real-data preset's AE-2 (whole tiles
at 64 px) is the best candidate, and the preset hurts elsewhere. Each run already scores its
candidates on the run's shared pseudo-labelled validation set, built from the same held-out
files and seed whatever the preset (:mod:`anomaly_utils.scoring.validation_set`), so the
runs' validation selection scores compare directly. The auto run makes each preset's run
(``<id>-defaults``, ``<id>-real``), keeps every one of them, and writes ``<id>-auto.json``
with each run's recommended candidate and score and the one chosen; the test split takes no
part. Running the same command with the same ``--run-id`` again resumes the runs that did not
finish. Notebooks whose parameters a preset does not change (the data summary and the floor
of notebook 01, AE-1 of notebook 02 with the real preset) run once, in the first run, and the
later runs take their outputs (:func:`~anomaly_utils.pipeline.sharing.share_identical_notebooks`).

Auto is what ``run --data-dir DIR`` does for any dataset other than the synthetic carpet the
notebooks default to (:func:`default_preset`); ``--preset defaults`` makes the one run with
the notebooks' defaults.

The auto record also says how sure the shared validation set is of the choice between the
runs (:func:`runs_confidence`). Measured (docs/experiments.md, "Settings the data chooses"):
on magnetic_tile the defaults' run recommends the blend (validation 0.742, test image AUROC
0.773) and the real preset's run its blend (validation 0.875, test 0.922), first in every
bootstrap resample, so the auto run's choice is the blend of ``-real``; 26 minutes on a
2-core Intel Xeon.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from anomaly_utils.artifacts import read_json, write_json
from anomaly_utils.errors import ArtifactError, LabError, ParameterError
from anomaly_utils.evaluation.choice_confidence import bootstrap_choice, describe
from anomaly_utils.pipeline.parameters import (
    DEFAULTS,
    NOTEBOOKS,
    preset_overrides,
    resolve_parameters,
    validate,
)
from anomaly_utils.pipeline.run_ids import claim_new_id
from anomaly_utils.pipeline.runs import create_run, run_pipeline
from anomaly_utils.pipeline.sharing import share_identical_notebooks
from anomaly_utils.scoring.stored import load_scores

AUTO = "auto"
AUTO_PRESETS = (None, "real")  # the notebooks' defaults, then notebooks/params/real.yaml


def preset_label(preset: str | None) -> str:
    return preset or DEFAULTS


def default_preset(data_dir: str | None, until: str | None) -> tuple[str | None, str]:
    """The preset ``run`` uses when none is given, and why, as one line for the console.

    Auto for a dataset other than the synthetic carpet that the notebooks default to: no
    fixed setting serves every real set, so both presets run and validation chooses. The
    defaults alone for the carpet (they were developed on it), and with ``--until``, which
    stops before notebook 04 makes the choice.

    Args:
        data_dir: the ``--data-dir`` (or ``-p data_dir``) given, None when none was.
        until: the ``--until`` notebook, None when none was given.
    """
    default_dir = resolve_parameters({})[NOTEBOOKS[0]]["data_dir"]
    if data_dir is None or Path(data_dir).expanduser().resolve() == Path(default_dir):
        return None, "the notebooks' defaults (the synthetic carpet)"
    if until:
        return None, (f"the notebooks' defaults: --until {until} stops before the choice "
                      f"that --preset {AUTO} makes")
    return AUTO, (f"{AUTO}, the default for a dataset other than the synthetic carpet: one run "
                  f"with the defaults and one with --preset real, then the candidate with the "
                  f"best validation score (--preset {DEFAULTS} makes the first run alone)")


def check_presets(overrides: dict[str, Any]) -> None:
    """Check the parameters of every preset's run before any run starts.

    Raises:
        ParameterError: as :func:`~anomaly_utils.pipeline.parameters.validate`, naming the
            preset whose values clash with ``overrides``.
    """
    for preset in AUTO_PRESETS:
        try:
            for notebook, params in resolve_parameters(
                    {**preset_overrides(preset), **overrides}).items():
                validate(notebook, params)
        except ParameterError as error:
            if preset is None:
                raise
            raise ParameterError(f"with --preset {preset} (run by --preset {AUTO}): {error.message}",
                                 fix=error.fix) from None


def run_auto(overrides: dict[str, Any], run_id: str | None = None,
             runs_dir: str | os.PathLike = "runs", progress: bool = True, log=print,
             backend: str | None = None) -> Path:
    """Run every preset of :data:`AUTO_PRESETS` with ``overrides`` on top and choose.

    Args:
        overrides: parameters over each preset (``data_dir``, ``-p`` pairs); they win over
            the preset's values.
        run_id: the base id; the runs are ``<id>-<preset>``, and an id whose runs exist
            continues them. Default: a fresh timestamp, claimed as its first run is made.
        runs_dir, progress, log, backend: as for :func:`run_pipeline`.

    Returns:
        The chosen run's directory.

    Raises:
        ParameterError: ``overrides`` has no ``data_dir``.
        ArtifactError: a run finished without a recommendation (no ``metrics.json``).
    """
    if "data_dir" not in overrides:
        raise ParameterError("--preset auto needs --data-dir",
                             fix="pass the dataset folder with --data-dir")
    check_presets(overrides)
    runs_dir = Path(runs_dir)
    first_suffix = f"-{preset_label(AUTO_PRESETS[0])}"

    def create_first(base: str) -> str:  # claims a fresh base id (run_ids.claim_new_id)
        create_run({**preset_overrides(AUTO_PRESETS[0]), **overrides}, runs_dir / (base + first_suffix),
                   backend=backend)
        return base
    base = run_id or claim_new_id(runs_dir, create_first)
    results = {}
    for preset in AUTO_PRESETS:
        label = preset_label(preset)
        sub_id = f"{base}-{label}"
        log(f"== {AUTO}: the run with {label} ({sub_id})")
        if not (runs_dir / sub_id / "params.json").is_file():
            create_run({**preset_overrides(preset), **overrides}, runs_dir / sub_id,
                       backend=backend)
            if results:  # what this preset does not change is taken from the first run
                first = runs_dir / next(iter(results.values()))["run"]
                shared = share_identical_notebooks(first, runs_dir / sub_id)
                if shared:
                    log(f"{AUTO}: {', '.join(shared)} as in {first.name} (same parameters), "
                        f"reused")
        run_dir = run_pipeline({}, run_id=sub_id, runs_dir=runs_dir, resume=True,
                               progress=progress, log=log, backend=backend)
        metrics_path = run_dir / "metrics.json"
        if not metrics_path.is_file():
            raise ArtifactError(f"run '{sub_id}' has no metrics.json, so it recommends nothing",
                                fix=f"resume it: python -m anomaly_utils run --resume {sub_id}")
        choice = read_json(metrics_path)["choice"]
        results[label] = {"run": sub_id, "model": choice["model"], "score": choice["score"],
                          "by": choice["by"]}
    chosen = max(results, key=lambda label: results[label]["score"])  # ties: the first
    best = results[chosen]
    others = "; ".join(f"{label}: {r['model']} {r['score']:.3f}"
                       for label, r in results.items() if label != chosen)
    reason = (f"{best['model']} of the run with {chosen} has the highest validation "
              f"selection score ({best['score']:.3f}; {others})")
    confidence, note = runs_confidence(runs_dir, results, chosen)
    reason += f"; {describe(confidence)}" if confidence else f"; {note}"
    write_json(runs_dir / f"{base}-{AUTO}.json",
               {"runs": results, "chosen": {"preset": chosen, **best}, "reason": reason,
                "confidence": confidence})
    log(f"{AUTO}: {reason}; test columns for report only")
    return runs_dir / best["run"]


def runs_confidence(runs_dir: Path, results: dict[str, dict[str, Any]],
                    chosen: str) -> tuple[dict[str, Any] | None, str]:
    """How sure the shared validation set is that the chosen run's candidate beats the other
    runs' (:func:`~anomaly_utils.evaluation.choice_confidence.bootstrap_choice` over their
    ``scores_val_pseudo.npz``, seed 0), or None and why not."""
    names = {label: f"{label}: {r['model']}" for label, r in results.items()}
    try:
        val_pseudo = {names[label]: load_scores(runs_dir / r["run"] / r["model"] /
                                                "scores_val_pseudo.npz")
                      for label, r in results.items()}
        ranking = sorted(val_pseudo, key=lambda name: name != names[chosen])
        return bootstrap_choice(val_pseudo, ranking=ranking), ""
    except LabError as error:  # a run without validation scores, or with other images
        return None, f"no bootstrap of the choice: {error.message}"
