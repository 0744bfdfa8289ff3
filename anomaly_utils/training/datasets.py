"""Input pipelines: image arrays as ``tf.data`` pipelines of ``(x, x)`` float32 batches in [0, 1].

:func:`image_dataset` (whole images), :func:`patch_dataset` (random crops, optionally with a
corrupted input) and :func:`val_patch_dataset` (fixed crops). Shuffling and random crops are
stateless functions of ``(seed, epoch)``: the training datasets carry a small epoch variable
(attribute ``lab_epoch_variable``) that the fit sets at the start of every epoch
(:func:`set_dataset_epoch`), so epoch 7 sees the same crops whether or not the run was
killed and resumed at epoch 5.

Example:
    >>> import numpy as np
    >>> x = np.zeros((3, 40, 40, 1), np.uint8)
    >>> next(iter(patch_dataset(x, 32, 10, batch_size=4)))[0].shape
    TensorShape([4, 32, 32, 1])
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import tensorflow as tf

from anomaly_utils.data.training_anomalies import make_training_anomalies
from anomaly_utils.errors import DataError, ParameterError
from anomaly_utils.training.masks import CORRUPT_MODES, GRID_SETS, grid_cells, grid_mask_sets

AUTOTUNE = tf.data.AUTOTUNE
EPOCH_ATTRIBUTE = "lab_epoch_variable"


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


def _to_unit_float(batch: tf.Tensor) -> tf.Tensor:
    if batch.dtype == tf.uint8:
        return tf.cast(batch, tf.float32) / 255.0
    return tf.cast(batch, tf.float32)


def _epoch_variable() -> tf.Variable:
    # On the CPU because tf.data runs there, also on a GPU machine.
    with tf.device("/CPU:0"):
        return tf.Variable(0, dtype=tf.int64, trainable=False, name="dataset_epoch")


def _epoch_keyed(epoch_elements, *, finish, steps: int) -> tf.data.Dataset:
    """A dataset whose elements are ``epoch_elements(epoch)`` for the epoch variable's value.

    The variable is read when an iterator produces its first element (tf.data starts lazily),
    which Keras does after ``on_epoch_begin``; no other state carries between epochs.
    """
    epoch = _epoch_variable()
    ds = tf.data.Dataset.from_tensors(np.int64(0)).map(lambda _: epoch.read_value())
    ds = ds.flat_map(epoch_elements)
    ds = finish(ds).apply(tf.data.experimental.assert_cardinality(steps)).prefetch(AUTOTUNE)
    setattr(ds, EPOCH_ATTRIBUTE, epoch)
    return ds


def set_dataset_epoch(dataset: tf.data.Dataset, epoch: int) -> None:
    """Select which epoch's shuffle/crops a training dataset yields on its next iteration.

    ``fit_autoencoder`` does this itself; call it when iterating a dataset by hand. Datasets
    without an epoch variable (validation sets, your own pipelines) are left alone.
    """
    variable = getattr(dataset, EPOCH_ATTRIBUTE, None)
    if variable is not None:
        variable.assign(int(epoch))


def _stateless_seed(seed: int, epoch: tf.Tensor) -> tf.Tensor:
    return tf.stack([tf.constant(int(seed), tf.int64), tf.cast(epoch, tf.int64)])


def image_dataset(images: np.ndarray | tf.data.Dataset, batch_size: int = 32,
                  shuffle: bool = True, seed: int = 0) -> tf.data.Dataset:
    """Whole-image batches ``(x, x)``, float32 (B, H, W, C) in [0, 1].

    Args:
        images: uint8 (N, H, W, C) (divided by 255) or float (N, H, W, C) in [0, 1]; a ready
            ``tf.data.Dataset`` is returned unchanged.
        batch_size: images per batch; the last batch of an epoch may be smaller.
        shuffle: shuffle every epoch, in an order that is a function of ``(seed, epoch)``.
        seed: shuffle seed.

    Returns:
        A prefetched dataset of ceil(N / batch_size) batches per epoch.

    Example:
        >>> x = np.zeros((5, 8, 8, 1), np.uint8)
        >>> [b[0].shape[0] for b in image_dataset(x, batch_size=2)]
        [2, 2, 1]
    """
    if isinstance(images, tf.data.Dataset):
        return images
    images = _check_images(images)
    batch_size = check_int("batch_size", batch_size)
    n = len(images)
    steps = math.ceil(n / batch_size)
    stored = tf.constant(images)

    def gather(indices):
        x = _to_unit_float(tf.gather(stored, indices))
        return x, x

    if not shuffle:
        ds = tf.data.Dataset.range(n).batch(batch_size).map(gather, num_parallel_calls=AUTOTUNE)
        return ds.prefetch(AUTOTUNE)

    def epoch_order(epoch):
        order = tf.argsort(tf.random.stateless_uniform([n], _stateless_seed(seed, epoch)))
        return tf.data.Dataset.from_tensor_slices(tf.cast(order, tf.int64)).batch(batch_size)

    return _epoch_keyed(
        epoch_order, steps=steps,
        finish=lambda ds: ds.map(gather, num_parallel_calls=AUTOTUNE, deterministic=True))


def check_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ParameterError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _check_patch(images: np.ndarray, patch_size: int) -> int:
    patch_size = check_int("patch_size", patch_size)
    height, width = images.shape[1:3]
    if patch_size > min(height, width):
        raise ParameterError(f"patch_size={patch_size} is larger than the images "
                             f"({height}x{width})", fix="use a smaller patch_size")
    return patch_size


def patch_dataset(images: np.ndarray, patch_size: int, patches_per_epoch: int,
                  batch_size: int = 32, seed: int = 0, augment: bool = True,
                  corrupt: float = 0.0, corrupt_mode: str = "rectangle") -> tf.data.Dataset:
    """Random square crops ``(x, x)``, float32 (B, p, p, C) in [0, 1], new ones every epoch.

    Patch ``i`` of epoch ``e`` takes a uniformly random image and offset and, with
    ``augment``, a random horizontal flip, vertical flip and rotation by k * 90 degrees; all
    drawn with stateless ops keyed on ``(seed, e)``, so an epoch's patches do not depend on
    what ran before it (the dataset's epoch variable selects ``e``; see
    :func:`set_dataset_epoch`).

    Args:
        images: uint8 or float (N, H, W, C) in [0, 1] with H, W >= patch_size.
        patch_size: crop side in pixels.
        patches_per_epoch: patches per epoch (ceil(patches_per_epoch / batch_size) batches).
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

    Example:
        >>> x = np.zeros((3, 40, 40, 1), np.uint8)
        >>> next(iter(patch_dataset(x, 32, 10, batch_size=4)))[0].shape
        TensorShape([4, 32, 32, 1])
    """
    images = _check_images(images)
    patch_size = _check_patch(images, patch_size)
    patches_per_epoch = check_int("patches_per_epoch", patches_per_epoch)
    batch_size = check_int("batch_size", batch_size)
    if corrupt_mode not in CORRUPT_MODES:
        raise ParameterError(f"corrupt_mode must be one of {CORRUPT_MODES}, got {corrupt_mode!r}")
    n, height, width, channels = images.shape
    stored = tf.constant(images)
    cells = tf.constant(grid_cells(patch_size))
    n_cells = len(grid_cells(patch_size))

    def epoch_draws(epoch):
        u = tf.random.stateless_uniform([patches_per_epoch, 13], _stateless_seed(seed, epoch))
        index = tf.cast(u[:, 0] * n, tf.int32)
        top = tf.cast(u[:, 1] * (height - patch_size + 1), tf.int32)
        left = tf.cast(u[:, 2] * (width - patch_size + 1), tf.int32)
        flips = u[:, 3:5] < 0.5
        turns = tf.cast(u[:, 5] * 4, tf.int32)
        return tf.data.Dataset.from_tensor_slices((index, top, left, flips, turns, u[:, 6:]))

    def corrupted(patch, draws):
        """Paint a random rectangle of flat colour plus noise into ``patch`` (input only)."""
        low, high = max(1, patch_size // 16), max(2, patch_size // 4)
        h = low + tf.cast(draws[1] * (high - low), tf.int32)
        w = low + tf.cast(draws[2] * (high - low), tf.int32)
        y0 = tf.cast(draws[3] * tf.cast(patch_size - h, tf.float32), tf.int32)
        x0 = tf.cast(draws[4] * tf.cast(patch_size - w, tf.float32), tf.int32)
        rows = tf.range(patch_size)[:, None]
        cols = tf.range(patch_size)[None, :]
        inside = (rows >= y0) & (rows < y0 + h) & (cols >= x0) & (cols < x0 + w)
        noise = tf.random.stateless_normal(
            [patch_size, patch_size, channels],
            tf.cast(tf.stack([draws[6] * 2**31, draws[5] * 2**31]), tf.int64))
        fill = tf.clip_by_value(draws[5] + 0.1 * draws[6] * noise, 0.0, 1.0)
        painted = tf.where(inside[..., None], fill, patch)
        return tf.where(draws[0] < corrupt, painted, patch)

    def shaded(patch, draws):
        """A rectangle or a soft-edged shading band, with equal chance (input only)."""
        # Its own key, so the rectangle draws (and "rectangle" training) stay as they were.
        v = tf.random.stateless_uniform(
            [7], tf.cast(tf.stack([draws[5] * 2**31, draws[6] * 2**31 + 1]), tf.int64))
        angle = v[0] * 2 * math.pi
        coords = (tf.cast(tf.range(patch_size), tf.float32) + 0.5) / patch_size - 0.5
        along = tf.cos(angle) * coords[None, :] + tf.sin(angle) * coords[:, None]
        width = 0.1 + 0.3 * v[1]
        start = -0.75 + (1.5 - width) * v[2]  # bands may run off the patch's edge
        softness = 0.01 + 0.04 * v[3]
        band = tf.sigmoid((along - start) / softness) * tf.sigmoid((start + width - along)
                                                                   / softness)
        delta = (0.05 + 0.25 * v[4]) * tf.sign(v[5] - 0.5)
        banded = tf.where(draws[0] < corrupt,
                          tf.clip_by_value(patch + delta * band[..., None], 0.0, 1.0), patch)
        return tf.where(v[6] < 0.5, banded, corrupted(patch, draws))

    def grid_masked(patch, draws):
        """Zero each cell of a random-sized grid with probability 1 / GRID_SETS (input only)."""
        cell = cells[tf.minimum(tf.cast(draws[1] * n_cells, tf.int32), n_cells - 1)]
        side = -(-patch_size // cell)
        keys = tf.cast(tf.stack([draws[6] * 2**31, draws[5] * 2**31]), tf.int64)
        dropped = tf.random.stateless_uniform([side, side], keys) < 1.0 / GRID_SETS
        rows = tf.range(patch_size) // cell
        grid = tf.gather(tf.gather(dropped, rows, axis=0), rows, axis=1)
        masked = tf.where(grid[..., None], tf.zeros_like(patch), patch)
        return tf.where(draws[0] < corrupt, masked, patch)

    def crop(index, top, left, flips, turns, draws):
        patch = tf.slice(stored[index], [top, left, 0], [patch_size, patch_size, channels])
        patch = _to_unit_float(patch)
        if augment:
            patch = tf.where(flips[0], tf.reverse(patch, [1]), patch)
            patch = tf.where(flips[1], tf.reverse(patch, [0]), patch)
            patch = tf.image.rot90(patch, turns)
        patch = tf.ensure_shape(patch, [patch_size, patch_size, channels])
        if corrupt > 0:
            corrupt_fn = {"rectangle": corrupted, "grid": grid_masked,
                          "rectangle+shading": shaded}[corrupt_mode]
            return corrupt_fn(patch, draws), patch
        return patch, patch

    return _epoch_keyed(
        epoch_draws, steps=math.ceil(patches_per_epoch / batch_size),
        finish=lambda ds: ds.map(crop, num_parallel_calls=AUTOTUNE,
                                 deterministic=True).batch(batch_size))


def val_patch_dataset(images: np.ndarray, patch_size: int, patches_per_image: int = 4,
                      batch_size: int = 32, seed: int = 0,
                      corrupt_mode: str | None = None) -> tf.data.Dataset:
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

    def unit(batch, kept):
        x = _to_unit_float(batch)
        return x * kept, x

    ds = tf.data.Dataset.from_tensor_slices((crops, keep)).batch(batch_size)
    return ds.map(unit, num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)


def anomaly_patch_dataset(images: np.ndarray, patch_size: int, patches_per_epoch: int,
                          batch_size: int = 32, seed: int = 0, *, augment: bool = False,
                          joint: bool = False,
                          anomaly_options: dict | None = None) -> tf.data.Dataset:
    """Random crops with synthetic anomalies and their masks, for training the segmentation
    head: ``(corrupted, mask)`` or, with ``joint``, ``(corrupted, {"mask": mask,
    "reconstruction": clean})``.

    Batch ``b`` of epoch ``e`` is drawn with ``numpy.random.default_rng([seed, e, b])``:
    random images and offsets (and, with ``augment``, flips and 90-degree turns), then
    :func:`anomaly_utils.data.training_anomalies.make_training_anomalies` with the other
    batch's other crops as the source of image fills, so that an epoch's batches do not depend on what ran
    before it (see :func:`set_dataset_epoch`).

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
        A prefetched dataset of ceil(patches_per_epoch / batch_size) batches: corrupted
        float32 (B, p, p, C) in [0, 1], masks float32 (B, p, p, 1) in {0, 1}.
    """
    images = _check_images(images)
    patch_size = _check_patch(images, patch_size)
    patches_per_epoch = check_int("patches_per_epoch", patches_per_epoch)
    batch_size = check_int("batch_size", batch_size)
    options = dict(anomaly_options or {})
    n, height, width, channels = images.shape
    steps = math.ceil(patches_per_epoch / batch_size)
    scale = 255.0 if images.dtype == np.uint8 else 1.0

    def crops(rng: np.random.Generator, count: int) -> np.ndarray:
        index = rng.integers(0, n, count)
        top = rng.integers(0, height - patch_size + 1, count)
        left = rng.integers(0, width - patch_size + 1, count)
        out = np.stack([images[i, t:t + patch_size, s:s + patch_size]
                        for i, t, s in zip(index, top, left, strict=True)])
        out = out.astype(np.float32) / np.float32(scale)
        if augment:
            for k in range(count):
                flips, turns = rng.random(2) < 0.5, int(rng.integers(0, 4))
                patch = out[k][:, ::-1] if flips[0] else out[k]
                patch = patch[::-1] if flips[1] else patch
                out[k] = np.rot90(patch, turns)
        return out

    def batch(epoch, step):
        rng = np.random.default_rng([seed, int(epoch), int(step)])
        clean = crops(rng, batch_size)
        # sources=None: the fills come from the batch's other crops.
        corrupted, masks = make_training_anomalies(clean, None, rng, **options)
        return corrupted.astype(np.float32), masks.astype(np.float32), clean

    def draw(epoch, step):
        corrupted, masks, clean = tf.numpy_function(
            batch, [epoch, step], [tf.float32, tf.float32, tf.float32], stateful=False)
        corrupted = tf.ensure_shape(corrupted, [batch_size, patch_size, patch_size, channels])
        masks = tf.ensure_shape(masks, [batch_size, patch_size, patch_size, 1])
        if joint:
            clean = tf.ensure_shape(clean, [batch_size, patch_size, patch_size, channels])
            return corrupted, {"mask": masks, "reconstruction": clean}
        return corrupted, masks

    def epoch_batches(epoch):
        steps_ds = tf.data.Dataset.range(steps)
        return steps_ds.map(lambda step: draw(epoch, step), num_parallel_calls=AUTOTUNE,
                            deterministic=True)

    return _epoch_keyed(epoch_batches, steps=steps, finish=lambda ds: ds)
