"""The package works installed from a wheel, away from the checkout: the command line starts,
and a run executes the notebooks that travel with the package."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, tracked_files

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = None


def test_every_subpackage_is_listed_for_the_wheel():
    if tomllib is None:
        pytest.skip("reading pyproject.toml needs tomllib (Python 3.11+)")
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
                 ["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts)
             for p in (ROOT / "anomaly_utils").rglob("__init__.py")}
    assert found | {"anomaly_utils.notebooks"} == listed


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A wheel built from a copy of the checkout, installed into a folder of its own."""
    tmp = tmp_path_factory.mktemp("installed")
    source = tmp / "source"
    for name in tracked_files(ROOT):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, source / name)
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                            "--no-build-isolation", "-q", "-w", str(tmp / "wheel"), str(source)],
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-3000:]
    wheel = next((tmp / "wheel").glob("anomaly_utils-*.whl"))
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q",
                              "--target", str(tmp / "site"), str(wheel)],
                             capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-3000:]
    return tmp / "site"


def _lab(site: Path, *args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run([sys.executable, "-m", "anomaly_utils", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_the_wheel_holds_the_notebooks_and_the_cli_runs_from_it(installed: Path, tmp_path):
    notebooks = installed / "anomaly_utils" / "notebooks"
    assert {p.name for p in notebooks.glob("*.ipynb")} == {
        p.name for p in (ROOT / "notebooks").glob("0*.ipynb")}
    assert (notebooks / "params" / "real.yaml").is_file()
    where = subprocess.run([sys.executable, "-c", "import anomaly_utils; print(anomaly_utils.__file__)"],
                           cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(installed)},
                           capture_output=True, text=True, timeout=60)
    assert Path(where.stdout.strip()).is_relative_to(installed), where.stderr
    result = _lab(installed, "--help", cwd=tmp_path)
    assert result.returncode == 0 and "run" in result.stdout, result.stderr


def test_an_installed_package_runs_its_own_notebooks(installed: Path, tiny_data: Path, tmp_path):
    # At the tiny carpet's own 64 px, as the chain tests run notebook 01 (tests/conftest.py).
    result = _lab(installed, "run", "--data-dir", str(tiny_data), "--until", "01",
                  "--run-id", "installed", "--quiet", "-p", "floor_image_size", "64",
                  "-p", "01.image_size", "64", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "runs" / "installed"
    assert (run / "data_summary.json").is_file()
    executed = json.loads((run / "01_data_exploration.ipynb").read_text())
    source = Path(executed["metadata"]["papermill"]["input_path"])
    assert source.is_relative_to(installed), source  # the notebook that ran came from the wheel
