"""A dataset folder in the MVTec AD layout: which images and masks it holds, how its
defect-free training images split into training and validation, and its fingerprint.

The layout (every MVTec AD category, the synthetic carpet, a user's own data)::

    DATA_DIR/train/good/*.png            defect-free training images
    DATA_DIR/test/good/*.png             defect-free test images
    DATA_DIR/test/<defect>/*.png         defective test images, one folder per defect type
    DATA_DIR/ground_truth/<defect>/<stem>_mask.png   pixel masks (0/255, binarised at > 127)
    DATA_DIR/val/<defect>/*.png          optional: a few labelled real defects for validation
                                         (masks in ground_truth/<defect>/ like the test's)

1. :func:`scan_dataset` walks the folders and pairs images with masks; problems are
   reported up front with the path and the fix (nothing is silently dropped: files that
   are not images are listed in ``DatasetIndex.ignored``).
2. :func:`split_train_val` holds out a deterministic fraction of ``train/good`` as the
   validation set for thresholds and early stopping, near-copies of one item on one side
   where asked; the test set is never used for it.
3. :func:`fingerprint` names the dataset's content; :func:`dataset_summary` counts it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from anomaly_utils.data.images import IMAGE_SUFFIXES, display_path, image_header, read_mask
from anomaly_utils.errors import DataError, ParameterError

GOOD = "good"
# Written by ``cut-parts`` beside PARTS.tsv: {"parts": "auto" or a number} (data/parts.py).
PARTS_SETTING = "PARTS.json"
# The median image's long side over its short side beyond which the summary says that
# resizing to a square squeezes the images (``notes``, :func:`elongation_note`).
ELONGATED = 1.5


@dataclass(frozen=True)
class Sample:
    """One image of the dataset.

    Attributes:
        path: the image file.
        split: "train", "test" or "val" (a labelled validation defect).
        defect_type: "good" for defect-free images, else the defect folder's name.
        mask_path: the ground-truth mask, ``None`` for good images and for defect images
            whose mask is missing (only allowed with ``allow_missing_masks``).
    """

    path: Path
    split: str
    defect_type: str
    mask_path: Path | None = None

    @property
    def label(self) -> int:
        """0 for defect-free, 1 for defective."""
        return int(self.defect_type != GOOD)


@dataclass
class DatasetIndex:
    """Every file of a dataset folder, paired and checked, before any pixel is decoded."""

    root: Path
    train: list[Sample]
    test: list[Sample]
    ignored: list[Path] = field(default_factory=list)
    defect_types: list[str] = field(default_factory=list)
    val_defects: list[Sample] = field(default_factory=list)  # labelled, from val/<defect>/

    @property
    def masks_missing(self) -> list[Sample]:
        """Defect images without a mask (image-level metrics only)."""
        return [s for s in self.test if s.label == 1 and s.mask_path is None]


def _list_dir(folder: Path) -> list[Path]:
    """Entries of ``folder`` sorted by name, with a clear error for unreadable folders."""
    try:
        return sorted(folder.iterdir(), key=lambda p: os.fsencode(p.name))
    except OSError as exc:
        raise DataError(f"cannot list folder '{display_path(folder)}': {exc.strerror or exc}",
                        fix="check that it exists and is readable") from exc


def _image_files(folder: Path, ignored: list[Path]) -> list[Path]:
    """Image files of ``folder``; anything else is appended to ``ignored``."""
    files = []
    for entry in _list_dir(folder):
        try:
            is_file = entry.is_file()
        except OSError as exc:  # e.g. a symlink loop (ELOOP)
            raise DataError(f"cannot read '{display_path(entry)}': {exc.strerror or exc}",
                            fix="remove the broken link or file") from exc
        if entry.is_symlink() and not entry.exists():
            raise DataError(f"'{display_path(entry)}' is a broken or looping symlink",
                            fix="remove the link or point it at a real image")
        if is_file and entry.suffix.lower() in IMAGE_SUFFIXES and not entry.name.startswith("."):
            files.append(entry)
        else:
            ignored.append(entry)
    return files


def _require_dir(path: Path, what: str, fix: str) -> None:
    if not path.is_dir():
        raise DataError(f"{what} '{display_path(path)}' does not exist or is not a folder", fix=fix)


def scan_dataset(data_dir: str | os.PathLike, allow_missing_masks: bool = False) -> DatasetIndex:
    """Index a dataset folder in the MVTec AD layout and check that it is consistent.

    Args:
        data_dir: the category folder (holding ``train/``, ``test/``, ``ground_truth/``).
        allow_missing_masks: if True, defect images without a mask are kept for image-level
            metrics only (``Sample.mask_path`` is None); if False they are an error.

    Raises:
        DataError: naming the path and the fix, for a missing folder, an empty category,
            a defect image without a mask, or a mask without an image.
    """
    root = Path(data_dir)
    _require_dir(root, "data_dir", "pass the folder of one MVTec-layout category "
                 "(e.g. data/synthetic_carpet; `make data` creates it)")
    _require_dir(root / "train" / GOOD, "training folder", "the dataset needs train/good/ "
                 "with defect-free images (MVTec AD layout)")
    _require_dir(root / "test", "test folder", "the dataset needs test/good/ and test/<defect>/")
    ignored: list[Path] = []
    train = [Sample(p, "train", GOOD) for p in _image_files(root / "train" / GOOD, ignored)]
    if not train:
        raise DataError(f"'{display_path(root / 'train' / GOOD)}' holds no images",
                        fix="add defect-free PNG/JPEG/BMP/TIFF training images")

    gt_root = root / "ground_truth"
    used_masks: set[Path] = set()
    missing: list[Path] = []
    test = _labelled_samples(root / "test", "test", gt_root, used_masks, missing, ignored)
    defect_types = sorted({s.defect_type for s in test if s.label == 1},
                          key=lambda d: os.fsencode(d))
    val_defects: list[Sample] = []
    if (root / "val").is_dir():
        val_defects = _labelled_samples(root / "val", "val", gt_root, used_masks, missing,
                                        ignored)
        if any(s.label == 0 for s in val_defects):
            raise DataError(
                f"'{display_path(root / 'val' / GOOD)}' is not used: the defect-free validation "
                "images are held out of train/good (val_fraction)",
                fix="move those images to train/good/")
    if missing and not allow_missing_masks:
        shown = ", ".join(f"'{display_path(p)}'" for p in missing[:3])
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise DataError(
            f"{len(missing)} defect image(s) have no mask: {shown}{more} "
            f"(expected ground_truth/<defect>/<name>_mask.png)",
            fix="add the masks, or set allow_missing_masks=True (`-p allow_missing_masks "
                "True` on the command line) to use these images for image-level metrics only",
        )
    if gt_root.is_dir():
        for folder in _list_dir(gt_root):
            if not folder.is_dir():
                ignored.append(folder)
                continue
            for mask in _image_files(folder, ignored):
                if mask not in used_masks:
                    raise DataError(
                        f"mask '{display_path(mask)}' has no image "
                        f"(expected test/{folder.name}/{mask.stem.removesuffix('_mask')}.* "
                        f"or val/{folder.name}/...)",
                        fix="add the image or delete the stray mask",
                    )
    if not any(s.defect_type == GOOD for s in test) and not defect_types:
        raise DataError(f"'{display_path(root / 'test')}' holds no image folders",
                        fix="add test/good/ and test/<defect>/ folders")
    return DatasetIndex(root, train, test, ignored, defect_types, val_defects)


def _labelled_samples(split_root: Path, split: str, gt_root: Path, used_masks: set[Path],
                      missing: list[Path], ignored: list[Path]) -> list[Sample]:
    """The samples of ``split_root/<type>/`` folders, defect images paired with
    ``gt_root/<type>/<stem>_mask.png`` (added to ``used_masks``; images without one are
    appended to ``missing``)."""
    samples: list[Sample] = []
    for folder in _list_dir(split_root):
        if not folder.is_dir():
            ignored.append(folder)
            continue
        files = _image_files(folder, ignored)
        if not files:
            raise DataError(f"category folder '{display_path(folder)}' holds no images",
                            fix="add images to it or remove the empty folder")
        defect = folder.name
        for path in files:
            mask_path = None
            if defect != GOOD:
                candidate = gt_root / defect / f"{path.stem}_mask.png"
                if candidate in used_masks:
                    raise DataError(
                        f"mask '{display_path(candidate)}' would serve two images, "
                        f"'{display_path(path)}' and one in another split",
                        fix=f"rename one of the two {path.stem}.* images and its mask")
                if candidate.is_file():
                    mask_path = candidate
                    used_masks.add(candidate)
                else:
                    missing.append(path)
            samples.append(Sample(path, split, defect, mask_path))
    return samples


def split_train_val(samples: list[Sample], val_fraction: float, seed: int,
                    groups: list[int] | None = None) -> tuple[list[Sample], list[Sample]]:
    """Split defect-free training samples into (train, validation), deterministically.

    The same files, ``val_fraction``, ``seed`` and ``groups`` always give the same split,
    independent of the order the file system lists them in. At least one image stays on
    each side when ``0 < val_fraction < 1`` and there are two or more images.

    Args:
        groups: one label per sample (in ``samples``' order); samples sharing a label go
            to the same side, whole groups are drawn until the validation side holds at
            least ``ceil(val_fraction * N)`` images (see :mod:`anomaly_utils.data.near_copies`);
            a group that would make it more than twice that stays in training, and where no
            group fits the images are drawn one by one. None, or every label distinct, draws
            image by image.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ParameterError(f"val_fraction must be in [0, 1), got {val_fraction}",
                             fix="pass e.g. -p val_fraction 0.1")
    if groups is not None and len(groups) != len(samples):
        raise ValueError(f"{len(groups)} group labels for {len(samples)} samples")
    positions = sorted(range(len(samples)), key=lambda i: os.fsencode(samples[i].path.name))
    ordered = [samples[i] for i in positions]
    # Groups are numbered in the sorted order, so that distinct labels reproduce the
    # image-by-image split exactly.
    numbering: dict[int, int] = {}
    group_of = [numbering.setdefault(groups[i] if groups is not None else i, len(numbering))
                for i in positions]
    members: list[list[int]] = [[] for _ in numbering]
    for index, group in enumerate(group_of):
        members[group].append(index)
    n_val = math.ceil(val_fraction * len(ordered)) if val_fraction > 0 else 0
    n_val = min(n_val, len(ordered) - 1)
    val_idx: set[int] = set()
    for group in np.random.default_rng(seed).permutation(len(members)).tolist():
        if len(val_idx) >= n_val:
            break
        # A group that alone would double the validation side stays in training.
        if len(val_idx) + len(members[group]) <= max(2 * n_val, 1) and \
                len(val_idx) + len(members[group]) < len(ordered):
            val_idx.update(members[group])
    if n_val and not val_idx:
        return split_train_val(samples, val_fraction, seed)
    train = [s for i, s in enumerate(ordered) if i not in val_idx]
    val = [s for i, s in enumerate(ordered) if i in val_idx]
    return train, val


def fingerprint(index: DatasetIndex) -> str:
    """SHA-256 over every file's relative path and content (hex, 16 characters).

    Two folders with the same files give the same fingerprint wherever they live; any
    changed, added or removed image or mask changes it.
    """
    labelled = index.test + index.val_defects
    files = [s.path for s in index.train + labelled]
    files += [s.mask_path for s in labelled if s.mask_path is not None]
    digest = hashlib.sha256()
    for path in sorted(files, key=lambda p: os.fsencode(p.relative_to(index.root))):
        digest.update(os.fsencode(path.relative_to(index.root)) + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:16]


def dataset_summary(index: DatasetIndex, with_masks: bool = True) -> dict:
    """Counts per split and defect type, image sizes, colour modes and mask coverage.

    Returns a JSON-ready dict: ``counts`` {"train/good": n, "test/<type>": n, ...},
    ``image_sizes`` {"distinct": n, "height"/"width": {"min", "median", "max"},
    "elongation": {"median": long side / short side}}, ``modes`` {"RGB"/"L"/...: n},
    ``mask_coverage`` {defect: mean fraction of the image covered}, ``fingerprint``,
    ``ignored`` paths, ``masks_missing`` count, ``unreadable`` (one message per file whose
    header cannot be read), ``notes`` (what resizing does to these images,
    :func:`elongation_note`; empty for near-square images), and for a folder of parts
    written by ``cut-parts`` ``parts``, how its images were cut ("auto" or a number), so
    that new images are cut alike when scored.
    """
    counts = Counter(f"{s.split}/{s.defect_type}"
                     for s in index.train + index.test + index.val_defects)
    shapes = []
    modes: Counter = Counter()
    unreadable = []
    for sample in index.train + index.test:
        try:
            height, width, mode = image_header(sample.path)
        except DataError as exc:
            unreadable.append(str(exc))
            continue
        shapes.append((height, width))
        modes[mode] += 1
    heights, widths = np.array(shapes or [(0, 0)]).T
    elongation = median_elongation(shapes)
    coverage: dict[str, float] = {}
    if with_masks:
        for defect in index.defect_types:
            fractions = [read_mask(s.mask_path).mean() for s in index.test
                         if s.defect_type == defect and s.mask_path is not None]
            coverage[defect] = float(np.mean(fractions)) if fractions else None
    return {
        "root": str(index.root),
        "counts": dict(sorted(counts.items())),
        "image_sizes": {
            "distinct": len(set(shapes)),
            "height": {"min": int(heights.min()), "median": float(np.median(heights)),
                       "max": int(heights.max())},
            "width": {"min": int(widths.min()), "median": float(np.median(widths)),
                      "max": int(widths.max())},
            "elongation": {"median": round(elongation, 3)},
        },
        "modes": dict(modes.most_common()),
        "mask_coverage": coverage,
        "defect_types": list(index.defect_types),
        "fingerprint": fingerprint(index),
        "ignored": [display_path(p) for p in index.ignored],
        "masks_missing": len(index.masks_missing),
        "unreadable": unreadable,
        "notes": [note] if (note := elongation_note(elongation)) else [],
        **({"parts": json.loads((index.root / PARTS_SETTING).read_text())["parts"]}
           if (index.root / PARTS_SETTING).is_file() else {}),
    }


def median_elongation(shapes: list[tuple[int, int]]) -> float:
    """The median long side / short side of images of (height, width) ``shapes``; 1.0 for
    none."""
    if not shapes:
        return 1.0
    heights, widths = np.array(shapes).T
    return float(np.median(np.maximum(heights, widths) / np.maximum(
        np.minimum(heights, widths), 1)))


def elongation_note(elongation: float) -> str | None:
    """What a user should know about images whose median long side is ``elongation`` times
    their short side (:data:`ELONGATED` or more), or None: every candidate sees them resized
    to a square."""
    if elongation < ELONGATED:
        return None
    return (f"half of the images are {elongation:.1f} or more times as long as they are wide; "
            f"every candidate sees them resized to a square, which squeezes the long side "
            f"{elongation:.1f} times more than the short one, so that a thin defect running "
            "across the long side loses its pixels; where every defect image has a mask, "
            "run works on near-square parts instead (--parts auto, the default; "
            "python -m anomaly_utils cut-parts DATA_DIR PARTS_DIR writes them)")
