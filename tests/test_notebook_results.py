"""The committed notebooks' numbers: one run's record, consistent across notebooks and README.

nbval compares outcome cells without their digits (notebooks/conftest.py), so these tests
hold the digits to account instead: the AUROCs that notebooks 02 and 03 print, notebook 04's
metrics and per-defect tables, notebook 05's per-defect table and the README's results
table for the synthetic carpet must describe the same run. A notebook refreshed alone, or a
README table left behind, fails here. Numbers are compared to the rounding they are shown
with (two decimals in the notebooks, three in the README): tolerance 0.005 + 0.0005.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from anomaly_utils.scoring.stored import CANDIDATES

ROOT = Path(__file__).resolve().parent.parent
ROUNDING = 0.0055


def _outputs(notebook: str, first_line: str) -> str:
    """The text of the outputs of the code cell of ``notebook`` starting with ``first_line``."""
    cells = json.loads((ROOT / "notebooks" / f"{notebook}.ipynb").read_text())["cells"]
    cell = next(c for c in cells if c["cell_type"] == "code"
                and "".join(c["source"]).startswith(first_line))
    texts = []
    for output in cell["outputs"]:
        text = output.get("text") or output.get("data", {}).get("text/plain", "")
        texts.append("".join(text))
    return "\n".join(texts)


def _table(text: str) -> dict[str, list[float]]:
    """``{row label: numbers}`` of a pandas text table (label may hold spaces)."""
    rows = {}
    for line in text.splitlines():
        match = re.match(r"^(\S.*?)\s+((?:-?\d+\.\d+\s*)+)$", line)
        if match:
            rows[match.group(1).strip()] = [float(v) for v in match.group(2).split()]
    return rows


def _wrapped_table(text: str) -> dict[str, list[float]]:
    """:func:`_table` of a table pandas wrapped into blocks (blank-line separated), each row's
    numbers joined across the blocks in order."""
    rows: dict[str, list[float]] = {}
    for block in text.split("\n\n"):
        for label, values in _table(block).items():
            rows.setdefault(label, []).extend(values)
    return rows


@pytest.fixture(scope="module")
def metrics_table() -> dict[str, list[float]]:
    return _wrapped_table(_outputs("04_threshold_selection", "chosen, reports = "))


# Notebook 04's tables have one column (or column pair) per candidate, in CANDIDATES order.
AE1, AE2 = CANDIDATES.index("ae1"), CANDIDATES.index("ae2")


@pytest.mark.parametrize("notebook,model,column", [("02_train_ae1", "AE-1", AE1),
                                                   ("03_train_ae2", "AE-2", AE2)])
def test_training_notebooks_print_the_report_numbers(notebook, model, column, metrics_table):
    printed = _outputs(notebook, "fig = plots.score_distributions")
    match = re.search(rf"{model} image AUROC (\d\.\d+), pixel AUROC (\d\.\d+)", printed)
    assert match, printed
    assert float(match.group(1)) == pytest.approx(metrics_table["image AUROC"][column],
                                                  abs=ROUNDING)
    assert float(match.group(2)) == pytest.approx(metrics_table["pixel AUROC"][column],
                                                  abs=ROUNDING)


def test_gallery_per_defect_table_matches_the_report():
    report = _wrapped_table(_outputs("04_threshold_selection", "per_defect = pd.DataFrame"))
    # 05 has image AUROC, pixel AUROC and AUPRO per candidate (04: the first two), in
    # CANDIDATES order; pandas wraps the wide table into blocks.
    gallery = _wrapped_table(_outputs("05_results_gallery", "per_defect_table = pd.DataFrame"))
    assert set(gallery) == set(report)
    for defect, values in report.items():
        ours = gallery[defect]
        assert len(ours) == 3 * len(CANDIDATES) and len(values) == 2 * len(CANDIDATES)
        for k, name in enumerate(CANDIDATES):
            assert ours[3 * k] == pytest.approx(values[2 * k], abs=ROUNDING), (defect, name)
            assert ours[3 * k + 1] == pytest.approx(values[2 * k + 1], abs=ROUNDING), \
                (defect, name)


def test_readme_carpet_table_matches_the_committed_report(metrics_table):
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Synthetic carpet, the defaults"):]
    for column, label in ((CANDIDATES.index("floor"), "statistics floor"),
                          (AE1, "AE-1 (baseline)"), (AE2, "AE-2"),
                          (CANDIDATES.index("blend"), "**blend: floor + AE-2 (recommended)**")):
        row = next(line for line in section.splitlines() if line.startswith(f"| {label} |"))
        cells = [c.strip().strip("*") for c in row.strip("|").split("|")]
        image, pixel, aupro = float(cells[1].split()[0].strip("*")), float(cells[2]), \
            float(cells[3])
        assert image == pytest.approx(metrics_table["image AUROC"][column], abs=ROUNDING)
        assert pixel == pytest.approx(metrics_table["pixel AUROC"][column], abs=ROUNDING)
        assert aupro == pytest.approx(metrics_table["AUPRO (FPR ≤ 0.3)"][column], abs=ROUNDING)
