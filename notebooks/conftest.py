"""How nbval checks these notebooks (``pytest --nbval notebooks/``, part of ``make test``).

The committed outputs come from running each notebook with its defaults. Re-running them in
CI must catch a changed dataset, a changed default, a broken cell or a changed table layout,
but must not compare digits that legitimately differ between machines: the numbers that come
out of training (losses, thresholds, AUROCs, how many images a threshold flags) move in the
third decimal with the CPU's kernels (oneDNN picks AVX2, AVX-512 or AMX code and sums in
another order), the thread count and a GPU. So this plugin does two things on top of nbval:

1. Cells tagged ``outcome`` show results of training. Their outputs are compared with every
   number replaced by ``N`` and runs of spaces collapsed: the words, row and column labels,
   the order of lines and the number of text outputs must match, the digits (and NaN) need
   not, and the figures they display are left out (how many there are depends on training).
   Every other cell (data summaries, split sizes, model summaries, parameter counts, figure
   sizes of data plots) is compared exactly, after ``sanitize.cfg``.
2. Because outcome numbers are not compared, training need not run to its full length: the
   cell tagged ``parameters`` gets the assignments in ``SHORTENED`` appended, as papermill
   would inject them, so the notebooks train for one short epoch, the statistics floor is fitted
   at half its side, AE-2's sliding window steps 32 px, and everything else (data,
   architecture, scoring, thresholds, figures) runs at the defaults.

The numbers themselves are checked with stated tolerances elsewhere: tests/test_notebook_results.py.
"""

from __future__ import annotations

import re

from anomaly_utils.pipeline.runs import without_stderr

try:
    from nbval.plugin import IPyNbCell
except ImportError:  # nbval absent: nothing to configure
    IPyNbCell = None

OUTCOME_TAG = "outcome"
SHORTENED = {
    # The floor's fit and its scores at 64 px, not 256: its cell is an outcome cell, and at
    # 256 px it was nbval's slowest (77 s of make test's 2 cores; 15 s alone at 128 px).
    "01_data_exploration.ipynb": {"floor_image_size": 64},
    "02_train_ae1.ipynb": {"epochs": 1},
    # AE-2 scores with a 32 px sliding-window stride, not 16 (9 windows an image, not 25): the
    # scoring cell prints counts only, and its scores are compared in outcome cells.
    "03_train_ae2.ipynb": {"epochs": 1, "patches_per_epoch": 128, "head_epochs": 1,
                           "head_patches_per_epoch": 64, "stride": 32},
}
# A number, or NaN / inf: a rate with nothing to divide (precision when a threshold flags
# no image) is NaN after one training and a number after another.
_NUMBER = re.compile(r"[-+]?(?:\d+(?:[.,]\d+)*|\.\d+)(?:[eE][-+]?\d+)?|\b(?:NaN|nan|inf)\b")
_SPACES = re.compile(r"[ \t]+")


def mask_numbers(text: str) -> str:
    """``text`` with every number replaced by ``N`` and runs of spaces made one space."""
    return _SPACES.sub(" ", _NUMBER.sub("N", text))


def _tags(cell) -> list[str]:
    return list(cell.metadata.get("tags", []))


if IPyNbCell is not None:
    _sanitize = IPyNbCell.sanitize

    def _sanitize_outcomes(self, s):
        s = _sanitize(self, s)
        if isinstance(s, str) and OUTCOME_TAG in _tags(self.cell):
            return mask_numbers(s)
        return s

    _compare = IPyNbCell.compare_outputs

    def _compare_outcomes(self, test, ref, skip_compare=None):
        test, ref = without_stderr(test), without_stderr(ref)
        if OUTCOME_TAG in _tags(self.cell):
            test, ref = _without_figures(test), _without_figures(ref)
        return _compare(self, test, ref, skip_compare)

    IPyNbCell.sanitize = _sanitize_outcomes
    IPyNbCell.compare_outputs = _compare_outcomes


def _without_figures(outputs: list) -> list:
    """Outputs less the displayed figures: how many an outcome cell shows depends on training
    (a gallery page per flagged image kind), and nbval never compares their pixels anyway."""
    return [o for o in outputs if not (
        o.get("output_type") == "display_data"
        and str(o.get("data", {}).get("text/plain", "")).startswith("<Figure"))]


def pytest_collection_modifyitems(items):
    if IPyNbCell is None:
        return
    for item in items:
        if not isinstance(item, IPyNbCell) or "parameters" not in _tags(item.cell):
            continue
        shortened = SHORTENED.get(item.path.name, {})
        if shortened:
            lines = "".join(f"\n{name} = {value!r}" for name, value in shortened.items())
            item.cell.source = (item.cell.source.rstrip("\n")
                                + "\n# nbval: training shortened (notebooks/conftest.py)"
                                + lines + "\n")


def pytest_report_header(config):
    if getattr(config.option, "nbval", False):
        shortened = "; ".join(f"{nb}: {', '.join(f'{k}={v}' for k, v in p.items())}"
                              for nb, p in SHORTENED.items())
        return [f"nbval: outputs of cells tagged '{OUTCOME_TAG}' compared without their "
                f"digits; training shortened ({shortened})"]
    return []

