"""Gallery pages saved on several cores.

Notebook 05 saves every false negative and false positive of every candidate, twelve rows a
page: on the real development sets 90-110 pages per run, about 0.9 s each to lay out and
encode, nearly all of it in matplotlib, which holds the interpreter's lock. Separate
processes lay out the pages side by side (magnetic_tile's 92 pages of one run: 64 s in one
process, 34 s in two on 2 cores, byte for byte the same files); the notebook keeps building
the rows (reading the test images) while they work, and at most two pages per process wait,
so the rows of a hundred pages are never in memory at once. The notebook asks for as many
processes as its kernel's share of the CPUs (:func:`anomaly_utils.cpus.cpu_share`): every
usable CPU in a run of its own, one in each of two sweep jobs on two cores.

Example:
    >>> import numpy as np, tempfile
    >>> from pathlib import Path
    >>> row = {"image": np.zeros((8, 8, 3)), "recon": None, "map": np.zeros((4, 4)),
    ...        "mask": None, "pred": None, "score": 1.0, "threshold": 2.0,
    ...        "verdict": "TN", "title": "good"}
    >>> folder = Path(tempfile.mkdtemp())
    >>> save_pages([([row], folder / "a.png"), ([row], folder / "b.png")])
    2
    >>> sorted(p.name for p in folder.iterdir())
    ['a.png', 'b.png']
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt

from anomaly_utils.visualization import plots

PENDING_PER_WORKER = 2  # pages built and waiting per process: bounds the rows held in memory


def save_page_rows(rows: list[dict], path: str | os.PathLike) -> None:
    """Lay out one gallery page (:func:`~anomaly_utils.visualization.plots.gallery_rows`),
    save it as :func:`~anomaly_utils.visualization.plots.save_page` does and close it."""
    fig = plots.gallery_rows(rows)
    try:
        plots.save_page(fig, path)
    finally:
        plt.close(fig)


def _use_agg() -> None:
    """A worker draws into files only: the file backend, whatever the notebook's is."""
    matplotlib.use("Agg", force=True)


def _finish(futures: set[Future]) -> None:
    for future in futures:
        future.result()  # a worker's error is raised here, in the notebook


def _save_here(pages: Iterable[tuple[list[dict], str | os.PathLike]]) -> int:
    count = 0
    for rows, path in pages:
        save_page_rows(rows, path)
        count += 1
    return count


def save_pages(pages: Iterable[tuple[list[dict], str | os.PathLike]],
               workers: int = 1) -> int:
    """Save gallery pages, in ``workers`` processes.

    Args:
        pages: ``(rows, path)`` per page, ``rows`` as
            :func:`~anomaly_utils.visualization.plots.gallery_rows` takes them; read lazily,
            so a generator builds each page's rows only shortly before a process is free.
        workers: processes; 1 (the default) saves the pages here, one by one. The pages
            are the same bytes either way: each is laid out alone, by the same functions and
            matplotlib settings (``plots`` sets them when imported). More than one starts
            fresh interpreters (multiprocessing's spawn), which import the caller's main
            module again: from a notebook that is nothing, from a script only what runs
            outside its ``if __name__ == "__main__":`` block. Where no process pool can
            be made (no POSIX semaphores), the pages are saved here, and a line says so.

    Returns:
        The number of pages saved.
    """
    workers = max(1, int(workers))
    if workers == 1:
        return _save_here(pages)
    # spawn, not fork: the notebook's process holds TensorFlow's threads, which a fork copies
    # in whatever state they are.
    context = multiprocessing.get_context("spawn")
    try:
        pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_use_agg)
    except (OSError, NotImplementedError) as error:  # e.g. no POSIX semaphores (/dev/shm)
        print(f"gallery pages saved in this process: no process pool here ({error})")
        return _save_here(pages)
    count, pending = 0, set()
    with pool:
        for rows, path in pages:
            if len(pending) >= PENDING_PER_WORKER * workers:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                _finish(done)
            pending.add(pool.submit(save_page_rows, rows, str(Path(path))))
            count += 1
        _finish(wait(pending).done)
    return count
