"""The ELPV solar-cell images written in the MVTec AD layout: a public real benchmark.

The PyPI package ``elpv-dataset`` ships 2,624 electroluminescence images of solar cells
(300x300 grayscale PNG, from 44 modules) with a defect probability (0, 1/3, 2/3 or 1) given by
experts and the module type (mono- or polycrystalline); Buerhop-Lutz et al., EU PVSEC 2018,
and Deitsch et al., Solar Energy 185, 2019. :func:`write_elpv` turns it into one MVTec-layout
category per module type:

- ``train/good`` and ``test/good``: the cells of probability 0, split by a seeded shuffle
  (``test_fraction`` of them to the test split);
- ``test/defective``: the cells of probability 1; no masks, so image-level metrics only;
- the ambiguous cells (1/3 and 2/3) are left out and counted in the category's ``README.md``.

The PNG files are copied byte for byte under their original names, and ``SOURCES.tsv`` lists
each file with its probability. Each category is written to a ``.partial-*`` sibling and
renamed into place only when complete.

Example:
    >>> import tempfile, pathlib
    >>> src = write_stand_in(pathlib.Path(tempfile.mkdtemp()) / "src", per_group=3)
    >>> out = write_elpv(pathlib.Path(tempfile.mkdtemp()) / "elpv", source=src)
    >>> sorted(out), len(list((out["mono"] / "test" / "defective").iterdir()))
    (['mono', 'poly'], 3)
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from anomaly_utils.artifacts import check_replaceable, replace_folder
from anomaly_utils.errors import DataError, ParameterError

PACKAGE = "elpv-dataset==1.0.0.post1"  # the release this module was written against
MODULE_TYPES: tuple[str, ...] = ("mono", "poly")
DEFECT_FOLDER = "defective"
_README_MARKER = "written by anomaly_utils.data.elpv"
CITATION = (
    "Buerhop-Lutz, C.; Deitsch, S.; Maier, A.; Gallwitz, F.; Berger, S.; Doll, B.; Hauch, J.; "
    "Camus, C. & Brabec, C. J. A Benchmark for Visual Identification of Defective Solar Cells "
    "in Electroluminescence Imagery. EU PVSEC 2018. "
    "Deitsch, S.; Christlein, V.; Berger, S.; Buerhop-Lutz, C.; Maier, A.; Gallwitz, F. & "
    "Riess, C. Automatic classification of defective photovoltaic module cells in "
    "electroluminescence images. Solar Energy 185, 455-468, 2019.")


@dataclass(frozen=True)
class Cell:
    """One labelled cell: ``path`` relative to the label file, ``probability`` of a defect
    (0, 1/3, 2/3 or 1) and ``module_type`` ("mono" or "poly")."""

    path: str
    probability: float
    module_type: str


def package_source() -> Path:
    """The data folder of the installed ``elpv-dataset`` package (``labels.csv`` and
    ``images/``), found without importing the package.

    Raises:
        DataError: the package is not installed.
    """
    spec = importlib.util.find_spec("elpv_dataset")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the PyPI package elpv-dataset is not installed",
                        fix=f"pip install {PACKAGE} (about 90 MB), or pass --source with a "
                            "folder holding labels.csv and images/")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def read_labels(source: str | os.PathLike) -> list[Cell]:
    """The cells listed in ``source/labels.csv`` (whitespace-separated: path, probability,
    module type), each checked to exist.

    Raises:
        DataError: the label file is missing or a line is malformed, naming the line.
    """
    labels = Path(source) / "labels.csv"
    if not labels.is_file():
        raise DataError(f"'{labels}' does not exist",
                        fix="pass the elpv-dataset data folder (it holds labels.csv and images/)")
    cells = []
    for number, line in enumerate(labels.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        try:
            path, probability, module_type = fields[0], float(fields[1]), fields[2]
        except (IndexError, ValueError):
            raise DataError(f"'{labels}' line {number} is not 'PATH PROBABILITY TYPE': {line!r}",
                            fix="restore the file from the elpv-dataset package") from None
        if module_type not in MODULE_TYPES:
            raise DataError(f"'{labels}' line {number}: module type {module_type!r} is not one "
                            f"of {MODULE_TYPES}", fix="restore the file from the package")
        if not (Path(source) / path).is_file():
            raise DataError(f"'{labels}' line {number} names '{path}', which does not exist",
                            fix="reinstall the elpv-dataset package")
        cells.append(Cell(path, probability, module_type))
    return cells


def split_cells(cells: list[Cell], module_type: str, seed: int,
                test_fraction: float) -> dict[str, list[Cell]]:
    """One module type's cells by destination: ``train``, ``test_good``, ``defective`` and
    ``ambiguous`` (probability strictly between 0 and 1, left out).

    The normal cells are shuffled by ``numpy.random.default_rng(seed)`` in label-file order,
    and the first ``round(test_fraction * n)`` go to the test split.
    """
    own = [c for c in cells if c.module_type == module_type]
    normal = [c for c in own if c.probability == 0.0]
    order = np.random.default_rng(seed).permutation(len(normal))
    n_test = int(round(test_fraction * len(normal)))
    return {"test_good": [normal[i] for i in sorted(order[:n_test])],
            "train": [normal[i] for i in sorted(order[n_test:])],
            "defective": [c for c in own if c.probability == 1.0],
            "ambiguous": [c for c in own if 0.0 < c.probability < 1.0]}


def write_elpv(dest: str | os.PathLike, source: str | os.PathLike | None = None, seed: int = 0,
               test_fraction: float = 0.2, overwrite: bool = False) -> dict[str, Path]:
    """Write ``dest/mono`` and ``dest/poly`` in the MVTec AD layout; returns them by type.

    Args:
        dest: parent folder of the two categories.
        source: a folder with ``labels.csv`` and ``images/`` (default: the installed
            ``elpv-dataset`` package).
        seed: seeds the train / test split of the normal cells.
        test_fraction: share of the normal cells in ``test/good``, in (0, 1).
        overwrite: replace categories written by this function before.

    Raises:
        ParameterError: ``test_fraction`` outside (0, 1).
        DataError: the package or a listed file is missing.
        LabError: a category folder exists and is not empty (and not ``overwrite``), or was
            not written by this function.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ParameterError(f"test_fraction must be in (0, 1), got {test_fraction!r}",
                             fix="pass e.g. --test-fraction 0.2")
    source = Path(source) if source is not None else package_source()
    cells = read_labels(source)
    dest = Path(dest)
    for module_type in MODULE_TYPES:
        check_replaceable(dest / module_type, overwrite, _README_MARKER, "make-elpv",
                          "--overwrite")
    written = {}
    for module_type in MODULE_TYPES:
        groups = split_cells(cells, module_type, seed, test_fraction)
        written[module_type] = _write_category(dest / module_type, source, groups, module_type,
                                               seed, test_fraction)
    return written


def _write_category(out: Path, source: Path, groups: dict[str, list[Cell]], module_type: str,
                    seed: int, test_fraction: float) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f"{out.name}.partial-", dir=out.parent))
    folders = {"train": Path("train/good"), "test_good": Path("test/good"),
               "defective": Path("test") / DEFECT_FOLDER}
    try:
        rows = ["file\tsource\tdefect_probability"]
        for group, folder in folders.items():
            (partial / folder).mkdir(parents=True)
            for cell in groups[group]:
                target = folder / Path(cell.path).name
                shutil.copyfile(source / cell.path, partial / target)
                rows.append(f"{target}\t{cell.path}\t{cell.probability:.4f}")
        (partial / "SOURCES.tsv").write_text("\n".join(rows) + "\n")
        (partial / "README.md").write_text(_readme(groups, module_type, seed, test_fraction))
        replace_folder(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return out


def _readme(groups: dict[str, list[Cell]], module_type: str, seed: int,
            test_fraction: float) -> str:
    counts = {name: len(cells) for name, cells in groups.items()}
    return (
        f"# ELPV solar cells, {module_type}crystalline modules ({_README_MARKER})\n\n"
        f"Electroluminescence images of solar cells from the PyPI package {PACKAGE}, in the "
        f"MVTec AD layout.\n\n"
        f"- train/good: {counts['train']} cells of defect probability 0\n"
        f"- test/good: {counts['test_good']} cells of defect probability 0 "
        f"(seeded split, seed {seed}, test fraction {test_fraction})\n"
        f"- test/{DEFECT_FOLDER}: {counts['defective']} cells of defect probability 1 "
        f"(no masks: image-level metrics only)\n"
        f"- left out: {counts['ambiguous']} ambiguous cells (probability 1/3 or 2/3)\n\n"
        f"SOURCES.tsv maps each file to the package's file and probability.\n\n"
        f"Please cite: {CITATION}\n")



def write_stand_in(out: str | os.PathLike, per_group: int = 4, size: int = 48,
                   seed: int = 0) -> Path:
    """A small generated folder shaped like the package's data (``labels.csv``, ``images/``)
    for tests and offline checks: per module type, ``per_group`` cells of each probability
    (0, 1/3, 2/3, 1) plus ``per_group`` more normals; uint8 grayscale ``size`` x ``size`` PNG
    cells with four dark grid lines, the defective ones with a dark crack.
    """
    rng = np.random.default_rng(seed)
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    lines, number = [], 0
    for module_type in MODULE_TYPES:
        for probability in (0.0, 0.0, 1 / 3, 2 / 3, 1.0):
            for _ in range(per_group):
                number += 1
                cell = np.clip(rng.normal(150, 12, (size, size)), 0, 255).astype(np.uint8)
                cell[:, size // 3] = cell[:, 2 * size // 3] = 60
                if probability == 1.0:
                    cv2.line(cell, (2, int(rng.integers(size))), (size - 3, 5), 20, 2)
                name = f"images/cell{number:04d}.png"
                cv2.imwrite(str(out / name), cell)
                lines.append(f"{name}  {probability!r}  {module_type}")
    (out / "labels.csv").write_text("\n".join(lines) + "\n")
    return out
