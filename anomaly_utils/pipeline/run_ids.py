"""Run ids: fresh timestamps, and the parts folder that claims one.

A run's id names its folder under ``runs/``; without ``--run-id`` it is the UTC time the run
started, with ``-2``, ``-3``, ... where another run started in the same second took it. A
run on elongated images (:mod:`anomaly_utils.pipeline.elongated`) writes its parts before
its run folder exists, so making the parts folder is what claims its id.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from anomaly_utils.errors import LabError


class RunExistsError(LabError):
    """The run directory is taken: a run never overwrites another."""


def new_run_id(prefix: str = "") -> str:
    """A fresh, sortable run id: ``YYYYmmdd-HHMMSS`` (UTC) plus an optional prefix."""
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{prefix}{stamp}"


def numbered_ids(stamp: str, attempts: int = 100) -> list[str]:
    """The ids a run started at ``stamp`` tries in turn: ``stamp``, ``stamp-2``, ..."""
    return [stamp] + [f"{stamp}-{attempt}" for attempt in range(2, attempts + 1)]


PARTS_SUFFIX = "-parts"


def parts_folder(runs_dir: str | os.PathLike, run_id: str) -> Path:
    """Where a run on elongated images keeps them cut into parts: ``<runs_dir>/<id>-parts``."""
    return Path(runs_dir) / f"{run_id}{PARTS_SUFFIX}"


def reserve_parts_folder(runs_dir: str | os.PathLike, attempts: int = 100) -> Path:
    """Make an empty parts folder under a fresh timestamp id and return it.

    ``-2``, ``-3``, ... is appended while the id's run or parts folder exists. Making the
    folder claims the id: the run made under a fresh id
    (:mod:`anomaly_utils.pipeline.runs`) passes over an id whose parts
    folder exists, so a run started in the same second cannot take it.

    Raises:
        LabError: no free id among ``attempts``.
    """
    runs_dir = Path(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    stamp = new_run_id()
    for run_id in numbered_ids(stamp, attempts):
        if (runs_dir / run_id).exists():
            continue
        try:
            parts_folder(runs_dir, run_id).mkdir()
        except FileExistsError:
            continue
        return parts_folder(runs_dir, run_id)
    raise LabError(f"no free run id under '{runs_dir}' for {stamp}", fix="pass --run-id")
