"""Elongated images cut into near-square parts, written as a dataset in the MVTec AD layout.

Every candidate sees an image resized to a square, so an image three times as long as it is
wide loses three times more of its long side than of its short one, and a thin defect
across the long side loses its pixels. :func:`cut_into_parts` writes a copy of a dataset in
which each image is cut along its long side into parts about as long as they are wide:

- each image into ``round(long side / short side)`` parts (or ``parts`` for every image) of
  equal length, boundaries rounded to whole pixels, and each mask alike;
- ``train/good`` and ``test/good``: every part of a defect-free image;
- ``test/<defect>``: the parts whose mask marks a pixel, with their masks; the other parts
  of a defect image go to ``test/good`` (named ``<defect>_<stem>_...``), since by the mask
  they hold no defect; where an image's mask marks nothing at all, every part stays
  defective (with its empty mask), as the image was;
- ``val/<defect>`` (labelled validation defects): the marked parts; unmarked ones are left
  out (the layout holds no ``val/good``) and counted;
- every part is an 8-bit PNG, one channel where the image is gray (as the lab reads
  images: 16-bit data scaled, alpha dropped);
- ``PARTS.tsv`` maps each part to its source image and its pixel span, ``PARTS.json``
  holds ``parts`` (so that ``score`` cuts new images alike); ``README.md`` counts what
  went where. The lab then runs on the parts as on any dataset; its report
  adds each source image's result (:func:`part_sources`; the image's score is the highest
  of its parts', and it is defective when one of its parts is).

A defect image without a mask cannot be cut: which part holds the defect is unknown, so the
folder is refused before anything is written. The copy is written to a ``.partial-*``
sibling and renamed into place only when complete.

Example:
    >>> cut_into_parts("data/strips", "data/strips_parts")   # doctest: +SKIP
    PosixPath('data/strips_parts')
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from anomaly_utils.artifacts import check_replaceable, replace_folder
from anomaly_utils.data.images import display_path, read_image, read_mask
from anomaly_utils.data.layout import GOOD, PARTS_SETTING, DatasetIndex, Sample, scan_dataset
from anomaly_utils.errors import DataError, ParameterError

AUTO_PARTS = "auto"
_README_MARKER = "written by anomaly_utils.data.parts"
PARTS_TABLE = "PARTS.tsv"


@dataclass(frozen=True)
class Part:
    """One part of an image: ``index`` of ``count`` along ``axis`` (0: rows, the image is
    taller than wide; 1: columns), covering pixels ``start`` to ``stop`` (exclusive)."""

    index: int
    count: int
    axis: int
    start: int
    stop: int

    def crop(self, array: np.ndarray) -> np.ndarray:
        """This part of an (H, W, ...) array."""
        return array[self.start:self.stop] if self.axis == 0 else array[:, self.start:self.stop]

    @property
    def suffix(self) -> str:
        return f"part{self.index + 1}of{self.count}"


def parts_of(height: int, width: int, parts: int | str = AUTO_PARTS) -> list[Part]:
    """The parts of a ``height`` x ``width`` image: ``round(long / short)`` of them with
    "auto" (one part, the whole image, when it is near-square), else ``parts``."""
    axis = 0 if height > width else 1
    long, short = max(height, width), min(height, width)
    count = max(1, round(long / short)) if parts == AUTO_PARTS else int(parts)
    bounds = np.round(np.linspace(0, long, count + 1)).astype(int)
    return [Part(i, count, axis, int(bounds[i]), int(bounds[i + 1])) for i in range(count)]


def parts_option(value: str, words: tuple[str, ...] = (AUTO_PARTS,)) -> int | str:
    """A ``--parts`` value from the command line: one of ``words`` as it is, else a number
    of parts >= 1.

    Raises:
        ParameterError: neither, naming what is accepted.
    """
    if value in words:
        return value
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        accepted = ", ".join(words)
        raise ParameterError(f"--parts must be {accepted} or a number >= 1, got {value!r}",
                             fix=f"pass --parts {words[0]} or e.g. --parts 3")
    return number


def unmasked_defects(index: DatasetIndex) -> list[Sample]:
    """The defect images of ``index``, test and labelled validation, that have no mask:
    which of their parts holds the defect is unknown."""
    return [s for s in index.test + index.val_defects if s.label == 1 and s.mask_path is None]


def _check_parts(parts: int | str) -> None:
    if parts == AUTO_PARTS:
        return
    if isinstance(parts, bool) or not isinstance(parts, int | np.integer) or parts < 1:
        raise ParameterError(f"parts must be 'auto' or an integer >= 1, got {parts!r}",
                             fix="pass --parts auto or e.g. --parts 3")


def _write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = array[..., ::-1] if array.ndim == 3 and array.shape[-1] == 3 else array
    if not cv2.imwrite(str(path), np.ascontiguousarray(pixels)):
        raise DataError(f"could not write '{display_path(path)}'",
                        fix="check the free space and the folder's permissions")


def cut_into_parts(data_dir: str | os.PathLike, out: str | os.PathLike,
                   parts: int | str = AUTO_PARTS, overwrite: bool = False) -> Path:
    """Write ``data_dir`` cut into near-square parts to ``out`` (see the module docstring).

    Args:
        data_dir: a dataset in the MVTec AD layout; every defect image needs its mask.
        out: the folder to write; refused when it holds anything but an earlier output of
            this function (and that only with ``overwrite``).
        parts: "auto" (each image into ``round(long / short)`` parts) or a number of parts
            for every image.

    Returns:
        ``out``.

    Raises:
        ParameterError: ``parts`` is neither "auto" nor an integer >= 1.
        DataError: a defect image has no mask, or an image cannot be read.
        LabError: ``out`` is not empty and was not written here.
    """
    _check_parts(parts)
    index = scan_dataset(data_dir, allow_missing_masks=True)
    unmasked = unmasked_defects(index)
    if unmasked:
        names = ", ".join(display_path(s.path.relative_to(index.root)) for s in unmasked[:5])
        raise DataError(
            f"{len(unmasked)} defect image(s) of '{display_path(index.root)}' have no mask "
            f"({names}{', ...' if len(unmasked) > 5 else ''}): which part holds the defect "
            "is unknown, so they cannot be cut",
            fix="add the masks under ground_truth/<defect>/, or run the lab on the whole "
                "images with -p allow_missing_masks True")
    out = Path(out)
    check_replaceable(out, overwrite, _README_MARKER, "cut-parts", "--overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f"{out.name}.partial-", dir=out.parent))
    try:
        rows, counts = _write_parts(index.root, index.train + index.test + index.val_defects,
                                    partial, parts)
        if index.ignored:
            counts["files that are not images, not copied"] = len(index.ignored)
        (partial / PARTS_TABLE).write_text(
            "part\tsource\tindex\tcount\taxis\tstart\tstop\n" + "\n".join(rows) + "\n")
        (partial / PARTS_SETTING).write_text(json.dumps({"parts": parts}) + "\n")
        (partial / "README.md").write_text(_readme(index.root, parts, counts))
        replace_folder(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return out


def _write_parts(root: Path, samples: list[Sample], partial: Path,
                 parts: int | str) -> tuple[list[str], Counter]:
    """Write every part of ``samples``; the PARTS.tsv rows and the counts of what went where."""
    rows, counts = [], Counter()
    for sample in samples:
        image = read_image(sample.path, "rgb")
        if (image == image[..., :1]).all():  # a gray image stays a one-channel file
            image = image[..., :1]
        mask = read_mask(sample.mask_path) if sample.mask_path is not None else None
        if mask is not None and mask.shape != image.shape[:2]:
            raise DataError(f"mask '{display_path(sample.mask_path)}' is not the size of its "
                            f"image '{display_path(sample.path)}'",
                            fix="regenerate the mask at the image's size")
        split = sample.split
        # A defect image whose mask marks nothing gives no part to put apart: every part
        # stays defective, as the image was.
        unmarked_defect = mask is not None and not mask.any()
        if sample.label == 1 and unmarked_defect:
            counts["defect images whose mask marks nothing: every part kept defective"] += 1
        for part in parts_of(*image.shape[:2], parts):
            name = f"{sample.path.stem}_{part.suffix}.png"
            marked = mask is not None and (part.crop(mask).any() or unmarked_defect)
            if sample.label == 0:
                target = Path(split) / GOOD / name
            elif marked:
                target = Path(split) / sample.defect_type / name
                _write_png(partial / "ground_truth" / sample.defect_type
                           / f"{Path(name).stem}_mask.png",
                           part.crop(mask).astype(np.uint8) * 255)
            elif split == "test":
                target = Path("test") / GOOD / f"{sample.defect_type}_{name}"
                counts["unmarked defect parts to test/good"] += 1
            else:
                counts["unmarked parts of labelled validation defects, left out"] += 1
                continue
            _write_png(partial / target, part.crop(image))
            counts[str(target.parent)] += 1
            rows.append(f"{target}\t{sample.path.relative_to(root)}\t{part.index}\t"
                        f"{part.count}\t{part.axis}\t{part.start}\t{part.stop}")
    return rows, counts


def _readme(root: Path, parts: int | str, counts: Counter) -> str:
    lines = [f"# {root.name} cut into near-square parts ({_README_MARKER})", "",
             f"Each image of '{display_path(root)}' cut along its long side into "
             + ("round(long side / short side) parts" if parts == AUTO_PARTS
                else f"{parts} parts") + "; PARTS.tsv maps each part to its source image.",
             ""]
    lines += [f"- {where}: {n}" for where, n in sorted(counts.items())]
    return "\n".join(lines) + "\n"


def read_parts_table(data_dir: str | os.PathLike) -> dict[str, str]:
    """``PARTS.tsv`` of a folder written by :func:`cut_into_parts`: part file -> source file,
    both relative to their dataset's root.

    Raises:
        DataError: the folder has no ``PARTS.tsv``.
    """
    table = Path(data_dir) / PARTS_TABLE
    if not table.is_file():
        raise DataError(f"'{display_path(table)}' does not exist",
                        fix="pass a folder written by python -m anomaly_utils cut-parts")
    lines = table.read_text().splitlines()[1:]
    return {row.split("\t")[0]: row.split("\t")[1] for row in lines if row}


def part_sources(root: str | os.PathLike | None, part_paths: list[str]) -> list[str] | None:
    """The source image of each part in ``part_paths`` (files relative to ``root``), or None
    when ``root`` is not a folder written by :func:`cut_into_parts` (no ``PARTS.tsv``).

    Raises:
        DataError: a part is missing from the folder's ``PARTS.tsv``.
    """
    if root is None or not (Path(root) / PARTS_TABLE).is_file():
        return None
    table = read_parts_table(root)
    missing = [str(p) for p in part_paths if str(p) not in table]
    if missing:
        table_name = display_path(Path(root) / PARTS_TABLE)
        raise DataError(f"{len(missing)} part(s) are not in '{table_name}' "
                        f"(first: '{missing[0]}')",
                        fix="score the folder that PARTS.tsv belongs to, or write it again "
                            "with python -m anomaly_utils cut-parts")
    return [table[str(p)] for p in part_paths]
