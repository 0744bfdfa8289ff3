"""Input pipelines and a resumable, reproducible training loop for the lab's autoencoders.

1. :func:`image_dataset`, :func:`patch_dataset` and :func:`val_patch_dataset` turn image
   arrays into ``tf.data`` pipelines of ``(x, x)`` float32 batches in [0, 1]. Shuffling and
   random crops are stateless functions of ``(seed, epoch)``: the training datasets carry a
   small epoch variable (attribute ``lab_epoch_variable``) that :func:`fit_autoencoder` sets
   at the start of every epoch, so epoch 7 sees the same crops whether or not the run was
   killed and resumed at epoch 5.
2. :func:`fit_autoencoder` compiles with Adam and fits with: the best checkpoint on
   ``val_loss`` written atomically to ``model_dir/model.keras``; an atomic variant of
   ``keras.callbacks.BackupAndRestore`` in ``model_dir/backup`` (a killed run resumes from its
   last backed-up epoch: every epoch unless writing the backup would cost more than 10 % of
   the training time, see :class:`AtomicBackupAndRestore`); a NaN guard raising
   :class:`LabError`; optional early stopping; ``history.csv`` (one row per epoch, exactly
   once across resumes), ``history.json`` and ``config.json``. It returns the best
   checkpoint loaded back in safe mode.
3. :func:`load_model` loads a ``.keras`` file in safe mode, naming the file on failure.

Two runs with the same seed and parameters give bit-identical losses on the same machine
(``set_global_seed`` turns on TensorFlow's deterministic ops; the model builders seed
their initializers).

Example:
    >>> import numpy as np, tempfile
    >>> from anomaly_utils.models import build_ae1
    >>> x = np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
    >>> result = fit_autoencoder(build_ae1(16, latent_dim=8), x, x, tempfile.mkdtemp(),
    ...                          epochs=2, learning_rate=1e-3, seed=0, verbose=0)
    >>> len(result["history"]["val_loss"])
    2
"""

from __future__ import annotations

import csv
import io
import math
import os
import shutil
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from .artifacts import atomic_path, read_json, write_json, write_text
from .errors import ArtifactError, DataError, LabError, ParameterError
from .models import VariationalAutoencoder, builder_config, default_loss
from .params import CORRUPT_MODES
from .scoring import GRID_SETS, grid_cells, grid_mask_sets
from .seeding import set_global_seed

AUTOTUNE = tf.data.AUTOTUNE
MODEL_FILE = "model.keras"
HISTORY_CSV = "history.csv"
HISTORY_JSON = "history.json"
CONFIG_FILE = "config.json"
BACKUP_DIR = "backup"
EPOCH_ATTRIBUTE = "lab_epoch_variable"


# --------------------------------------------------------------------------- datasets


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
    batch_size = _check_int("batch_size", batch_size)
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


def _check_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ParameterError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _check_patch(images: np.ndarray, patch_size: int) -> int:
    patch_size = _check_int("patch_size", patch_size)
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
            :func:`anomaly_utils.scoring.inpaint_reconstruct` uses at test time; or
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
    patches_per_epoch = _check_int("patches_per_epoch", patches_per_epoch)
    batch_size = _check_int("batch_size", batch_size)
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
    patches_per_image = _check_int("patches_per_image", patches_per_image)
    batch_size = _check_int("batch_size", batch_size)
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


# --------------------------------------------------------------------------- callbacks


class _EpochSetter(keras.callbacks.Callback):
    """Tells epoch-keyed datasets which epoch is starting."""

    def __init__(self, dataset: tf.data.Dataset):
        super().__init__()
        self.dataset = dataset

    def on_epoch_begin(self, epoch, logs=None):
        set_dataset_epoch(self.dataset, epoch)


class _NanGuard(keras.callbacks.Callback):
    """Raises LabError as soon as the training or validation loss stops being finite."""

    def __init__(self, learning_rate: float):
        super().__init__()
        self.learning_rate = learning_rate
        self.epoch = 0
        self.tripped = False

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def _fail(self, what: str) -> None:
        self.tripped = True
        raise LabError(
            f"{what}; training diverged (the backup was removed, the best checkpoint so far "
            "is kept)",
            fix=f"lower learning_rate (now {self.learning_rate:g}, try 10x lower) and check "
                "the input images for NaN/inf values")

    @staticmethod
    def _word(value: float) -> str:
        return "NaN" if math.isnan(value) else "infinite"

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self._fail(f"loss became {self._word(float(loss))} at epoch {self.epoch} batch "
                       f"{batch} (both counted from 0)")

    def on_epoch_end(self, epoch, logs=None):
        for name, value in (logs or {}).items():
            if not math.isfinite(float(value)):
                self._fail(f"{name} became {self._word(float(value))} at the end of epoch "
                           f"{epoch} (counted from 0)")


class _EpochRecorder(keras.callbacks.Callback):
    """Best checkpoint, ``history.csv`` and early stopping, all consistent across resumes.

    On the first epoch of a (possibly resumed) fit it drops CSV rows of epochs at or after
    the starting one (written by a run killed before its backup) and recovers the best value
    and the early-stopping count from the rows that remain.
    """

    def __init__(self, model_dir: Path, monitor: str, patience: int | None, verbose: int):
        super().__init__()
        self.model_path = model_dir / MODEL_FILE
        self.csv_path = model_dir / HISTORY_CSV
        self.monitor = monitor
        self.patience = patience
        self.verbose = verbose
        self.rows: list[dict[str, float]] | None = None
        self.initial_epoch = 0
        self.best = math.inf
        self.best_epoch = -1

    def on_epoch_begin(self, epoch, logs=None):
        if self.rows is not None:
            return
        self.initial_epoch = epoch
        self.rows = [row for row in read_history_csv(self.csv_path) if row["epoch"] < epoch]
        if epoch and self.verbose:
            print(f"Resuming training at epoch {epoch} (counted from 0); epochs 0-{epoch - 1} "
                  f"were restored from {self.model_path.parent / BACKUP_DIR}", flush=True)
        for row in self.rows:
            if row.get(self.monitor, math.inf) < self.best:
                self.best, self.best_epoch = row[self.monitor], int(row["epoch"])
        if epoch and not self.model_path.is_file():
            self.best, self.best_epoch = math.inf, -1
        self._write_csv()

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        value = float(logs.get(self.monitor, math.nan))
        if value < self.best:
            self.best, self.best_epoch = value, epoch
            save_inference_model(self.model, self.model_path)
        self.rows.append({"epoch": epoch, **{k: float(v) for k, v in logs.items()}})
        self._write_csv()
        if self.patience is not None and epoch - self.best_epoch >= self.patience:
            self.model.stop_training = True
            if self.verbose:
                print(f"Early stopping after epoch {epoch}: {self.monitor} has not improved "
                      f"for {self.patience} epochs (best {self.best:.6g} at epoch "
                      f"{self.best_epoch})", flush=True)

    def _write_csv(self) -> None:
        keys = ["epoch"] + sorted({k for row in self.rows for k in row} - {"epoch"})
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=keys, lineterminator="\n")
        writer.writeheader()
        for row in self.rows:
            writer.writerow({k: (int(v) if k == "epoch" else repr(float(v)))
                             for k, v in row.items()})
        write_text(self.csv_path, buffer.getvalue())


def save_inference_model(model: keras.Model, path: str | os.PathLike) -> None:
    """Save ``model`` as ``.keras`` atomically, without the optimizer's state.

    The best checkpoint is for scoring, not for resuming (the backup holds the optimizer
    state), so leaving Adam's moments out makes it a third of the size (AE-1: ~280 MB
    instead of ~850 MB).
    """
    optimizer = getattr(model, "optimizer", None)
    model.optimizer = None
    try:
        with atomic_path(path) as tmp:
            model.save(tmp)
    finally:
        model.optimizer = optimizer


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """``BackupAndRestore`` whose backup survives a SIGKILL at any instant.

    Keras writes ``latest.weights.h5`` in place and then its metadata, so a kill between the
    two pairs new weights with an old epoch number (the epoch would be trained twice). Here
    each epoch's weights (model and optimizer state) go atomically to their own file and the
    metadata naming that file is written atomically after it: the metadata is the commit.

    Writing the backup is bounded to a share of the training time: an epoch is backed up
    only when the time since the last backup is at least ``(1 - max_overhead) /
    max_overhead`` times what the last backup took to write. Small models (a few ms per
    backup) are backed up after every epoch; AE-1 (70.7 M parameters with Adam's state,
    ~810 MB, ~2.4 s to write while an epoch of the synthetic carpet trains in ~4.3 s) every
    few epochs. A kill then loses at most about ``backup seconds / max_overhead`` of work plus
    the unfinished epoch; the resumed run still equals an uninterrupted one (the history rows
    past the backup are dropped and retrained with the same data order).

    Args:
        backup_dir: the backup folder.
        max_overhead: the largest share of wall time spent writing backups, in (0, 1];
            1.0 backs up every epoch whatever it costs.
    """

    def __init__(self, backup_dir: str, max_overhead: float = 0.1):
        super().__init__(backup_dir)
        if not 0 < max_overhead <= 1:
            raise ParameterError(f"max_overhead must be in (0, 1], got {max_overhead!r}")
        self.max_overhead = float(max_overhead)
        self.saved_epochs: list[int] = []
        self.clock = time.monotonic
        self._last_save_end = self.clock()
        self._last_save_seconds = 0.0

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self._last_save_end = self.clock()

    def on_epoch_end(self, epoch, logs=None):
        since = self.clock() - self._last_save_end
        due = since * self.max_overhead >= self._last_save_seconds * (1 - self.max_overhead)
        if due:
            super().on_epoch_end(epoch, logs)
        else:
            self._current_epoch = epoch + 1
            self._last_batch_seen = 0

    def _save_model(self):
        start = self.clock()
        self._write_backup()
        self._last_save_end = self.clock()
        self._last_save_seconds = self._last_save_end - start
        self.saved_epochs.append(self._current_epoch)

    def _write_backup(self):
        backup = Path(self.backup_dir)
        backup.mkdir(parents=True, exist_ok=True)
        name = f"epoch-{self._current_epoch:05d}.weights.h5"
        # No fsync: the backup guards against a killed process (the page cache survives it),
        # and syncing ~1 GB of AE-1 weights and Adam state every epoch doubles its time.
        with atomic_path(backup / name, suffix=".weights.h5", durable=False) as tmp:
            self.model.save_weights(tmp)
        write_json(self._training_metadata_path,
                   {"epoch": self._current_epoch, "batch": self._last_batch_seen,
                    "weights": name})
        for stale in backup.glob("epoch-*.weights.h5"):
            if stale.name != name:
                stale.unlink(missing_ok=True)

    def _load_model(self):
        metadata_path = Path(self._training_metadata_path)
        if not metadata_path.is_file():
            return
        metadata = read_json(metadata_path)
        weights = Path(self.backup_dir) / metadata.get("weights", "")
        if not weights.is_file():
            raise ArtifactError(f"the training backup '{metadata_path}' names a missing "
                                f"weights file '{weights}'",
                                fix=f"delete '{self.backup_dir}' to restart training")
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        self.model.load_weights(weights)
        self.model._initial_epoch = int(metadata["epoch"])


# --------------------------------------------------------------------------- fitting


def read_history_csv(path: str | os.PathLike) -> list[dict[str, float]]:
    """Rows of a ``history.csv`` (epoch as int, metrics as float); ``[]`` if it is missing."""
    path = Path(path)
    if not path.is_file():
        return []
    try:
        with open(path, newline="") as handle:
            return [{k: (int(v) if k == "epoch" else float(v)) for k, v in row.items() if v}
                    for row in csv.DictReader(handle)]
    except (ValueError, KeyError) as exc:
        raise ArtifactError(f"'{path}' is not a history written by fit_autoencoder ({exc})",
                            fix="delete it (and the backup folder beside it) and retrain") from exc


def _describe(data: Any) -> Any:
    if isinstance(data, np.ndarray):
        return {"array_shape": list(data.shape), "dtype": str(data.dtype)}
    if isinstance(data, tf.data.Dataset):
        return {"dataset": str(data.element_spec)}
    return None if data is None else type(data).__name__


def _describe_loss(loss: Any) -> Any:
    if loss is None or isinstance(loss, str):
        return loss
    return keras.saving.serialize_keras_object(loss)


def fit_autoencoder(model: keras.Model, train_data: np.ndarray | tf.data.Dataset,
                    val_data: np.ndarray | tf.data.Dataset | None,
                    model_dir: str | os.PathLike, *, epochs: int, learning_rate: float,
                    seed: int, loss: Any = None, early_stopping_patience: int | None = None,
                    verbose: int = 2, batch_size: int = 32, jit_compile: bool | str = "auto",
                    backup_overhead: float = 0.1,
                    callbacks: Sequence[keras.callbacks.Callback] = ()) -> dict[str, Any]:
    """Train an autoencoder with atomic checkpoints, resume after a kill, and a NaN guard.

    Rerunning with the same ``model_dir`` and settings after the process died continues from
    the last backed-up epoch (``model_dir/backup``); the result equals an uninterrupted run.

    Args:
        model: a model from :mod:`anomaly_utils.models` (or any Keras autoencoder), built.
        train_data: a dataset of ``(x, x)`` batches (e.g. :func:`patch_dataset`) or an image
            array (uint8 or float in [0, 1], shuffled per epoch via :func:`image_dataset`).
        val_data: the same for validation (arrays are not shuffled), or ``None`` to select the
            checkpoint on the training loss.
        model_dir: folder for ``model.keras`` (best epoch), ``history.csv`` (epoch counted
            from 0, one row per finished epoch), ``history.json``, ``config.json`` and, while
            running, ``backup/``.
        epochs: total epochs (including those finished before a resume).
        learning_rate: Adam's learning rate (> 0).
        seed: seeds Python, numpy, TF and Keras and turns on deterministic TF ops.
        loss: a Keras loss; ``None`` picks the model's own (:func:`models.default_loss`:
            MSE for AE-1, the SSIM loss for AE-2, the built-in ELBO for the VAE).
        early_stopping_patience: stop after this many epochs without a better monitored
            loss; ``None`` trains all epochs.
        verbose: Keras ``fit`` verbosity (0 silent, 2 one line per epoch).
        batch_size: batch size used when ``train_data``/``val_data`` are arrays.
        jit_compile: passed to ``compile`` (``"auto"``: XLA on a GPU, not on a CPU).
        backup_overhead: the largest share of the time spent writing resume backups
            (:class:`AtomicBackupAndRestore`); 1.0 backs up after every epoch.
        callbacks: extra Keras callbacks, run after the lab's own.

    Returns:
        ``{"model": best model (loaded back from model.keras, uncompiled), "history": {column:
        list per epoch} including "epoch", "best_epoch": int, "best_value": float,
        "monitor": "val_loss" or "loss", "initial_epoch": first epoch this call ran,
        "model_path": str}``.

    Raises:
        ParameterError: a bad argument. LabError: the loss became NaN/inf.
        ArtifactError: ``model_dir`` holds an unfinished run with other settings.
    """
    epochs = _check_int("epochs", epochs)
    batch_size = _check_int("batch_size", batch_size)
    if isinstance(learning_rate, bool) or not isinstance(learning_rate, (int, float)) \
            or not math.isfinite(learning_rate) or learning_rate <= 0:
        raise ParameterError(f"learning_rate must be a finite number > 0, got {learning_rate!r}")
    seed = _check_int("seed", seed, minimum=0)
    if early_stopping_patience is not None:
        early_stopping_patience = _check_int("early_stopping_patience", early_stopping_patience)
    if isinstance(model, VariationalAutoencoder):
        if loss is not None:
            raise ParameterError("loss must be None for the VAE (it trains on its own ELBO)")
    elif loss is None:
        loss = default_loss(model)
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    backup_dir = model_dir / BACKUP_DIR

    config = {
        "model": builder_config(model) or {"builder": None, "name": model.name},
        "training": {"epochs": epochs, "learning_rate": float(learning_rate), "seed": seed,
                     "loss": _describe_loss(loss),
                     "early_stopping_patience": early_stopping_patience,
                     "batch_size": batch_size, "jit_compile": jit_compile,
                     "train_data": _describe(train_data), "val_data": _describe(val_data)},
    }
    _check_resumable(model_dir, config)
    write_json(model_dir / CONFIG_FILE, config)

    set_global_seed(seed)
    train_ds = image_dataset(train_data, batch_size, shuffle=True, seed=seed)
    val_ds = None if val_data is None else image_dataset(val_data, batch_size, shuffle=False)
    monitor = "loss" if val_ds is None else "val_loss"

    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=loss,
                  jit_compile=jit_compile)
    guard = _NanGuard(float(learning_rate))
    recorder = _EpochRecorder(model_dir, monitor, early_stopping_patience, verbose)
    # Order matters at epoch end: checkpoint and CSV row first, the backup (the commit) last.
    lab_callbacks = [_EpochSetter(train_ds), guard, recorder,
                     AtomicBackupAndRestore(str(backup_dir), backup_overhead)]
    try:
        model.fit(train_ds, validation_data=val_ds, epochs=epochs, verbose=verbose, shuffle=False,
                  callbacks=lab_callbacks + list(callbacks))
    except LabError:
        if guard.tripped:
            shutil.rmtree(backup_dir, ignore_errors=True)
        raise
    finally:
        model._initial_epoch = None  # set by the backup on resume; would leak into a later fit

    rows = recorder.rows or read_history_csv(model_dir / HISTORY_CSV)
    history = {key: [row.get(key, math.nan) for row in rows]
               for key in dict.fromkeys(k for row in rows for k in row)}
    write_json(model_dir / HISTORY_JSON, history)
    best_model = load_model(model_dir / MODEL_FILE)
    return {"model": best_model, "history": history, "best_epoch": recorder.best_epoch,
            "best_value": recorder.best, "monitor": monitor,
            "initial_epoch": recorder.initial_epoch, "model_path": str(model_dir / MODEL_FILE)}


def _check_resumable(model_dir: Path, config: dict) -> None:
    """Refuse to resume a backup written with other settings (``epochs`` may grow)."""
    backup_dir = model_dir / BACKUP_DIR
    config_path = model_dir / CONFIG_FILE
    if not backup_dir.is_dir() or not config_path.is_file():
        return
    previous = read_json(config_path)

    def comparable(c):
        training = {k: v for k, v in c.get("training", {}).items() if k != "epochs"}
        return {"model": c.get("model"), "training": training}

    if comparable(previous) != comparable(config):
        raise ArtifactError(
            f"'{model_dir}' holds an unfinished run ('{backup_dir}') with other settings than "
            f"this one (see '{config_path}')",
            fix=f"rerun with the same settings to resume, or delete '{backup_dir}' to start over")


def load_model(path: str | os.PathLike) -> keras.Model:
    """Load a ``.keras`` model in safe mode, uncompiled.

    Raises:
        ArtifactError: the file is missing, corrupt, or refused by safe mode (e.g. it holds a
            Lambda layer with code, which this lab never writes).

    Example:
        >>> load_model("runs/missing/model.keras")  # doctest: +SKIP
        anomaly_utils.errors.ArtifactError: 'runs/missing/model.keras' is missing. ...
    """
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"model file '{path}' is missing",
                            fix="train the model first (or check the run directory)")
    try:
        return keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as exc:  # noqa: BLE001 - any failure to load is a bad artifact
        text = str(exc)
        if "safe_mode" in text or "lambda" in text.lower():
            raise ArtifactError(
                f"model file '{path}' was refused by safe mode: it contains code (e.g. a "
                "Lambda layer) that would run on loading",
                fix="use a model written by this lab; only load such files from a source "
                    "you trust, and never through this lab") from exc
        corrupt = isinstance(exc, (OSError, zipfile.BadZipFile, EOFError, ValueError))
        raise ArtifactError(
            f"model file '{path}' could not be loaded ({'corrupt or truncated: ' if corrupt else ''}"
            f"{type(exc).__name__}: {text[:300]})",
            fix="delete it and retrain, or check that anomaly_utils is importable") from exc
