"""The CPUs the lab sizes its parallel work by: the process's affinity, not the machine's
count (a container or CI runner often allows fewer)."""

from __future__ import annotations

import os

import pytest

from anomaly_utils import cpus
from anomaly_utils.pipeline import cluster, sweep


@pytest.fixture
def two_of_64(monkeypatch):
    """A process allowed on CPUs 5 and 9 of a 64-CPU machine."""
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {5, 9}, raising=False)


def test_usable_cpus_are_the_affinity_not_the_machine(two_of_64):
    assert cpus.usable_cpus() == 2
    assert [cpus.threads_per_job(n) for n in (1, 2, 3)] == [2, 1, 1]


def test_without_an_affinity_call_the_machine_count_is_used(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    assert cpus.usable_cpus() == 8
    assert [cpus.threads_per_job(n) for n in (1, 2, 3, 16)] == [8, 4, 2, 1]
    monkeypatch.setattr(os, "cpu_count", lambda: None)  # "undeterminable"
    assert cpus.usable_cpus() == 1


THREAD_VARIABLES = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS")


def test_sweeps_and_cluster_workers_share_the_usable_cpus(two_of_64, monkeypatch, tmp_path):
    """A local sweep's kernels and a cluster worker's divide the usable CPUs (64 // 2 = 32
    threads each when the machine's count was taken), and the kernels' pages keep to it."""
    import distributed

    for name in THREAD_VARIABLES:
        monkeypatch.setenv(name, "7")  # what the sweep and the task set here is restored after
    sweep._run_here({}, (), jobs=2, log=lambda m: None)  # no notebooks: only the threads
    assert os.environ["TF_NUM_INTRAOP_THREADS"] == os.environ["OMP_NUM_THREADS"] == "1"
    assert cpus.cpu_share() == 1  # notebook 05 in such a kernel saves its pages itself

    class Worker:
        class state:
            nthreads = 1

    monkeypatch.setattr(distributed, "get_worker", lambda: Worker)
    outcome = cluster.execute_notebook_task("01_data_exploration", str(tmp_path / "nowhere"),
                                            {})  # unreachable run: returns once threads are set
    assert outcome["state"] == "failed"
    assert os.environ["TF_NUM_INTRAOP_THREADS"] == "2"


@pytest.mark.parametrize(("share", "expected"), [
    (None, 2), ("1", 1), ("2", 2), ("32", 2), ("0", 2), ("", 2), ("many", 2)])
def test_a_process_keeps_to_the_share_its_launcher_gave_it(two_of_64, monkeypatch, share,
                                                           expected):
    """A sweep of two jobs on two CPUs gives each kernel one thread: notebook 05 then saves
    its pages in the kernel, not in two more processes; no share, or none that makes sense,
    leaves every usable CPU."""
    if share is None:
        monkeypatch.delenv("TF_NUM_INTRAOP_THREADS", raising=False)
    else:
        monkeypatch.setenv("TF_NUM_INTRAOP_THREADS", share)
    assert cpus.cpu_share() == expected
