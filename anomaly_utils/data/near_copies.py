"""Near-copies: images of the same item taken again (another lighting, another crop).

Inspection sets often hold several captures of one item; magnetic_tile photographs each tile
under six lightings. Split image by image, the defect-free test images then have siblings
among the training images while the defective items were never seen, so the test's normals
are partly remembered and its figures are optimistic for a new item; a validation split
drawn the same way is optimistic alike and prefers candidates that remember.

Two images are near-copies when their thumbnails (16 x 16, of the histogram-equalised gray
image, zero mean, unit norm) are much closer than the images around them: the cosine
distance ``d = 1 - cos`` of the pair is at most :data:`NEAR_RATIO` times the smaller of the
two images' distances to their :data:`NEIGHBOUR_RANK`-th nearest neighbour. The relative
rule needs no absolute threshold: on a set of aligned, alike objects every neighbour is
close and nothing is a near-copy. On magnetic_tile, whose source names tell which captures
show one tile, 95 % of the pairs of training images it joins into one group show one tile,
and it joins 74 % of the pairs that do (the rest differ by a lighting that changes the
thumbnail more than another tile does);
``python experiments/unseen_tiles.py rule ../shared/datasets/magnetic_tile``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import cv2
import numpy as np
import scipy.sparse
import scipy.sparse.csgraph

from anomaly_utils.data.images import read_image
from anomaly_utils.errors import DataError

THUMBNAIL_SIDE = 16
NEIGHBOUR_RANK = 20
NEAR_RATIO = 0.3
# Rows of the distance matrix computed at once: bounds memory to ROWS x N float32.
_ROWS = 1024


def thumbnails(images: np.ndarray) -> np.ndarray:
    """Gray thumbnails as unit vectors: uint8 (N, S, S, C) -> float32 (N, 256).

    Each image's gray values are histogram-equalised first (a capture under another
    lighting keeps more of its ranks than of its values), area-resized to 16 x 16, and the
    row made zero mean and unit norm (a flat image gives a zero row).
    """
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images must be (N, S, S, C), got shape {images.shape}")
    side = (THUMBNAIL_SIDE, THUMBNAIL_SIDE)
    small = []
    for image in images:
        gray = image[..., 0] if image.shape[-1] == 1 else image.mean(axis=-1).astype(np.uint8)
        equalised = cv2.equalizeHist(np.ascontiguousarray(gray, np.uint8))
        small.append(cv2.resize(equalised.astype(np.float32), side, interpolation=cv2.INTER_AREA))
    vectors = (np.stack(small).reshape(len(images), -1) if small
               else np.zeros((0, THUMBNAIL_SIDE * THUMBNAIL_SIDE), np.float32))
    vectors = vectors - vectors.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def file_thumbnails(paths: Sequence[str | os.PathLike]) -> np.ndarray:
    """:func:`thumbnails` of image files read at their own size, so that the result does not
    depend on a notebook's ``image_size``: float32 (N, 256). An unreadable file gives a zero
    row (a near-copy of nothing); loading it reports the file."""
    rows = []
    for path in paths:
        try:
            rows.append(thumbnails(read_image(path, "grayscale")[None])[0])
        except DataError:
            rows.append(np.zeros(THUMBNAIL_SIDE * THUMBNAIL_SIDE, np.float32))
    return np.stack(rows) if rows else np.zeros((0, THUMBNAIL_SIDE * THUMBNAIL_SIDE), np.float32)


def _distances(queries: np.ndarray, bank: np.ndarray, rows: slice) -> np.ndarray:
    return 1.0 - queries[rows] @ bank.T


def _reference(distances: np.ndarray, rank: int) -> np.ndarray:
    """Each row's distance to its ``rank``-th nearest column (1-based), clipped to the
    row's length."""
    rank = min(rank, distances.shape[1]) - 1
    return np.partition(distances, rank, axis=1)[:, rank]


def _bank_reference(bank: np.ndarray) -> np.ndarray:
    """Each bank image's distance to its NEIGHBOUR_RANK-th nearest other bank image."""
    reference = np.empty(len(bank), np.float32)
    for start in range(0, len(bank), _ROWS):
        rows = slice(start, start + _ROWS)
        distances = _distances(bank, bank, rows)
        distances[np.arange(distances.shape[0]), np.arange(start, start + len(distances))] = np.inf
        reference[rows] = _reference(distances, NEIGHBOUR_RANK)
    return reference


def near_copy_groups(thumbs: np.ndarray, reference: np.ndarray | None = None) -> np.ndarray:
    """Group labels (N,) int: images linked by a chain of near-copies share a label, every
    other image has one of its own. Labels number the groups in order of their first
    image. ``reference``: :func:`_bank_reference` of ``thumbs`` where the caller has it."""
    n = len(thumbs)
    if n < 3:
        return np.arange(n)
    if reference is None:
        reference = _bank_reference(thumbs)
    pairs_i, pairs_j = [], []
    for start in range(0, n, _ROWS):
        rows = slice(start, start + _ROWS)
        distances = _distances(thumbs, thumbs, rows)
        limit = NEAR_RATIO * np.minimum(reference[rows, None], reference[None, :])
        i, j = np.nonzero(distances <= limit)
        keep = (i + start) != j
        pairs_i.append(i[keep] + start)
        pairs_j.append(j[keep])
    graph = scipy.sparse.coo_matrix(
        (np.ones(sum(len(p) for p in pairs_i), bool),
         (np.concatenate(pairs_i), np.concatenate(pairs_j))), shape=(n, n))
    _, labels = scipy.sparse.csgraph.connected_components(graph, directed=False)
    # Renumber in order of first appearance so that singletons keep their index order.
    _, first = np.unique(labels, return_index=True)
    order = np.empty(len(first), np.int64)
    order[np.argsort(first)] = np.arange(len(first))
    return order[labels]


def has_near_copy(queries: np.ndarray, bank: np.ndarray,
                  bank_reference: np.ndarray | None = None) -> np.ndarray:
    """Whether each query thumbnail has a near-copy among the bank's: bool (M,).
    ``bank_reference``: :func:`_bank_reference` of ``bank`` where the caller has it."""
    if len(bank) < 2 or len(queries) == 0:
        return np.zeros(len(queries), bool)
    if bank_reference is None:
        bank_reference = _bank_reference(bank)
    found = np.zeros(len(queries), bool)
    for start in range(0, len(queries), _ROWS):
        rows = slice(start, start + _ROWS)
        distances = _distances(queries, bank, rows)
        query_reference = _reference(distances, NEIGHBOUR_RANK)
        limit = NEAR_RATIO * np.minimum(query_reference[:, None], bank_reference[None, :])
        found[rows] = (distances <= limit).any(axis=1)
    return found


def near_copy_report(train: np.ndarray, test: np.ndarray, test_labels: np.ndarray) -> dict:
    """How many test images have a near-copy among the training images.

    Args:
        train: thumbnails (N, 256) of the defect-free training images (:func:`file_thumbnails`
            of their files, as the validation split by items uses them).
        test: thumbnails (M, 256) of the test images.
        test_labels: (M,) 0 for defect-free, 1 for defective.

    Returns:
        ``{"good": [with a near-copy, of], "defective": [with a near-copy, of],
        "train_in_groups": training images with a near-copy among the others}``.
    """
    reference = _bank_reference(train) if len(train) >= 2 else None
    found = has_near_copy(test, train, reference)
    labels = np.asarray(test_labels)
    groups = near_copy_groups(train, reference)
    in_groups = int((np.bincount(groups)[groups] > 1).sum())
    return {"good": [int(found[labels == 0].sum()), int((labels == 0).sum())],
            "defective": [int(found[labels == 1].sum()), int((labels == 1).sum())],
            "train_in_groups": in_groups}


def near_copy_note(report: dict) -> str | None:
    """A line for the data summary where a quarter or more of the defect-free test images
    have a near-copy in training; None otherwise."""
    good, n_good = report["good"]
    defective, n_defective = report["defective"]
    if n_good == 0 or good < 0.25 * n_good:
        return None
    share = f"{defective} of {n_defective} defective ones" if n_defective else "no defective ones"
    return (f"{good} of {n_good} defect-free test images have a near-copy among the training "
            f"images (the same item captured again?), against {share}: the test's normals "
            "are partly remembered, so its figures are optimistic for an item never seen")
