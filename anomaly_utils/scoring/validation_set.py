"""The pseudo-labelled validation set that every candidate of a run is judged on.

Candidates see the data at different sizes (the floor at 256 px, AE-1 at 64, AE-2 at 128 by
default). Were each to paste its own pseudo-anomalies into the validation normals at its own
size, the random draws would differ with the size, and the candidates would be compared on
different sets: different kinds, counts and places. So the set is built once per run, at the
validation images' own resolution (their longest side, at most :data:`MAX_SIDE` pixels), from
the run's seed, and stored in ``run_dir/validation/``; each candidate reads it and resizes
it to its own input size, as the test images are resized from their files. Whichever
notebook builds it first, the content is the same (it depends on the files, the seed and the
colour mode only).

The set is :func:`anomaly_utils.data.pseudo_anomalies.make_balanced_validation`: every
validation normal once clean, and an equal number of anomalous copies of every kind; then
the dataset's own labelled validation defects (``val/<defect>/``, kind
``labelled/<defect>``), when it has any. Where they exist, the candidates are chosen on them
(:func:`anomaly_utils.evaluation.selection.validation_metrics`).

Example:
    >>> import tempfile
    >>> from anomaly_utils.data.synthetic import generate_dataset
    >>> from anomaly_utils.data.loading import load_dataset
    >>> root = Path(tempfile.mkdtemp())
    >>> data = generate_dataset(root / "carpet", seed=0, size=64, n_train=10, n_test_good=2,
    ...                         n_per_defect=1)
    >>> ds = load_dataset(data, image_size=32, val_fraction=0.3)
    >>> pseudo = shared_validation(root / "run", ds, seed=0, eval_size=16)
    >>> pseudo.images.shape[1:], pseudo.masks.shape[1:], int(pseudo.labels.sum()) > 0
    ((32, 32, 3), (16, 16), True)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from anomaly_utils.artifacts import load_npz, save_npz
from anomaly_utils.data import pseudo_anomalies
from anomaly_utils.data.images import read_image, read_mask
from anomaly_utils.data.layout import Sample
from anomaly_utils.data.loading import resize_image, resize_mask
from anomaly_utils.data.pseudo_anomalies import LABELLED
from anomaly_utils.errors import DataError

VALIDATION_FOLDER = "validation"  # in the run directory
MAX_SIDE = 512  # pixels; larger validation images are built at this side


@dataclass
class PseudoLabelled:
    """The pseudo-labelled validation set: ``images`` (P, H, W, C) uint8 at a candidate's
    size, ``labels`` (P,) int with 1 = pasted anomaly, ``masks`` (P, E, E) bool at the
    scoring resolution, ``kinds`` (P,) str ("good", the pasted kind or ``labelled/<defect>``),
    ``has_mask`` (P,) bool (False only for labelled defects without a mask)."""

    images: np.ndarray
    labels: np.ndarray
    masks: np.ndarray
    kinds: np.ndarray
    has_mask: np.ndarray


def validation_file(run_dir: str | os.PathLike, color_mode: str) -> Path:
    """Where a run keeps its pseudo-labelled validation set for one colour mode."""
    return Path(run_dir) / VALIDATION_FOLDER / f"pseudo_labelled_{color_mode}.npz"


def build_validation(paths: list[Path], color_mode: str, seed: int,
                     defects: list[Sample] = ()) -> dict[str, np.ndarray]:
    """Read the validation normals at their own resolution, paste the anomalies and append
    the labelled defects.

    Args:
        paths: the validation image files (``AnomalyDataset.val_paths``), N >= 1.
        color_mode: "rgb" or "grayscale".
        seed: seeds the anomalies.
        defects: the dataset's labelled validation defects (``DatasetIndex.val_defects``).

    Returns:
        ``{"images": uint8 (P, S, S, C), "labels": (P,), "masks": bool (P, S, S),
        "kinds": str (P,), "has_mask": bool (P,), "side": S}`` with S the longest side of
        the largest image, at most :data:`MAX_SIDE`.
    """
    if not paths:
        raise DataError("the dataset has no validation images to paste pseudo-anomalies into",
                        fix="use val_fraction > 0 with at least 2 training images")
    originals = [read_image(path, color_mode) for path in paths]
    labelled = [read_image(sample.path, color_mode) for sample in defects]
    side = min(MAX_SIDE, max(max(image.shape[:2]) for image in originals + labelled))
    normals = np.stack([resize_image(image, side) for image in originals])
    images, labels, masks, kinds = pseudo_anomalies.make_balanced_validation(normals, seed)
    has_mask = [True] * len(images)
    if defects:
        images = np.concatenate([images, [resize_image(image, side) for image in labelled]])
        masks = np.concatenate([masks, [
            resize_mask(read_mask(s.mask_path), side) if s.mask_path is not None
            else np.zeros((side, side), bool) for s in defects]])
        labels = np.r_[labels, np.ones(len(defects), labels.dtype)]
        kinds = [*kinds, *(LABELLED + s.defect_type for s in defects)]
        has_mask += [s.mask_path is not None for s in defects]
    return {"images": images, "labels": labels, "masks": masks, "kinds": np.asarray(kinds),
            "has_mask": np.asarray(has_mask), "side": np.int64(side)}


def shared_validation(run_dir: str | os.PathLike, ds, seed: int,
                      eval_size: int) -> PseudoLabelled:
    """The run's pseudo-labelled validation set at ``ds``'s image size.

    Built by :func:`build_validation` and stored on first use (atomically, stamped with the
    dataset's fingerprint, the seed and the colour mode); read back afterwards. A stored set
    from other data or another seed is rebuilt.

    Args:
        run_dir: the run directory.
        ds: an :class:`anomaly_utils.data.loading.AnomalyDataset` (its ``val_paths``,
            ``color_mode``, ``image_size`` and fingerprint are used).
        seed: seeds the anomalies (the run's seed).
        eval_size: side of the returned masks, pixels (the scoring resolution).
    """
    path = validation_file(run_dir, ds.color_mode)
    defects = ds.index.val_defects
    stamp = {"fingerprint": ds.fingerprint, "seed": int(seed),
             "paths": [p.relative_to(ds.index.root).as_posix()
                       for p in [*ds.val_paths, *(s.path for s in defects)]]}
    stored = load_npz(path) if path.is_file() else None
    if stored is None or str(stored["stamp"]) != repr(stamp):
        stored = build_validation(ds.val_paths, ds.color_mode, seed, defects)
        stored["stamp"] = np.asarray(repr(stamp))
        save_npz(path, **stored)
    images = np.stack([resize_image(image, ds.image_size) for image in stored["images"]])
    masks = np.stack([resize_mask(mask, eval_size) for mask in stored["masks"]])
    return PseudoLabelled(images, np.asarray(stored["labels"]), masks,
                          np.asarray(stored["kinds"]), np.asarray(stored["has_mask"], bool))
