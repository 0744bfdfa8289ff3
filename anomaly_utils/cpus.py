"""How many CPUs this process may use, and how to share them among parallel jobs.

``os.cpu_count()`` counts the machine's CPUs; a container or a CI runner often lets a process
run on fewer of them (its CPU affinity), and a count taken from the machine then starts more
threads than there are CPUs to run them. Everything the lab sizes by CPUs (notebook 05's page
processes, a sweep's or a cluster worker's TensorFlow threads) counts with
:func:`usable_cpus`. Where several jobs share the machine, each gets its share through
``TF_NUM_INTRAOP_THREADS`` (a sweep and a cluster worker set it for their kernels, ``make
test`` for its processes), and a kernel's own parallel work keeps to it (:func:`cpu_share`).

Example:
    >>> threads_per_job(1) == usable_cpus()
    True
    >>> threads_per_job(10 * usable_cpus())
    1
    >>> 1 <= cpu_share() <= usable_cpus()
    True
"""

from __future__ import annotations

import os


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity where the system reports one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no affinity call
        return os.cpu_count() or 1


def threads_per_job(jobs: int) -> int:
    """Threads for each of ``jobs`` parallel jobs, so that together they use every usable CPU
    without oversubscribing them (at least 1)."""
    return max(1, usable_cpus() // max(1, int(jobs)))


def cpu_share() -> int:
    """The CPUs this process's own parallel work should keep busy: ``TF_NUM_INTRAOP_THREADS``
    where it is set to a positive count (the share a sweep, a cluster worker or the user gave
    this process), at most :func:`usable_cpus`; else every usable CPU."""
    value = os.environ.get("TF_NUM_INTRAOP_THREADS", "").strip()
    if value.isdigit() and int(value) > 0:
        return min(int(value), usable_cpus())
    return usable_cpus()
