"""Run ids: fresh timestamps, and the folder that claims one.

A run's id names its folder under ``runs/``; without ``--run-id`` it is the UTC time the run
started, with ``-2``, ``-3``, ... where another run started in the same second took it. An
id is taken while anything of its family exists: the folder ``<id>`` or a name
``<id>-<suffix>`` whose suffix does not start with a digit (``<id>-parts``, the runs
``<id>-defaults`` and ``<id>-real`` of ``--preset auto`` and its ``<id>-auto.json``);
``<id>-2`` is another id. Whatever a run makes first claims its id: the run folder, the
parts folder of a run on elongated images (:mod:`anomaly_utils.pipeline.elongated`), the
first run of ``--preset auto``, a sweep's folder.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from anomaly_utils.errors import LabError


class RunExistsError(LabError):
    """The run directory is taken: a run never overwrites another."""


Claimed = TypeVar("Claimed")


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


def id_taken(runs_dir: str | os.PathLike, run_id: str) -> bool:
    """Whether ``runs_dir`` holds ``<run_id>`` or a member of its family (module docstring)."""
    runs_dir = Path(runs_dir)
    if (runs_dir / run_id).exists():
        return True
    family = re.compile(re.escape(run_id) + r"-\D")
    return runs_dir.is_dir() and any(family.match(entry) for entry in os.listdir(runs_dir))


def claim_new_id(runs_dir: str | os.PathLike, claim: Callable[[str], Claimed],
                 prefix: str = "", attempts: int = 100) -> Claimed:
    """Claim a fresh timestamp id: ``claim(run_id)`` on the first id not taken.

    Args:
        claim: makes the folder that claims the id and returns what the caller needs; it
            raises ``FileExistsError`` or :class:`RunExistsError` where another run made that
            folder since the check, and the next id is tried.
        prefix: put before the timestamp (``sweep-``).

    Raises:
        LabError: no free id among ``attempts``.
    """
    stamp = new_run_id(prefix)
    for run_id in numbered_ids(stamp, attempts):
        if id_taken(runs_dir, run_id):
            continue
        try:
            return claim(run_id)
        except (FileExistsError, RunExistsError):
            continue  # another run started in the same second
    raise LabError(f"no free run id under '{runs_dir}' for {stamp}", fix="pass --run-id")


def reserve_parts_folder(runs_dir: str | os.PathLike, prefix: str = "") -> Path:
    """Make an empty parts folder under a fresh timestamp id and return it: making it
    claims the id (:func:`claim_new_id`)."""
    def make(run_id: str) -> Path:
        folder = parts_folder(runs_dir, run_id)
        folder.mkdir(parents=True)
        return folder
    return claim_new_id(runs_dir, make, prefix)
