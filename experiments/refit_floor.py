"""An auto run's candidates with the floor of this checkout, on its stored autoencoders.

Copies the two runs of an auto run (``<source>-defaults``, ``<source>-real``) to
``<target>-defaults`` and ``<target>-real``, marks notebooks 01 (the data summary and the
floor), 04 (thresholds, the blend and the choice) and 05 (the gallery) unfinished and
resumes them: the floor is fitted again with this checkout's code, the trained AE-1 and AE-2
(notebooks 02 and 03) are kept as they were. The second run takes notebook 01's outputs from
the first, as ``--preset auto`` does. Prints each run's choice and the auto choice among
them, as ``pipeline/auto.py`` makes it (the source runs are left untouched).

Usage::

    python experiments/refit_floor.py runs/mt-auto runs/mt-refit    # 6 minutes on ELPV mono

A resumed run warns that its environment changed and records it in ``env.json``.
"""

from __future__ import annotations

import argparse
import shutil
from collections.abc import Callable
from pathlib import Path

from anomaly_utils.artifacts import read_json, write_json
from anomaly_utils.pipeline.auto import AUTO_PRESETS, preset_label
from anomaly_utils.pipeline.parameters import NOTEBOOKS
from anomaly_utils.pipeline.runs import read_status, run_pipeline
from anomaly_utils.pipeline.sharing import take_outputs

RERUN = (NOTEBOOKS[0], NOTEBOOKS[3], NOTEBOOKS[4])


def copied(source: Path, target: Path, rerun: tuple[str, ...]) -> Path:
    """``source`` copied to ``target`` with the notebooks ``rerun`` marked unfinished."""
    if target.exists():
        raise SystemExit(f"{target} exists; choose another target")
    shutil.copytree(source, target)
    status = read_status(target)
    for notebook in rerun:
        status.pop(notebook, None)
    write_json(target / "status.json", status)
    return target


def resumed(run_dir: Path) -> dict:
    run_pipeline({}, run_id=run_dir.name, runs_dir=run_dir.parent, resume=True, progress=False)
    return read_json(run_dir / "metrics.json")["choice"]


def rerun_auto(source_base: Path, target_base: Path,
               prepare: Callable[[Path], None] = lambda target: None,
               report: Callable[[Path, Path], None] = lambda source, target: None) -> dict:
    """Copy both runs of the auto run ``source_base``, ``prepare`` each copy, resume it
    (notebooks :data:`RERUN`), ``report`` on it; print each run's choice and the auto choice."""
    first, choices = None, {}
    for preset in AUTO_PRESETS:
        label = preset_label(preset)
        source = source_base.with_name(f"{source_base.name}-{label}")
        target = copied(source, target_base.with_name(f"{target_base.name}-{label}"), RERUN)
        if first is None:
            first = target
        else:  # notebook 01 as the first run made it; AE-1 reused from the first run too
            take_outputs(NOTEBOOKS[0], first, target, reused_from=first.name)
            status = read_status(target)
            for state in status.values():
                if state.get("reused_from"):
                    state["reused_from"] = first.name
            write_json(target / "status.json", status)
        prepare(target)
        choice = resumed(target)
        report(source, target)
        choices[label] = {"run": target.name, "model": choice["model"], "score": choice["score"]}
        print(f"{target.name}: {choice['model']} ({choice['score']:.3f})")
    chosen = max(choices, key=lambda label: choices[label]["score"])  # ties: the first
    print(f"auto: {choices[chosen]['model']} of {choices[chosen]['run']} "
          f"({choices[chosen]['score']:.3f})")
    return {"runs": choices, "chosen": chosen}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("source", type=Path, help="the auto run's base, e.g. runs/mt-auto")
    parser.add_argument("target", type=Path, help="the copies' base, e.g. runs/mt-refit")
    args = parser.parse_args(argv)
    return rerun_auto(args.source, args.target)


if __name__ == "__main__":
    main()
