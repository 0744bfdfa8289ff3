"""What one run can take from another: the outputs of a notebook both would run alike.

A notebook's result depends on its own parameters and on those of the notebooks it reads
(:data:`UPSTREAM`); where both are equal in two runs of the same data, the second run takes a
copy of the first's outputs (:data:`OUTPUTS`) instead of executing it. Sweeps share this way
between configurations (:mod:`anomaly_utils.pipeline.sweep`), and ``--preset auto`` between
its preset's runs (:mod:`anomaly_utils.pipeline.auto`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from anomaly_utils.artifacts import read_json, write_json
from anomaly_utils.pipeline.parameters import NOTEBOOKS
from anomaly_utils.pipeline.runs import mark_status, read_status
from anomaly_utils.scoring.candidates import REGISTRY

# What each notebook reads from earlier notebooks, and what it writes into the run.
UPSTREAM = {NOTEBOOKS[0]: (), NOTEBOOKS[1]: (), NOTEBOOKS[2]: (),
            NOTEBOOKS[3]: (NOTEBOOKS[0], NOTEBOOKS[1], NOTEBOOKS[2]),
            NOTEBOOKS[4]: (NOTEBOOKS[0], NOTEBOOKS[1], NOTEBOOKS[2], NOTEBOOKS[3])}
# Each notebook's figures are figures/<its number>_*; candidates write their folder.
REPORTS = {NOTEBOOKS[0]: ("data_summary.json",),
           NOTEBOOKS[3]: ("thresholds.json", "metrics.json")}
OUTPUTS = {nb: (*REPORTS.get(nb, ()), *(c.name for c in REGISTRY if c.notebook == nb),
                f"figures/{nb[:2]}_*") for nb in NOTEBOOKS}


def work_key(notebook: str, effective: dict[str, dict[str, Any]]) -> str:
    """What a notebook's result depends on: its parameters and its upstream notebooks'."""
    parts = {nb: {k: v for k, v in effective[nb].items() if k != "run_dir"}
             for nb in (notebook, *UPSTREAM[notebook])}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def copy_outputs(notebook: str, source: Path, target: Path) -> None:
    """Copy a notebook's outputs, and the executed notebook, from one run to another."""
    for pattern in OUTPUTS[notebook]:
        for path in source.glob(pattern):
            destination = target / path.relative_to(source)
            destination.parent.mkdir(parents=True, exist_ok=True)
            if path.is_dir():
                shutil.copytree(path, destination, dirs_exist_ok=True)
            else:
                shutil.copy2(path, destination)
    shutil.copy2(source / f"{notebook}.ipynb", target / f"{notebook}.ipynb")


def take_outputs(notebook: str, source: Path, target: Path, reused_from: str) -> None:
    """Give run ``target`` the outputs of ``source``'s execution of ``notebook``: copied and
    marked completed, with ``reused_from`` naming where they came from in its status."""
    copy_outputs(notebook, source, target)
    mark_status(target, notebook, "completed")
    status = read_status(target)
    status[notebook]["reused_from"] = reused_from
    write_json(target / "status.json", status)


def share_identical_notebooks(source: Path, target: Path) -> list[str]:
    """Give the new run ``target`` the outputs of the notebooks it would repeat from ``source``.

    Notebooks are taken in order while ``source`` completed them and both runs' parameters
    for them and for every notebook they read are identical (:func:`work_key`); each one
    shared is marked completed in ``target`` with ``reused_from``. Returns their names.
    """
    effective = {name: read_json(run / "params.json")["notebooks"] for name, run in
                 (("source", source), ("target", target))}
    status = read_status(source)
    shared = []
    for notebook in NOTEBOOKS:
        if (status.get(notebook, {}).get("state") != "completed"
                or work_key(notebook, effective["source"]) != work_key(notebook,
                                                                       effective["target"])):
            break
        take_outputs(notebook, source, target, source.name)
        shared.append(notebook)
    return shared
