"""The floor's nearest-pixel form: each cell's training pixels kept, the distance to the nearest.

The statistics floor's Gaussian form scores a pixel by its Mahalanobis distance to one Gaussian
per grid cell. Where a cell's normal pixels are not one cloud (the grains of a polycrystalline
solar cell, a tile ground in one of two ways), the Gaussian spans the space between the clouds
and a defect there looks normal. The nearest-pixel form keeps, per cell, the features of one
pixel of every training image (the cell's centre), in the coordinates the cell's Gaussian
whitens, and scores a pixel by its Euclidean distance to the nearest of them: a cell whose
normals are one cloud scores much as before, one whose normals are several scores by the
closest. No setting: the bank is every training image (at most :data:`MAX_BANK_IMAGES`,
evenly spaced), and the search is exact.

A training image's own pixel is its nearest neighbour; :meth:`PixelBank.nearest` can leave
each query image's own pixels out (``owners``), which is how the floor standardises the maps of
its training images for the eigen-image residual without their distances being zero.

Example:
    >>> import numpy as np
    >>> bank = PixelBank.of_cells([np.array([[0.0, 0.0], [4.0, 0.0]], np.float32)],
    ...                           [np.array([0, 1])])
    >>> bank.nearest(0, np.array([[2.0, 0.0], [4.0, 1.0]], np.float32)).tolist()
    [2.0, 1.0]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

MAX_BANK_IMAGES = 1024  # training images whose pixels a cell keeps (evenly spaced beyond it)
ARRAY_NAMES = ("bank_pixels", "bank_offsets", "bank_owners")


def bank_images(n: int) -> np.ndarray:
    """Indices of the training images that go into the bank: all of them up to
    :data:`MAX_BANK_IMAGES`, else that many evenly spaced, (K,) int64 ascending."""
    if n <= MAX_BANK_IMAGES:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, MAX_BANK_IMAGES).round().astype(np.int64))


class PixelBank:
    """Whitened training pixels per cell, concatenated cell after cell.

    Attributes:
        pixels: (T, D) float32, the pixels of every cell in cell order.
        offsets: (C + 1,) int64, cell c's pixels are ``pixels[offsets[c]:offsets[c + 1]]``.
        owners: (T,) int32, the training image each pixel came from.
    """

    def __init__(self, pixels: np.ndarray, offsets: np.ndarray, owners: np.ndarray):
        self.pixels = np.ascontiguousarray(pixels, np.float32)
        self.offsets = np.asarray(offsets, np.int64)
        self.owners = np.asarray(owners, np.int32)
        if (self.pixels.ndim != 2 or self.offsets.ndim != 1 or len(self.offsets) < 2
                or self.offsets[0] != 0 or self.offsets[-1] != len(self.pixels)
                or np.any(np.diff(self.offsets) < 1) or self.owners.shape != (len(self.pixels),)):
            raise ValueError(f"a pixel bank of {self.pixels.shape} pixels, "
                             f"{self.offsets.shape} offsets and {self.owners.shape} owners "
                             "does not fit together")
        self._norms = np.einsum("td,td->t", self.pixels, self.pixels)

    @classmethod
    def of_cells(cls, cells: Sequence[np.ndarray], owners: Sequence[np.ndarray]) -> PixelBank:
        """A bank from each cell's (M_c, D) pixels and their (M_c,) owner images."""
        sizes = [len(c) for c in cells]
        return cls(np.concatenate(cells), np.concatenate([[0], np.cumsum(sizes)]),
                   np.concatenate(owners))

    @property
    def n_cells(self) -> int:
        return len(self.offsets) - 1

    def nearest(self, cell: int, queries: np.ndarray,
                owners: np.ndarray | None = None) -> np.ndarray:
        """Euclidean distance of each query to the nearest pixel of ``cell``.

        Args:
            cell: the cell's index, in the order the bank was built.
            queries: (P, D) whitened features.
            owners: (P,) the training image each query comes from, whose own pixels are then
                left out; None: no pixel is left out.

        Returns:
            (P,) float32 distances, in the cell's standard deviations.
        """
        a, b = self.offsets[cell], self.offsets[cell + 1]
        queries = np.asarray(queries, np.float32)
        # |q - p|^2 = |q|^2 + |p|^2 - 2 q.p: one matrix product per cell.
        squared = self._norms[None, a:b] - 2 * (queries @ self.pixels[a:b].T)
        if owners is not None:
            squared[np.asarray(owners)[:, None] == self.owners[None, a:b]] = np.inf
        nearest = squared.min(axis=1) + np.einsum("pd,pd->p", queries, queries)
        return np.sqrt(np.maximum(nearest, 0)).astype(np.float32)

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays to save (:data:`ARRAY_NAMES`)."""
        return dict(zip(ARRAY_NAMES, (self.pixels, self.offsets, self.owners), strict=True))

    @classmethod
    def restore(cls, arrays: dict[str, np.ndarray]) -> PixelBank:
        """The bank :meth:`arrays` saved.

        Raises:
            KeyError, ValueError: an array is missing or they do not fit together.
        """
        return cls(*(arrays[name] for name in ARRAY_NAMES))
