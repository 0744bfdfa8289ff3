"""Fixtures shared by the end-to-end tests: a tiny synthetic carpet and one finished run on it.

A full notebook chain on tiny data still takes about a minute on 2 cores, so the reference
run is made once per session; tests that need a run in some other state copy it with
``clone_run`` instead of training again.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from anomaly_utils.artifacts import read_json, write_json
from anomaly_utils.synthetic import generate_dataset

ROOT = Path(__file__).resolve().parent.parent
# AE-2 trains 6 epochs so that a run killed after two of them has work left to resume.
TINY = {"epochs": "3", "ae2.epochs": "6", "ae1.image_size": "32", "ae1.latent_dim": "64",
        "ae2.image_size": "64", "patch_size": "32", "ae2.stride": "16",
        "patches_per_epoch": "64", "eval_size": "32", "smooth_sigma": "1.0",
        "n_bootstrap": "50", "batch_size": "16", "min_defect_area": "2"}


def cli(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """``python -m anomaly_utils ARGS`` from the repository root, output captured."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-m", "anomaly_utils", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def tiny_args(data_dir: Path) -> list[str]:
    args = ["--data-dir", str(data_dir), "--quiet"]
    for name, value in TINY.items():
        args += ["-p", name, value]
    return args


def clone_run(run_dir: Path, dest: Path, unfinished: tuple[str, ...] = (),
              remove: tuple[str, ...] = ()) -> Path:
    """Copy a finished run to ``dest`` as if the notebooks ``unfinished`` had never run.

    Their status entries and executed notebooks are dropped, and so are the files named in
    ``remove`` (what those notebooks write), so ``--resume`` has them to do again.
    """
    shutil.copytree(run_dir, dest)
    status = read_json(dest / "status.json")
    for notebook in unfinished:
        del status[notebook]
        (dest / f"{notebook}.ipynb").unlink()
    write_json(dest / "status.json", status)
    for name in remove:
        (dest / name).unlink()
    return dest


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("data") / "carpet", seed=1, size=64,
                            n_train=24, n_test_good=6, n_per_defect=2)


@pytest.fixture(scope="session")
def finished_run(tiny_data: Path, tmp_path_factory) -> Path:
    """A complete tiny run made through the CLI: the reference for the other tests."""
    runs = tmp_path_factory.mktemp("runs")
    result = cli("run", *tiny_args(tiny_data), "--runs-dir", str(runs), "--run-id", "ref")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ae2" in result.stdout and "img AUROC" in result.stdout  # the summary
    # The kernels' sockets are encrypted (pipeline.kernel_config), so ipykernel stays quiet.
    assert "without encryption" not in result.stderr, result.stderr[-3000:]
    return runs / "ref"
