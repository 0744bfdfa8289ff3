"""A sweep's notebook executions as tasks of a ``dask.distributed`` cluster.

:func:`connect` turns ``--cluster`` into a ``distributed.Client``: ``tcp://host:port`` (or any
address a Dask scheduler listens on) connects to a running scheduler, ``local:N`` starts a
``LocalCluster`` of N worker processes with one thread each on this machine. Dask schedules
the tasks, retries them and replaces lost workers; the sweep
(:func:`anomaly_utils.pipeline.sweep.run_sweep`) only decides which executions are ready.

:func:`execute_notebook_task` is what a worker runs: one notebook of one run directory. The run
directory must be on a path every worker reaches (a shared filesystem such as NFS, Lustre or
a mounted volume); the task writes there and returns a small summary, never the outputs.

Faults, and who handles them:

- a worker process dies (killed, out of memory, node lost): the scheduler runs its task again
  on another worker, up to ``distributed.scheduler.allowed-failures`` times (3 by default).
  The notebook starts over in the same run directory, and training resumes from that run's
  ``model_dir/backup`` (:class:`anomaly_utils.training.callbacks.EpochBackup`). The kernel of
  the lost worker exits on its own within a second (ipykernel polls its parent).
- a cell raises an error that may pass (``OSError``, ``MemoryError``, TensorFlow's
  ``ResourceExhaustedError`` ...), or the kernel dies: the task raises and Dask retries it
  (``retries`` of ``client.submit``, :data:`RETRIES`).
- any other cell error (a bad parameter, diverged training, a data problem): the task returns
  ``{"state": "failed", "error": ...}`` at once. It is not retried, since it would fail the
  same way; the sweep records it and goes on with the other configurations.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from anomaly_utils.artifacts import read_json
from anomaly_utils.cpus import threads_per_job
from anomaly_utils.errors import LabError, ParameterError
from anomaly_utils.pipeline.runs import execute_notebook

RETRIES = 2
# Cell errors that may not recur on a second try; every other cell error is final.
TRANSIENT_ERRORS = frozenset({"OSError", "IOError", "MemoryError", "ResourceExhaustedError",
                              "TimeoutError", "ConnectionError", "UnavailableError"})
LOCAL = re.compile(r"local:(\d+)")
ADDRESS_FIX = "pass --cluster tcp://HOST:PORT (a running dask scheduler) or local:N (N >= 1)"


class TransientError(Exception):
    """A notebook failed in a way a retry may not repeat; Dask retries the task."""


def parse_cluster(address: str) -> tuple[str, int | str]:
    """``("local", N)`` for ``local:N``, ``("remote", address)`` for a scheduler address.

    Raises:
        ParameterError: neither form, or ``N < 1``.
    """
    if not isinstance(address, str) or not address:
        raise ParameterError(f"--cluster must be an address, got {address!r}", fix=ADDRESS_FIX)
    if address.startswith("local"):
        match = LOCAL.fullmatch(address)
        if not match or int(match.group(1)) < 1:
            raise ParameterError(f"--cluster {address!r} is not local:N with N >= 1",
                                 fix=ADDRESS_FIX)
        return "local", int(match.group(1))
    if "://" not in address:
        raise ParameterError(f"--cluster {address!r} is not a scheduler address",
                             fix=ADDRESS_FIX)
    return "remote", address


@contextmanager
def connect(cluster: Any, timeout: float = 30) -> Iterator[tuple[Any, int | None]]:
    """A ``distributed.Client`` for ``cluster`` and the threads each kernel gets.

    Args:
        cluster: ``local:N``, a scheduler address, or a ``distributed.Client`` (used as it is,
            and left open).
        timeout: seconds to wait for a remote scheduler.

    Yields:
        ``(client, threads)``: ``threads`` is usable CPUs // N for ``local:N`` and ``None``
        elsewhere (each worker then divides its own CPUs by its own thread count).

    Raises:
        ParameterError: a malformed address, or no scheduler answers there.
    """
    from distributed import Client, LocalCluster

    if isinstance(cluster, Client):
        yield cluster, None
        return
    kind, where = parse_cluster(cluster)
    if kind == "local":
        with LocalCluster(n_workers=where, threads_per_worker=1, processes=True,
                          dashboard_address=None) as local, Client(local) as client:
            yield client, threads_per_job(where)
        return
    try:
        client = Client(where, timeout=timeout)
    except (OSError, TimeoutError, ValueError) as exc:
        raise ParameterError(f"no dask scheduler answers at {where!r} ({exc})",
                             fix="start one (dask scheduler, dask-jobqueue, dask-kubernetes) "
                                 "and pass its address, or use local:N") from exc
    with client:
        yield client, None


def _backups(run_dir: Path, folders: Sequence[str]) -> dict[str, int]:
    """Model folder -> the epoch its training backup resumes at, for backups that exist."""
    found = {}
    for folder in folders:
        metadata = run_dir / folder / "backup" / "training_metadata.json"
        if metadata.is_file():
            found[folder] = int(read_json(metadata)["epoch"])
    return found


def execute_notebook_task(notebook: str, run_dir: str, parameters: dict,
                          threads: int | None = None,
                          model_folders: Sequence[str] = ()) -> dict[str, Any]:
    """Run one notebook of one run on a Dask worker (see the module docstring for faults).

    Args:
        notebook: a notebook name, e.g. ``"03_train_ae2"``.
        run_dir: the run directory, on a path this worker reaches.
        parameters: the notebook's effective parameters (from ``params.json``).
        threads: TensorFlow threads for the kernel; ``None`` divides this machine's CPUs by
            the worker's thread count.
        model_folders: folders of ``run_dir`` whose training backups this notebook resumes
            from (reported as ``resumed_from_backup``).

    Returns:
        ``{"state": "completed", "seconds", "host", "resumed_from_backup": {folder: epoch}}``
        or ``{"state": "failed", "error": message, "host"}``.

    Raises:
        TransientError: a cell failed with one of :data:`TRANSIENT_ERRORS`; Dask retries.
    """
    if threads is None:
        from distributed import get_worker

        threads = threads_per_job(get_worker().state.nthreads)
    os.environ.update({"TF_NUM_INTRAOP_THREADS": str(threads), "TF_NUM_INTEROP_THREADS": "1",
                       "OMP_NUM_THREADS": str(threads)})
    host = socket.gethostname()
    path = Path(run_dir)
    if not (path / "params.json").is_file():
        return {"state": "failed", "host": host,
                "error": f"run directory '{run_dir}' is not reachable from worker {host}; "
                         "put --runs-dir on a filesystem every worker mounts at the same path"}
    resumed = _backups(path, model_folders)
    try:
        seconds = execute_notebook(notebook, path, parameters, progress=False)
    except LabError as error:
        if getattr(error.__cause__, "ename", "") in TRANSIENT_ERRORS:
            raise TransientError(str(error)) from None
        return {"state": "failed", "error": str(error), "host": host}
    return {"state": "completed", "seconds": round(seconds, 1), "host": host,
            "resumed_from_backup": resumed}
