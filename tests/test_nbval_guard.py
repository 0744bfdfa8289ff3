"""nbval guards the notebooks: an unchanged notebook passes, a changed default fails.

Notebook 01 is copied next to a link to the repository's data/, so that its relative default
paths still work; one copy is left as is, the other gets a different ``data_dir`` default (a
smaller dataset), which must change the committed outputs (the image counts) and fail nbval.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from anomaly_utils.synthetic import generate_dataset

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "01_data_exploration.ipynb"


def nbval(notebook: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval", str(notebook), "-p", "no:cacheprovider",
         "--nbval-sanitize-with", str(ROOT / "notebooks" / "sanitize.cfg"), "-q",
         "--rootdir", str(notebook.parent)],
        cwd=notebook.parent, capture_output=True, text=True, timeout=600,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    if not (ROOT / "data" / "synthetic_carpet").is_dir():
        pytest.skip("data/synthetic_carpet is missing (make test creates it with `make data`)")
    (tmp_path / "data").symlink_to(ROOT / "data")
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "runs").mkdir()
    return tmp_path


def test_unchanged_notebook_passes_nbval(workspace: Path):
    copy = workspace / "notebooks" / NOTEBOOK.name
    copy.write_bytes(NOTEBOOK.read_bytes())
    result = nbval(copy)
    assert result.returncode == 0, result.stdout[-3000:]


def test_changed_default_fails_nbval(workspace: Path):
    small = generate_dataset(workspace / "small", seed=3, size=64, n_train=10, n_test_good=3,
                             n_per_defect=2)
    notebook = json.loads(NOTEBOOK.read_text())
    cell = next(c for c in notebook["cells"]
                if "parameters" in c.get("metadata", {}).get("tags", []))
    source = "".join(cell["source"])
    assert 'data_dir = "../data/synthetic_carpet"' in source
    cell["source"] = source.replace('"../data/synthetic_carpet"', repr(str(small)))
    copy = workspace / "notebooks" / NOTEBOOK.name
    copy.write_text(json.dumps(notebook))
    result = nbval(copy)
    assert result.returncode != 0, "nbval passed although a default changed the outputs"
    # The failing comparison is the dataset summary: the committed 345 images against 23.
    assert "01_data_exploration.ipynb::Cell 2" in result.stdout
    assert "345 images" in result.stdout and "23 images" in result.stdout
