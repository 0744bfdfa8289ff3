"""An auto run's candidates scored with this checkout's scoring, on its stored models.

Like ``refit_floor.py`` (whose copying and resuming it uses): copies the two runs of an auto
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

from refit_floor import RERUN, copied, resumed  # experiments/ is the script's folder

from anomaly_utils.artifacts import read_json, write_json
from anomaly_utils.data.loading import load_dataset
from anomaly_utils.evaluation import metrics
from anomaly_utils.pipeline.auto import AUTO_PRESETS, preset_label
from anomaly_utils.pipeline.parameters import NOTEBOOKS
from anomaly_utils.pipeline.runs import read_status
from anomaly_utils.pipeline.sharing import take_outputs
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
        ds = load_dataset(params["data_dir"], image_size=params["image_size"],
                          color_mode=scorer.config.color_mode,
                          val_fraction=params["val_fraction"], seed=params["seed"],
                          mask_size=params["eval_size"],
                          allow_missing_masks=params.get("allow_missing_masks", False))
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
    first, choices = None, {}
    for preset in AUTO_PRESETS:
        label = preset_label(preset)
        source = args.source.with_name(f"{args.source.name}-{label}")
        target = copied(source, args.target.with_name(f"{args.target.name}-{label}"), RERUN)
        if first is None:
            first = target
        else:  # notebook 01 as the first run made it, as --preset auto shares it
            take_outputs(NOTEBOOKS[0], first, target, reused_from=first.name)
            status = read_status(target)
            for state in status.values():
                if state.get("reused_from"):
                    state["reused_from"] = first.name
            write_json(target / "status.json", status)
        rescore_models(target)
        choice = resumed(target)
        compare(source, target)
        choices[label] = {"run": target.name, "model": choice["model"], "score": choice["score"]}
        print(f"{target.name}: {choice['model']} ({choice['score']:.3f})")
    chosen = max(choices, key=lambda label: choices[label]["score"])  # ties: the first
    print(f"auto: {choices[chosen]['model']} of {choices[chosen]['run']} "
          f"({choices[chosen]['score']:.3f})")
    return {"runs": choices, "chosen": chosen}


if __name__ == "__main__":
    main()
