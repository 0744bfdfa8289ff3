"""The segmentation head's anomaly maps and image scores.

1. :func:`head_maps`: the head sees each image beside its reconstruction (AE-2's sliding
   window over the whole image) and gives a per-pixel anomaly probability.
2. :func:`peak_of_mean_filtered`: the image score is the peak of the map after a mean filter
   (DRAEM: a 21x21 window at 256 px, about 8 % of the side), so that one hot pixel does not
   outweigh a coherent region.

Example:
    >>> maps = np.zeros((2, 32, 32), np.float32)
    >>> maps[1, 10:20, 10:20] = 1.0
    >>> peak_of_mean_filtered(maps, 0.1).round(2).tolist()
    [0.0, 1.0]
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from anomaly_utils.errors import ParameterError
from anomaly_utils.scoring.reconstruction import reconstruct

# DRAEM's score window: 21 pixels at 256.
SCORE_WINDOW = 21 / 256


def head_maps(head, images: np.ndarray, recons: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Anomaly probabilities (N, H, W) float32 in [0, 1] of images and their reconstructions.

    Args:
        head: a segmentation head (inputs (N, H, W, 2C), output (N, H, W, 1)).
        images: float32 (N, H, W, C) in [0, 1].
        recons: their reconstructions, same shape.
        batch_size: images per forward pass.
    """
    if images.shape != recons.shape:
        raise ParameterError(f"images {images.shape} and reconstructions {recons.shape} "
                             "differ in shape", fix="pass each image's own reconstruction")
    both = np.concatenate([images, recons], axis=-1).astype(np.float32)
    return reconstruct(head, both, batch_size)[..., 0]


def score_window(image_size: int, fraction: float = SCORE_WINDOW) -> int:
    """The mean filter's side for images of ``image_size`` pixels: odd, at least 1."""
    if not 0 < fraction <= 1:
        raise ParameterError(f"head_score_window must be in (0, 1], got {fraction!r}",
                             fix="pass a fraction of the image side, e.g. 0.08")
    side = max(1, round(fraction * image_size))
    return side if side % 2 else side + 1


def peak_of_mean_filtered(maps: np.ndarray, fraction: float = SCORE_WINDOW) -> np.ndarray:
    """(N,) float32 image scores: the maximum of each (H, W) map after a mean filter whose
    side is ``fraction`` of the map's side (:func:`score_window`)."""
    maps = np.asarray(maps, np.float32)
    side = score_window(maps.shape[1], fraction)
    filtered = ndimage.uniform_filter(maps, size=(1, side, side), mode="reflect")
    return filtered.reshape(len(maps), -1).max(axis=1).astype(np.float32)
