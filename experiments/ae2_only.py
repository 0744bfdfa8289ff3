"""Run notebook 03 (AE-2) alone into a run directory, for AE-2 ablations that need no AE-1.

Resolves the parameters as ``run`` does (notebook defaults, then ``-p`` overrides), writes
them to ``RUN_DIR/params.json`` in the layout ``run`` uses (so the other experiment scripts
read them) and executes the notebook with papermill into ``RUN_DIR/03_train_ae2.ipynb``.

Usage::

    python experiments/ae2_only.py runs/ablation-x -p data_dir data/synthetic_carpet \\
        -p epochs 30 -p head_epochs 20
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import papermill

from anomaly_utils.artifacts import write_json
from anomaly_utils.pipeline.parameters import NOTEBOOK_DIR, resolve_parameters, validate

NOTEBOOK = "03_train_ae2"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("-p", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    args = parser.parse_args()
    run_dir = args.run_dir.resolve()
    overrides = {name: value for name, value in args.p}
    overrides["run_dir"] = str(run_dir)
    params = resolve_parameters(overrides, (NOTEBOOK,))[NOTEBOOK]
    validate(NOTEBOOK, params)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "params.json", {"overrides": overrides,
                                         "notebooks": {NOTEBOOK: params}})
    start = time.perf_counter()
    papermill.execute_notebook(str(NOTEBOOK_DIR / f"{NOTEBOOK}.ipynb"),
                               str(run_dir / f"{NOTEBOOK}.ipynb"), parameters=params,
                               cwd=str(NOTEBOOK_DIR), progress_bar=False)
    print(f"{NOTEBOOK} done in {time.perf_counter() - start:.0f} s: {run_dir}")


if __name__ == "__main__":
    main()
