"""Input pipelines: image arrays as ``keras.utils.PyDataset`` batches ``(x, x)`` of numpy
float32 in [0, 1], one implementation for every Keras backend (TensorFlow, JAX, PyTorch).

:func:`image_dataset` (whole images), :func:`patch_dataset` (random crops, optionally with a
corrupted input), :func:`val_patch_dataset` (fixed crops) and :func:`anomaly_patch_dataset`
(crops with synthetic anomalies and their masks, for the segmentation head).

1. A training dataset is an :class:`EpochDataset`: batch ``b`` of epoch ``e`` is a pure
   function of ``(seed, e, b)`` (:meth:`EpochDataset.epoch_batch`), every random draw made
   with ``numpy.random.default_rng([seed, e, b])`` (the epoch's shuffle order with
   ``default_rng([seed, e])``). Nothing carries over from one batch or epoch to the next.
2. The fit tells the dataset which epoch is starting (:func:`set_dataset_epoch`, called by
   :class:`~anomaly_utils.training.callbacks.EpochSetter` at ``on_epoch_begin``), so epoch 7
   sees the same crops whether or not the run was killed and resumed at epoch 5.
3. Batches are made on the thread that asks for them (``workers=1``; Keras' TensorFlow
   backend prefetches within the epoch's own iterator), so no prefetching worker can make
   a batch of the wrong epoch.

One module because the four datasets share the epoch-keyed base class, the argument checks
and the conversion to [0, 1]; the numpy work on patches (crops, flips and turns, the input
corruptions) is in :mod:`anomaly_utils.training.patches`.

Example:
    >>> import numpy as np
    >>> x = np.zeros((3, 40, 40, 1), np.uint8)
    >>> ds = patch_dataset(x, 32, 10, batch_size=4)
    >>> len(ds), ds[0][0].shape, ds[0][0].dtype, ds[2][0].shape
    (3, (4, 32, 32, 1), dtype('float32'), (2, 32, 32, 1))
"""

from __future__ import annotations

import math
import sys
from typing import Any

import keras
import numpy as np

from anomaly_utils.data.training_anomalies import make_training_anomalies
from anomaly_utils.errors import DataError, ParameterError
from anomaly_utils.training.masks import CORRUPT_MODES, GRID_SETS, grid_cells, grid_mask_sets
from anomaly_utils.training.patches import (
    drop_grid_cells,
    flip_and_turn,
    paint_rectangles,
    random_crops,
    shade_bands,
)

# _ALIASING: a batch never holds one numpy buffer twice (``(x, x)``). TensorFlow takes numpy
# arrays without copying and may reuse an input's buffer for an op's output; under a
# tf.distribute MirroredStrategy a target aliasing its input made the losses differ from run
# to run (tests/test_distribute.py), with distinct arrays they match one device bit for bit.


def _check_images(images: Any, name: str = "images") -> np.ndarray:
    """Validate an (N, H, W, C) uint8 or float array in [0, 1]; return it as uint8/float32."""
    if not isinstance(images, np.ndarray):
        raise ParameterError(f"{name} must be a numpy array (N, H, W, C), got "
                             f"{type(images).__name__}")
    if images.ndim != 4 or images.shape[0] == 0 or images.shape[-1] not in (1, 3):
        raise DataError(f"{name} must have shape (N, H, W, C) with N >= 1 and C in (1, 3), got "
                        f"{images.shape}", fix="add a channel axis with x[..., None] for gray")
    if images.dtype == np.uint8:
        return images
    if not np.issubdtype(images.dtype, np.floating):
        raise DataError(f"{name} has dtype {images.dtype}; expected uint8 or float in [0, 1]")
    images = images.astype(np.float32, copy=False)
    if not np.isfinite(images).all() or images.min() < 0 or images.max() > 1:
        raise DataError(f"{name} (float) must be finite and within [0, 1], got range "
                        f"[{np.nanmin(images)}, {np.nanmax(images)}]",
                        fix="divide uint8 images by 255 or pass them as uint8")
    return images


def _to_unit_float(batch: np.ndarray) -> np.ndarray:
    """uint8 / 255 or float, as float32."""
    if batch.dtype == np.uint8:
        return batch.astype(np.float32) / np.float32(255.0)
    return batch.astype(np.float32, copy=False)


def check_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ParameterError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def is_ready_dataset(data: Any) -> bool:
    """Whether ``data`` is a dataset Keras' ``fit`` takes as it is (a ``PyDataset``, or a
    ``tf.data.Dataset``, recognised without importing TensorFlow)."""
    if isinstance(data, keras.utils.PyDataset):
        return True
    tf = sys.modules.get("tensorflow")
    return tf is not None and isinstance(data, tf.data.Dataset)


class EpochDataset(keras.utils.PyDataset):
    """A ``PyDataset`` whose batch ``b`` is a pure function of ``(seed, epoch, b)``.

    ``dataset[b]`` is :meth:`epoch_batch` ``(dataset.epoch, b)``; :meth:`set_epoch` (through
    :func:`set_dataset_epoch`) selects the epoch. Subclasses implement :meth:`epoch_batch`.
    """

    def __init__(self, steps: int, seed: int, settings: dict):
        super().__init__(workers=1, use_multiprocessing=False)
        self.steps = int(steps)
        self.seed = int(seed)
        self.epoch = 0
        self.settings = settings

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, index: int):
        index = int(index)
        if not 0 <= index < self.steps:
            raise IndexError(f"batch {index} of a dataset of {self.steps} batches")
        return self.epoch_batch(self.epoch, index)

    def set_epoch(self, epoch: int) -> None:
        """Make ``dataset[b]`` batch ``b`` of epoch ``epoch`` (counted from 0)."""
        self.epoch = check_int("epoch", epoch, minimum=0)

    def epoch_batch(self, epoch: int, index: int):
        """Batch ``index`` of epoch ``epoch`` (both counted from 0), whatever ran before."""
        raise NotImplementedError

    def describe(self) -> dict:
        """The dataset's settings, without its arrays (for ``config.json``)."""
        return {"dataset": type(self).__name__, "batches": self.steps, **self.settings}


def set_dataset_epoch(dataset: Any, epoch: int) -> None:
    """Select which epoch's shuffle/crops a training dataset yields from now on.

    ``fit_autoencoder`` does this itself (through ``EpochSetter``); call it when iterating a
    dataset by hand. Any dataset with a ``set_epoch(epoch)`` method is told (an
    :class:`EpochDataset`, or :func:`anomaly_utils.data.loading.file_dataset`); others
    (validation sets, a ``tf.data.Dataset``, your own pipelines) are left alone.

    Example:
        >>> x = np.arange(4, dtype=np.uint8).reshape(4, 1, 1, 1)
        >>> ds = image_dataset(x, batch_size=4, seed=0)
        >>> set_dataset_epoch(ds, 3)
        >>> bool((ds[0][0] == ds.epoch_batch(3, 0)[0]).all())
        True
    """
    setter = getattr(dataset, "set_epoch", None)
    if callable(setter):
        setter(check_int("epoch", epoch, minimum=0))


def _batch_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(epoch), int(index)])


class ImageDataset(EpochDataset):
    """Whole images, in an order that is a function of ``(seed, epoch)`` (see
    :func:`image_dataset`)."""

    def __init__(self, images: np.ndarray, batch_size: int, shuffle: bool, seed: int):
        super().__init__(math.ceil(len(images) / batch_size), seed,
                         {"shape": list(images.shape), "dtype": str(images.dtype),
                          "batch_size": batch_size, "shuffle": bool(shuffle), "seed": seed})
        self.images = images
        self.batch_size = batch_size
        self.shuffle = bool(shuffle)
        self._order: tuple[int, np.ndarray] | None = None

    def order(self, epoch: int) -> np.ndarray:
        """The image indices of epoch ``epoch``, in the order they are batched."""
        if not self.shuffle:
            return np.arange(len(self.images))
        cached = self._order
        if cached is None or cached[0] != epoch:
            cached = (epoch, np.random.default_rng([self.seed, int(epoch)])
                      .permutation(len(self.images)))
            self._order = cached
        return cached[1]

    def epoch_batch(self, epoch: int, index: int):
        chosen = self.order(epoch)[index * self.batch_size:(index + 1) * self.batch_size]
        if not self.shuffle:
            chosen = slice(chosen[0], chosen[-1] + 1)
        x = _to_unit_float(self.images[chosen])
        return x, x.copy()  # never one buffer twice: see _ALIASING


def image_dataset(images: np.ndarray | keras.utils.PyDataset, batch_size: int = 32,
                  shuffle: bool = True, seed: int = 0) -> keras.utils.PyDataset:
    """Whole-image batches ``(x, x)``, float32 (B, H, W, C) in [0, 1].

    Args:
        images: uint8 (N, H, W, C) (divided by 255) or float (N, H, W, C) in [0, 1]; a ready
            dataset (a ``keras.utils.PyDataset`` or a ``tf.data.Dataset``) is returned
            unchanged.
        batch_size: images per batch; the last batch of an epoch may be smaller.
        shuffle: shuffle every epoch, in an order that is a function of ``(seed, epoch)``.
        seed: shuffle seed.

    Returns:
        An :class:`ImageDataset` of ceil(N / batch_size) batches per epoch.

    Example:
        >>> x = np.zeros((5, 8, 8, 1), np.uint8)
        >>> [b[0].shape[0] for b in image_dataset(x, batch_size=2)]
        [2, 2, 1]
    """
    if is_ready_dataset(images):
        return images
    images = _check_images(images)
    batch_size = check_int("batch_size", batch_size)
    return ImageDataset(images, batch_size, shuffle, check_int("seed", seed, minimum=0))


def _check_patch(images: np.ndarray, patch_size: int) -> int:
    patch_size = check_int("patch_size", patch_size)
    height, width = images.shape[1:3]
    if patch_size > min(height, width):
        raise ParameterError(f"patch_size={patch_size} is larger than the images "
                             f"({height}x{width})", fix="use a smaller patch_size")
    return patch_size


class PatchDataset(EpochDataset):
    """Random crops with optional flips, turns and input corruption (see
    :func:`patch_dataset`)."""

    def __init__(self, images: np.ndarray, patch_size: int, patches_per_epoch: int,
                 batch_size: int, seed: int, augment: bool, corrupt: float,
                 corrupt_mode: str):
        super().__init__(math.ceil(patches_per_epoch / batch_size), seed,
                         {"shape": list(images.shape), "dtype": str(images.dtype),
                          "patch_size": patch_size, "patches_per_epoch": patches_per_epoch,
                          "batch_size": batch_size, "seed": seed, "augment": bool(augment),
                          "corrupt": float(corrupt), "corrupt_mode": corrupt_mode})
        self.images = images
        self.patch_size = patch_size
        self.patches_per_epoch = patches_per_epoch
        self.batch_size = batch_size
        self.augment = bool(augment)
        self.corrupt = float(corrupt)
        self.corrupt_mode = corrupt_mode
        self.cells = grid_cells(patch_size)

    def epoch_batch(self, epoch: int, index: int):
        count = min(self.batch_size, self.patches_per_epoch - index * self.batch_size)
        rng = _batch_rng(self.seed, epoch, index)
        patches = _to_unit_float(random_crops(self.images, self.patch_size, count, rng))
        if self.augment:
            patches = flip_and_turn(patches, rng)
        if self.corrupt <= 0:
            return patches, patches.copy()  # see _ALIASING
        chosen = np.flatnonzero(rng.random(count) < self.corrupt)
        corrupted = patches.copy()
        if self.corrupt_mode == "grid":
            drop_grid_cells(corrupted, chosen, self.cells, rng)
            return corrupted, patches
        paint_rectangles(corrupted, chosen, rng)
        if self.corrupt_mode == "rectangle+shading":
            # Its own generator, so the rectangles are those of "rectangle" training.
            shading_rng = np.random.default_rng([self.seed, int(epoch), int(index), 1])
            shaded = chosen[shading_rng.random(len(chosen)) < 0.5]
            corrupted[shaded] = shade_bands(patches[shaded], shading_rng)
        return corrupted, patches


def patch_dataset(images: np.ndarray, patch_size: int, patches_per_epoch: int,
                  batch_size: int = 32, seed: int = 0, augment: bool = True,
                  corrupt: float = 0.0, corrupt_mode: str = "rectangle") -> PatchDataset:
    """Random square crops ``(x, x)``, float32 (B, p, p, C) in [0, 1], new ones every epoch.

    Batch ``b`` of epoch ``e`` is drawn with ``numpy.random.default_rng([seed, e, b])``:
    for every patch a uniformly random image and offset and, with ``augment``, a random
    horizontal flip, vertical flip and rotation by k * 90 degrees, then the corruption.
    An epoch's patches do not depend on what ran before it (the dataset's ``epoch`` selects
    ``e``; see :func:`set_dataset_epoch`).

    Args:
        images: uint8 or float (N, H, W, C) in [0, 1] with H, W >= patch_size.
        patch_size: crop side in pixels.
        patches_per_epoch: patches per epoch (ceil(patches_per_epoch / batch_size) batches,
            the last one smaller when it does not divide).
        batch_size: patches per batch.
        seed: sampling seed.
        augment: apply flips and 90-degree rotations (images must be square-patch invariant
            textures for this to make sense, as MVTec textures are).
        corrupt: fraction of patches whose *input* gets a random rectangle (1/16 to 1/4 of
            the side) of flat colour plus noise, while the target stays clean: inpainting
            training, which keeps an expressive autoencoder from learning to copy defects.
        corrupt_mode: "rectangle" (the above); "grid": the patch is cut into square cells
            of one of :func:`grid_cells` sides (drawn per patch) and each cell is zeroed with
            probability 1 / ``GRID_SETS``, the masks that
            :func:`anomaly_utils.scoring.reconstruction.inpaint_reconstruct` uses at test time; or
            "rectangle+shading": each corrupted patch gets, with equal chance, a rectangle or
            a shading band (a straight band, 10-40 % of the side wide, at a random angle,
            with soft edges, brighter or darker by 5-30 % of the value range), so that the
            model also learns to undo large, smooth changes of brightness.

    Returns:
        A :class:`PatchDataset` (a ``keras.utils.PyDataset``) of numpy float32 batches.

    Example:
        >>> x = np.zeros((3, 40, 40, 1), np.uint8)
        >>> ds = patch_dataset(x, 32, 10, batch_size=4, corrupt=0.5, corrupt_mode="grid")
        >>> [b[0].shape for b in ds]
        [(4, 32, 32, 1), (4, 32, 32, 1), (2, 32, 32, 1)]
    """
    images = _check_images(images)
    patch_size = _check_patch(images, patch_size)
    patches_per_epoch = check_int("patches_per_epoch", patches_per_epoch)
    batch_size = check_int("batch_size", batch_size)
    seed = check_int("seed", seed, minimum=0)
    if corrupt_mode not in CORRUPT_MODES:
        raise ParameterError(f"corrupt_mode must be one of {CORRUPT_MODES}, got {corrupt_mode!r}")
    if isinstance(corrupt, bool) or not isinstance(corrupt, (int, float, np.integer, np.floating)) \
            or not 0 <= corrupt <= 1:
        raise ParameterError(f"corrupt must be a number in [0, 1], got {corrupt!r}")
    return PatchDataset(images, patch_size, patches_per_epoch, batch_size, seed, augment,
                        corrupt, corrupt_mode)


class FixedBatches(keras.utils.PyDataset):
    """Fixed ``(input * keep, target)`` batches of crops held in memory (see
    :func:`val_patch_dataset`); the same on every iteration."""

    def __init__(self, crops: np.ndarray, keep: np.ndarray, batch_size: int, settings: dict):
        super().__init__(workers=1, use_multiprocessing=False)
        self.crops = crops
        self.keep = keep
        self.batch_size = batch_size
        self.settings = settings

    def __len__(self) -> int:
        return math.ceil(len(self.crops) / self.batch_size)

    def __getitem__(self, index: int):
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} of a dataset of {len(self)} batches")
        part = slice(index * self.batch_size, (index + 1) * self.batch_size)
        x = _to_unit_float(self.crops[part])
        return x * self.keep[part], x

    def describe(self) -> dict:
        return {"dataset": type(self).__name__, "batches": len(self), **self.settings}


def val_patch_dataset(images: np.ndarray, patch_size: int, patches_per_image: int = 4,
                      batch_size: int = 32, seed: int = 0,
                      corrupt_mode: str | None = None) -> FixedBatches:
    """Fixed crops for validation ``(x, x)``, float32 (B, p, p, C) in [0, 1].

    Every image gives ``patches_per_image`` crops at offsets drawn once from ``seed``; the
    same crops come back in the same order on every iteration, so the validation loss of two
    epochs is comparable. The crops are cut once and held in memory. With
    ``corrupt_mode="grid"`` every input crop has one fixed grid mask of zeroed cells (the
    target stays clean), so an inpainting model's validation loss measures inpainting, not
    copying.

    Example:
        >>> x = np.zeros((3, 40, 40, 1), np.uint8)
        >>> sum(int(b[0].shape[0]) for b in val_patch_dataset(x, 32, 2))
        6
    """
    images = _check_images(images)
    patch_size = _check_patch(images, patch_size)
    patches_per_image = check_int("patches_per_image", patches_per_image)
    batch_size = check_int("batch_size", batch_size)
    n, height, width, _ = images.shape
    rng = np.random.default_rng(seed)
    tops = rng.integers(0, height - patch_size + 1, (n, patches_per_image))
    lefts = rng.integers(0, width - patch_size + 1, (n, patches_per_image))
    crops = np.stack([images[i, t:t + patch_size, s:s + patch_size]
                      for i in range(n) for t, s in zip(tops[i], lefts[i], strict=True)])
    if corrupt_mode not in (None, "grid"):
        raise ParameterError(f"corrupt_mode must be None or 'grid', got {corrupt_mode!r}",
                             fix="validate rectangle-corrupted training on clean crops (None)")
    if corrupt_mode == "grid":
        cells = grid_cells(patch_size)
        keep = np.stack([1.0 - grid_mask_sets(patch_size, patch_size, cells[k % len(cells)],
                                               seed=seed + k)[k % GRID_SETS]
                         for k in range(len(crops))])[..., None]
    else:
        keep = np.ones((len(crops), 1, 1, 1), np.float32)
    return FixedBatches(crops, keep.astype(np.float32), batch_size,
                        {"shape": list(images.shape), "dtype": str(images.dtype),
                         "patch_size": patch_size, "patches_per_image": patches_per_image,
                         "batch_size": batch_size, "seed": seed, "corrupt_mode": corrupt_mode})


class AnomalyPatchDataset(EpochDataset):
    """Crops with synthetic anomalies and their masks (see :func:`anomaly_patch_dataset`)."""

    def __init__(self, images: np.ndarray, patch_size: int, patches_per_epoch: int,
                 batch_size: int, seed: int, augment: bool, joint: bool, options: dict):
        super().__init__(math.ceil(patches_per_epoch / batch_size), seed,
                         {"shape": list(images.shape), "dtype": str(images.dtype),
                          "patch_size": patch_size, "patches_per_epoch": patches_per_epoch,
                          "batch_size": batch_size, "seed": seed, "augment": bool(augment),
                          "joint": bool(joint)})
        self.images = images
        self.patch_size = patch_size
        self.batch_size = batch_size
        self.augment = bool(augment)
        self.joint = bool(joint)
        self.options = options

    def crops(self, rng: np.random.Generator, count: int) -> np.ndarray:
        out = _to_unit_float(random_crops(self.images, self.patch_size, count, rng))
        if self.augment:
            for k in range(count):
                flips, turns = rng.random(2) < 0.5, int(rng.integers(0, 4))
                patch = out[k][:, ::-1] if flips[0] else out[k]
                patch = patch[::-1] if flips[1] else patch
                out[k] = np.rot90(patch, turns)
        return out

    def epoch_batch(self, epoch: int, index: int):
        rng = _batch_rng(self.seed, epoch, index)
        clean = self.crops(rng, self.batch_size)
        # sources=None: the fills come from the batch's other crops.
        corrupted, masks = make_training_anomalies(clean, None, rng, **self.options)
        corrupted = corrupted.astype(np.float32, copy=False)
        if np.shares_memory(corrupted, clean):  # see _ALIASING
            corrupted = corrupted.copy()
        masks = masks.astype(np.float32, copy=False)
        if self.joint:
            return corrupted, {"mask": masks, "reconstruction": clean}
        return corrupted, masks


def anomaly_patch_dataset(images: np.ndarray, patch_size: int, patches_per_epoch: int,
                          batch_size: int = 32, seed: int = 0, *, augment: bool = False,
                          joint: bool = False,
                          anomaly_options: dict | None = None) -> AnomalyPatchDataset:
    """Random crops with synthetic anomalies and their masks, for training the segmentation
    head: ``(corrupted, mask)`` or, with ``joint``, ``(corrupted, {"mask": mask,
    "reconstruction": clean})``.

    Batch ``b`` of epoch ``e`` is drawn with ``numpy.random.default_rng([seed, e, b])``:
    random images and offsets (and, with ``augment``, flips and 90-degree turns), then
    :func:`anomaly_utils.data.training_anomalies.make_training_anomalies` with the batch's
    other crops as the source of image fills, so that an epoch's batches do not depend on
    what ran before it (see :func:`set_dataset_epoch`).

    Args:
        images: uint8 or float (N, H, W, C) in [0, 1], defect-free, H and W >= patch_size.
        patch_size: crop side, pixels.
        patches_per_epoch: crops per epoch (rounded up to whole batches).
        batch_size: crops per batch.
        seed: sampling seed.
        augment: random flips and 90-degree turns of the crops.
        joint: also yield the clean crop, as the reconstruction target.
        anomaly_options: keyword arguments of ``make_training_anomalies`` (clean_fraction,
            fills, opacity, ...).

    Returns:
        An :class:`AnomalyPatchDataset` of ceil(patches_per_epoch / batch_size) full batches:
        corrupted float32 (B, p, p, C) in [0, 1], masks float32 (B, p, p, 1) in {0, 1}.

    Example:
        >>> x = np.zeros((3, 40, 40, 1), np.uint8)
        >>> ds = anomaly_patch_dataset(x, 32, 10, batch_size=4, joint=True)
        >>> corrupted, targets = ds[2]
        >>> len(ds), corrupted.shape, targets["mask"].shape
        (3, (4, 32, 32, 1), (4, 32, 32, 1))
    """
    images = _check_images(images)
    patch_size = _check_patch(images, patch_size)
    patches_per_epoch = check_int("patches_per_epoch", patches_per_epoch)
    batch_size = check_int("batch_size", batch_size)
    seed = check_int("seed", seed, minimum=0)
    return AnomalyPatchDataset(images, patch_size, patches_per_epoch, batch_size, seed,
                               augment, joint, dict(anomaly_options or {}))
