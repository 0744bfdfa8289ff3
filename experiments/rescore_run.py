"""An auto run's candidates scored with this checkout's scoring, on its stored models.

Like ``refit_floor.py`` (whose :func:`rerun_auto` it calls): copies the two runs of an auto
run to ``<target>-defaults`` and ``<target>-real``, fits the floor again (notebook 01), and
then, unlike it, scores the stored AE-1 and AE-2 of each copy again with this checkout's
``score_splits`` (no training: the models are loaded as they were saved) before notebooks 04
and 05 rerun. What changes is only what scoring does after the maps (for example the image
score a candidate's validation set chooses, ``scoring/image_score.py``). Prints, per run,
each candidate's image score with its validation image AUROCs and the test image AUROC
before and after, the run's choice, and the auto choice among the runs.

Usage::

    python experiments/rescore_run.py runs/mt-e2e runs/mt-rescored   # 8 minutes on magnetic_tile
"""

from __future__ import annotations

import argparse
from pathlib import Path

from refit_floor import rerun_auto  # experiments/ is the script's folder

from anomaly_utils.artifacts import read_json
from anomaly_utils.data.loading import load_run_dataset
from anomaly_utils.evaluation import metrics
from anomaly_utils.scoring.candidates import BY_NAME, CANDIDATES, MODELS
from anomaly_utils.scoring.image_score import RULES, read_choice
from anomaly_utils.scoring.scorer import Scorer
from anomaly_utils.scoring.stored import score_splits


def rescore_models(run_dir: Path) -> None:
    """Score every stored network of ``run_dir`` again with its notebook's data settings."""
    notebooks = read_json(run_dir / "params.json")["notebooks"]
    for name in MODELS:
        params = notebooks[BY_NAME[name].notebook]
        scorer = Scorer.load(run_dir, name)
        ds = load_run_dataset(params, color_mode=scorer.config.color_mode)
        score_splits(scorer, ds, run_dir, params["seed"])
        print(f"{run_dir.name}: {name} scored again")


def compare(source: Path, target: Path) -> None:
    """Per candidate: the image score chosen, its validation image AUROC under each rule, and
    the test image AUROC of the source run against the rescored one."""
    before, after = (read_json(run / "metrics.json") for run in (source, target))
    print(f"{target.name}: candidate, image score, validation own / scale-adaptive, "
          f"test image AUROC before -> after")
    for name in CANDIDATES:
        choice = read_choice(target / name)
        own, adaptive = (metrics.shown(choice.validation_auroc.get(r), 3) for r in RULES)
        print(f"  {name:6s} {choice.rule:15s} {own} / {adaptive}   "
              f"{metrics.shown(before[name]['image_auroc'], 3)} -> "
              f"{metrics.shown(after[name]['image_auroc'], 3)}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("source", type=Path, help="the auto run's base, e.g. runs/mt-e2e")
    parser.add_argument("target", type=Path, help="the copies' base, e.g. runs/mt-rescored")
    args = parser.parse_args(argv)
    return rerun_auto(args.source, args.target, prepare=rescore_models, report=compare)


if __name__ == "__main__":
    main()
