"""The CPUs the lab sizes its parallel work by: the process's affinity, not the machine's
count (a container or CI runner often allows fewer)."""

from __future__ import annotations

import os

import pytest

from anomaly_utils import cpus
from anomaly_utils.pipeline import cluster, sweep
from anomaly_utils.visualization import pages


@pytest.fixture
def two_of_64(monkeypatch):
    """A process allowed on CPUs 5 and 9 of a 64-CPU machine."""
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {5, 9}, raising=False)


def test_usable_cpus_are_the_affinity_not_the_machine(two_of_64):
    assert cpus.usable_cpus() == 2
    assert pages.usable_cpus is cpus.usable_cpus  # notebook 05 sizes its page processes so
    assert [cpus.threads_per_job(n) for n in (1, 2, 3)] == [2, 1, 1]


def test_without_an_affinity_call_the_machine_count_is_used(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    assert cpus.usable_cpus() == 8
    assert [cpus.threads_per_job(n) for n in (1, 2, 3, 16)] == [8, 4, 2, 1]
    monkeypatch.setattr(os, "cpu_count", lambda: None)  # "undeterminable"
    assert cpus.usable_cpus() == 1


def test_sweeps_and_cluster_workers_share_the_usable_cpus(two_of_64):
    # A local sweep's kernels and a local cluster's workers divide the usable CPUs.
    assert sweep.threads_per_job is cpus.threads_per_job
    assert cluster.threads_per_job is cpus.threads_per_job
    assert cpus.threads_per_job(2) == 1  # 64 // 2 = 32 threads each before


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
