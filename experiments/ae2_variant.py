"""One run's AE-2 trained again with other parameters, its data, floor and AE-1 kept.

Copies run ``source`` (e.g. the ``-real`` run of an auto run) to ``target`` without its AE-2,
blend and choice, sets the given parameters of notebook 03 in the copy's ``params.json``,
and resumes notebooks 03, 04 and 05: AE-2 and its head are trained again with the new
values, the floor and AE-1 are the source's. Prints each candidate's validation selection
score and test metrics in both runs, so that a variant of a preset's AE-2 can be compared
with the preset on the same validation set without running notebooks 01 and 02 again.

Usage::

    python experiments/ae2_variant.py runs/mt-real runs/mt-pair30 \\
        -p ensemble_size 2 -p epochs 30 -p head_epochs 30

A resumed run warns that its environment changed and records it in ``env.json``.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import yaml

from anomaly_utils.artifacts import read_json, write_json
from anomaly_utils.pipeline.parameters import NOTEBOOKS, validate
from anomaly_utils.pipeline.runs import read_status, run_pipeline

AE2 = NOTEBOOKS[2]
RERUN = NOTEBOOKS[2:]
DROPPED = ("ae2", "blend", "metrics.json", "thresholds.json")


def copy_without_ae2(source: Path, target: Path, values: dict) -> None:
    """``source`` copied to ``target``, its AE-2 and later outputs dropped, notebook 03's
    parameters updated with ``values`` and notebooks 03-05 marked unfinished."""
    if target.exists():
        raise SystemExit(f"{target} exists; choose another target")
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(*DROPPED, "03_*.png",
                                                                  "04_*.png", "05_*.png"))
    params = read_json(target / "params.json")
    params["run_id"] = target.name
    unknown = set(values) - set(params["notebooks"][AE2])
    if unknown:
        raise SystemExit(f"notebook {AE2} has no parameter {sorted(unknown)}")
    params["notebooks"][AE2].update(values)
    params["overrides"].update({f"ae2.{name}": value for name, value in values.items()})
    validate(AE2, params["notebooks"][AE2])
    write_json(target / "params.json", params)
    status = read_status(target)
    for notebook in RERUN:
        status.pop(notebook, None)
    write_json(target / "status.json", status)


def table(run_dir: Path) -> list[str]:
    """One line per candidate: validation selection, test image / pixel AUROC / AUPRO."""
    metrics = read_json(run_dir / "metrics.json")
    choice = metrics["choice"]

    def fmt(value):
        return "  -  " if value is None else f"{value:.3f}"

    lines = []
    for model, score in choice["scores"].items():
        m = metrics[model]
        mark = " *" if model == choice["model"] else ""
        lines.append(f"  {model:<6} val {score:.3f}  test {fmt(m.get('image_auroc'))} / "
                     f"{fmt(m.get('pixel_auroc'))} / {fmt(m.get('aupro'))}{mark}")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("source", type=Path, help="a finished run, e.g. runs/mt-real")
    parser.add_argument("target", type=Path, help="the copy, e.g. runs/mt-pair30")
    parser.add_argument("-p", "--param", nargs=2, action="append", default=[],
                        metavar=("NAME", "VALUE"), help="a parameter of notebook 03")
    args = parser.parse_args(argv)
    values = {name: yaml.safe_load(value) for name, value in args.param}
    copy_without_ae2(args.source, args.target, values)
    status_before = read_status(args.source)
    run_pipeline({}, run_id=args.target.name, runs_dir=args.target.parent, resume=True,
                 progress=False)
    seconds = read_status(args.target)[AE2]["seconds"]
    print(f"{args.source.name} (notebook 03: {status_before[AE2]['seconds']} s)")
    print("\n".join(table(args.source)))
    print(f"{args.target.name} {values} (notebook 03: {seconds} s)")
    print("\n".join(table(args.target)))


if __name__ == "__main__":
    main()
