"""nbval guards the notebooks: an unchanged notebook passes; changed data or a changed
default fails; outcome cells ignore digits but not words or layout.

Notebook 01 is copied, with notebooks/conftest.py (the nbval rules), next to a data/ folder, so
that its relative default paths still work. The copy keeps the cells up to the dataset summary
(code cell 2), the one a changed dataset must fail; nbval itself runs the whole notebook. One copy runs on the repository's dataset; one
gets another ``data_dir`` default (a smaller dataset); one runs on the dataset less a single
training image. The last two must change the committed outputs (the image counts) and fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from anomaly_utils.data.synthetic import generate_dataset

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "01_data_exploration.ipynb"
CARPET = ROOT / "data" / "synthetic_carpet"


SUMMARY_CELL = 2  # nbval's "Cell 2": the dataset summary


def head_of_notebook(notebook: dict) -> dict:
    """``notebook`` cut after its code cell ``SUMMARY_CELL``."""
    cells, code = [], 0
    for cell in notebook["cells"]:
        cells.append(cell)
        code += cell["cell_type"] == "code"
        if code > SUMMARY_CELL:
            break
    return {**notebook, "cells": cells}


def write_head(notebook: dict, path: Path) -> None:
    path.write_text(json.dumps(head_of_notebook(notebook)))


def nbval(notebook: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval", str(notebook), "-p", "no:cacheprovider",
         "--nbval-sanitize-with", str(ROOT / "notebooks" / "sanitize.cfg"), "-q",
         "--rootdir", str(notebook.parent)],
        cwd=notebook.parent, capture_output=True, text=True, timeout=600,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    if not CARPET.is_dir():
        pytest.skip("data/synthetic_carpet is missing (make test creates it with `make data`)")
    (tmp_path / "data").symlink_to(ROOT / "data")
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / "conftest.py").write_bytes(
        (ROOT / "notebooks" / "conftest.py").read_bytes())
    (tmp_path / "runs").mkdir()
    return tmp_path


def test_unchanged_notebook_passes_nbval(workspace: Path):
    copy = workspace / "notebooks" / NOTEBOOK.name
    write_head(json.loads(NOTEBOOK.read_text()), copy)
    result = nbval(copy)
    assert result.returncode == 0, result.stdout[-3000:]
    assert f"{SUMMARY_CELL + 1} passed" in result.stdout


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
    write_head(notebook, copy)
    result = nbval(copy)
    assert result.returncode != 0, "nbval passed although a default changed the outputs"
    # The failing comparison is the dataset summary: the committed 345 images against 23.
    assert "01_data_exploration.ipynb::Cell 2" in result.stdout
    assert "345 images" in result.stdout and "23 images" in result.stdout


def test_one_training_image_less_fails_nbval(tmp_path: Path):
    """The carpet less one train/good image: nbval must see the counts change."""
    if not CARPET.is_dir():
        pytest.skip("data/synthetic_carpet is missing (make test creates it with `make data`)")
    carpet = tmp_path / "data" / "synthetic_carpet"
    for path in CARPET.rglob("*"):  # links, so the copy costs nothing
        if path.is_file():
            (carpet / path.relative_to(CARPET)).parent.mkdir(parents=True, exist_ok=True)
            (carpet / path.relative_to(CARPET)).symlink_to(path)
    removed = sorted((carpet / "train" / "good").iterdir())[0]
    removed.unlink()
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / "conftest.py").write_bytes(
        (ROOT / "notebooks" / "conftest.py").read_bytes())
    copy = tmp_path / "notebooks" / NOTEBOOK.name
    write_head(json.loads(NOTEBOOK.read_text()), copy)
    result = nbval(copy)
    assert result.returncode != 0, f"nbval passed although {removed.name} was removed"
    assert "01_data_exploration.ipynb::Cell 2" in result.stdout
    assert "345 images" in result.stdout and "344 images" in result.stdout


def test_outcome_cells_compare_words_not_digits():
    """The rule notebooks/conftest.py applies to cells tagged ``outcome``."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("nb_rules", ROOT / "notebooks" / "conftest.py")
    rules = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rules)
    committed = "ae1   percentile      0.012  0.067\nAE-1 image AUROC 0.54, pixel AUROC 0.67"
    elsewhere = "ae1   percentile      0.0119  0.1\nAE-1 image AUROC 0.55, pixel AUROC 0.66"
    assert rules.mask_numbers(committed) == rules.mask_numbers(elsewhere)
    assert rules.mask_numbers(committed) != rules.mask_numbers(
        committed.replace("percentile", "mean_std"))  # a changed table still fails
    assert rules.mask_numbers(committed) != rules.mask_numbers(committed + "\nextra line")
    tagged = [json.loads((ROOT / "notebooks" / f"{nb}.ipynb").read_text())["cells"]
              for nb in ("02_train_ae1", "03_train_ae2", "04_threshold_selection",
                         "05_results_gallery")]
    for cells in tagged:  # every training notebook reports its outcome in a tagged cell
        assert any(rules.OUTCOME_TAG in c.get("metadata", {}).get("tags", []) for c in cells)
    # Data facts compare exactly; only the statistics floor's measurement (numbers that move
    # in the last digits with the CPU's float rounding) is an outcome in notebook 01.
    data_cells = json.loads(NOTEBOOK.read_text())["cells"]
    tagged_data = ["".join(c["source"]) for c in data_cells
                   if rules.OUTCOME_TAG in c.get("metadata", {}).get("tags", [])]
    assert len(tagged_data) == 1 and "fit_floor" in tagged_data[0]
