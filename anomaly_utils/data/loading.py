"""A scanned dataset decoded into arrays: images resized to the model's resolution, masks to
the evaluation resolution, split into training, validation and test.

Example:
    >>> ds = load_dataset("data/synthetic_carpet", image_size=64)   # doctest: +SKIP
    >>> ds.train_images.shape, ds.test_masks.shape                    # doctest: +SKIP
    ((216, 64, 64, 3), (105, 64, 64))
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import cv2
import numpy as np

from anomaly_utils.cpus import usable_cpus
from anomaly_utils.data.images import (
    channels_for,
    detect_color_mode,
    display_path,
    image_size_of,
    read_image,
    read_mask,
)
from anomaly_utils.data.layout import (
    DatasetIndex,
    Sample,
    fingerprint,
    scan_dataset,
    split_train_val,
)
from anomaly_utils.data.near_copies import file_thumbnails, near_copy_groups
from anomaly_utils.errors import DataError, ParameterError

_LOAD_THREADS = max(2, min(8, usable_cpus()))
# How validation images are drawn from train/good (load_dataset's val_split).
VAL_SPLITS = ("images", "items")


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """Resize (H, W, C) uint8 to (size, size, C): area averaging down, bilinear up."""
    height, width = image.shape[:2]
    if (height, width) == (size, size):
        return image
    interpolation = cv2.INTER_AREA if size < min(height, width) else cv2.INTER_LINEAR
    resized = cv2.resize(image, (size, size), interpolation=interpolation)
    return resized.reshape(size, size, image.shape[2])


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Resize a bool (H, W) mask to bool (size, size) without losing a defect.

    A pixel is a defect where the defect covers at least half of its area. A defect region
    (8-connected) too thin for that anywhere, such as a crack a few pixels wide in a large
    image, would vanish from the pixel metrics while its image still counts as defective;
    it is kept instead as the pixels its own area fraction reaches at least half its maximum
    in, a line about one pixel wide along the defect.
    """
    if mask.shape == (size, size):
        return mask
    fraction = cv2.resize(mask.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA)
    kept = fraction >= 0.5
    count, regions = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    if count <= 1:
        return kept
    # Which regions touch a kept pixel: the kept mask back at the mask's own resolution.
    height, width = mask.shape
    kept_full = cv2.resize(kept.astype(np.uint8), (width, height),
                           interpolation=cv2.INTER_NEAREST).astype(bool)
    touching = np.bincount(regions[kept_full & mask], minlength=count)
    for region in np.flatnonzero(touching[1:] == 0) + 1:
        own = cv2.resize((regions == region).astype(np.float32), (size, size),
                         interpolation=cv2.INTER_AREA)
        kept |= own >= 0.5 * own.max()
    return kept


def load_images(paths: list[Path], image_size: int, color_mode: str = "rgb",
                skip_unreadable: bool = False) -> tuple[np.ndarray, np.ndarray, list[tuple]]:
    """Decode and resize image files.

    Args:
        paths: image files.
        image_size: output side length in pixels (images are resized to a square).
        color_mode: "rgb" or "grayscale".
        skip_unreadable: if True, unreadable files are left out and reported in the third
            return value instead of raising.

    Returns:
        ``(images, original_sizes, skipped)``: uint8 (N, S, S, C); int (N, 2) of the
        original (height, width); list of ``(path, reason)`` for skipped files.
    """
    channels = channels_for(color_mode)
    if not isinstance(image_size, int | np.integer) or image_size < 8:
        raise ParameterError(f"image_size must be an integer >= 8, got {image_size!r}",
                             fix="pass e.g. -p image_size 256")

    def load_one(path: Path):
        try:
            image = read_image(path, color_mode)
        except DataError as exc:
            if skip_unreadable:
                return None, str(exc)
            raise
        return image, None

    with ThreadPoolExecutor(_LOAD_THREADS) as pool:
        results = list(pool.map(load_one, paths))
    images, sizes, skipped = [], [], []
    for path, (image, reason) in zip(paths, results, strict=True):
        if image is None:
            skipped.append((path, reason))
            continue
        sizes.append(image.shape[:2])
        images.append(resize_image(image, image_size))
    stacked = (np.stack(images) if images
               else np.zeros((0, image_size, image_size, channels), np.uint8))
    return stacked, np.array(sizes, dtype=np.int64).reshape(-1, 2), skipped


def load_masks(samples: list[Sample], mask_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Masks of ``samples`` at ``mask_size``; good images get an empty mask.

    Returns:
        ``(masks, has_mask)``: bool (N, mask_size, mask_size) and bool (N,), where
        ``has_mask`` is False for defect images without a ground-truth mask.

    Raises:
        DataError: a mask's size differs from its image's.
    """

    def load_one(sample: Sample) -> np.ndarray:
        if sample.mask_path is None:
            return np.zeros((mask_size, mask_size), bool)
        mask = read_mask(sample.mask_path)
        image_shape = image_size_of(sample.path)
        if mask.shape != image_shape:
            raise DataError(
                f"mask '{display_path(sample.mask_path)}' is {mask.shape[1]}x{mask.shape[0]} but "
                f"its image '{display_path(sample.path)}' is {image_shape[1]}x{image_shape[0]}",
                fix="regenerate the mask at the image's size",
            )
        return resize_mask(mask, mask_size)

    with ThreadPoolExecutor(_LOAD_THREADS) as pool:
        masks = list(pool.map(load_one, samples))
    has_mask = np.array([s.label == 0 or s.mask_path is not None for s in samples], bool)
    stacked = np.stack(masks) if masks else np.zeros((0, mask_size, mask_size), bool)
    return stacked, has_mask


@dataclass
class AnomalyDataset:
    """A dataset loaded into memory, split into train / validation / test.

    Images are uint8 (N, S, S, C) with S = ``image_size``; test masks are bool
    (N, M, M) with M = ``mask_size``. ``test_labels`` is int (N,) with 1 = defective;
    ``test_types`` is str (N,) with "good" for normals.
    """

    index: DatasetIndex
    image_size: int
    color_mode: str
    mask_size: int
    train_images: np.ndarray
    val_images: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    test_types: np.ndarray
    test_masks: np.ndarray
    test_has_mask: np.ndarray
    test_paths: list[Path]
    test_original_sizes: np.ndarray
    skipped: list[tuple] = field(default_factory=list)
    val_paths: list[Path] = field(default_factory=list)  # the files of ``val_images``, in order

    @cached_property
    def fingerprint(self) -> str:
        # Hashes every file of the dataset; the stored scores and the shared validation set
        # each ask for it, so it is computed once per loaded dataset.
        return fingerprint(self.index)


def load_dataset(data_dir: str | os.PathLike, image_size: int = 256, color_mode: str = "rgb",
                 val_fraction: float = 0.1, seed: int = 0, mask_size: int | None = None,
                 allow_missing_masks: bool = False, skip_unreadable: bool = False,
                 val_split: str = "images") -> AnomalyDataset:
    """Scan, split and load a dataset in the MVTec AD layout.

    Args:
        data_dir: the category folder.
        image_size: side length of the loaded images, pixels.
        color_mode: "rgb", "grayscale" or "auto" (grayscale when the training images are
            gray, :func:`anomaly_utils.data.images.detect_color_mode`); the dataset's
            ``color_mode`` is the mode used.
        val_fraction: fraction of ``train/good`` held out for validation (thresholds,
            early stopping); the test set is never used for either.
        seed: seeds the validation split.
        mask_size: side length of the loaded masks (default: ``image_size``).
        allow_missing_masks: keep defect images without a mask (image-level metrics only).
        skip_unreadable: leave out unreadable images and list them in ``skipped`` instead
            of raising.
        val_split: "images" draws the validation images one by one; "items" keeps
            near-copies (captures of one item, :mod:`anomaly_utils.data.near_copies`) on
            one side, so that validation sees items training did not.
    """
    if val_split not in VAL_SPLITS:
        raise ParameterError(f"val_split must be one of {VAL_SPLITS}, got {val_split!r}",
                             fix="pass -p val_split items (or images)")
    index = scan_dataset(data_dir, allow_missing_masks)
    color_mode = detect_color_mode([s.path for s in index.train], color_mode)
    mask_size = mask_size or image_size
    groups = None
    if val_split == "items" and val_fraction > 0:
        groups = near_copy_groups(file_thumbnails([s.path for s in index.train])).tolist()
    train, val = split_train_val(index.train, val_fraction, seed, groups)
    train_images, _, skipped_train = load_images([s.path for s in train], image_size, color_mode,
                                                 skip_unreadable)
    val_images, _, skipped_val = load_images([s.path for s in val], image_size, color_mode,
                                             skip_unreadable)
    test_images, test_sizes, skipped_test = load_images([s.path for s in index.test], image_size,
                                                        color_mode, skip_unreadable)
    skipped_paths = {path for path, _ in skipped_test}
    test = [s for s in index.test if s.path not in skipped_paths]
    masks, has_mask = load_masks(test, mask_size)
    if len(train_images) == 0:
        raise DataError(f"no readable training images in '{display_path(index.root)}'",
                        fix="check the files listed above")
    return AnomalyDataset(
        index=index, image_size=image_size, color_mode=color_mode, mask_size=mask_size,
        train_images=train_images, val_images=val_images, test_images=test_images,
        test_labels=np.array([s.label for s in test], np.int64),
        test_types=np.array([s.defect_type for s in test], dtype=str),
        test_masks=masks, test_has_mask=has_mask, test_paths=[s.path for s in test],
        test_original_sizes=test_sizes,
        skipped=skipped_train + skipped_val + skipped_test,
        val_paths=[s.path for s in val if s.path not in {path for path, _ in skipped_val}],
    )


def load_run_dataset(params: dict, **overrides) -> AnomalyDataset:
    """The dataset as a run's notebook loaded it, from that notebook's parameters (a
    ``params.json`` entry): the same split, sizes and masks. ``overrides`` replace
    :func:`load_dataset` arguments (for example ``color_mode`` as the model resolved it).
    Runs recorded before ``val_split`` existed drew their validation images one by one."""
    arguments = dict(image_size=params["image_size"], color_mode=params["color_mode"],
                     val_fraction=params["val_fraction"], seed=params["seed"],
                     mask_size=params["eval_size"],
                     allow_missing_masks=params.get("allow_missing_masks", False),
                     val_split=params.get("val_split", "images"))
    arguments.update(overrides)
    data_dir = arguments.pop("data_dir", params["data_dir"])
    return load_dataset(data_dir, **arguments)


def decode_image_file(path: str | os.PathLike, image_size: int, color_mode: str = "rgb") -> np.ndarray:
    """Decode one image file with OpenCV and resize it: uint8 (S, S, C).

    The colours are those of :func:`~anomaly_utils.data.images.read_image` (RGB; grayscale as
    ITU-R 601 luma of the RGB; alpha dropped; EXIF orientation ignored, as Pillow does) and
    the resize that of :func:`resize_image` (area averaging down, bilinear up), so the result
    is what :func:`load_images` gives for the file, up to decoder differences.

    Raises:
        DataError: the file is missing, unreadable or not an image OpenCV decodes.
    """
    channels = channels_for(color_mode)
    name = display_path(path)
    try:
        raw = np.fromfile(path, np.uint8)
    except OSError as exc:
        raise DataError(f"cannot read image '{name}': {exc.strerror or exc}",
                        fix="check that the file exists and is readable") from exc
    image = cv2.imdecode(raw, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION) \
        if raw.size else None
    if image is None:
        raise DataError(f"'{name}' is not an image OpenCV can decode",
                        fix="replace it with a valid image or delete it")
    image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if channels == 1:
        luma = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        image = np.clip(np.round(luma), 0, 255).astype(np.uint8)[..., None]
    return resize_image(image, image_size)


def file_dataset(paths: list[Path], image_size: int, color_mode: str = "rgb",
                 batch_size: int = 32, shuffle: bool = False, seed: int = 0,
                 targets: bool = False):
    """A ``keras.utils.PyDataset`` that reads images from disk: batches (B, S, S, C) float32
    in [0, 1], or ``(x, x)`` with ``targets`` (to fit an autoencoder).

    Each batch's files are decoded with OpenCV in threads (:func:`decode_image_file`: the
    colour conversion and resize of :func:`load_images`); Keras' TensorFlow backend makes the
    next batch while the model trains, so training from disk runs at nearly the speed of
    training from memory (see benchmarks/bench_pipeline.py). The last batch may be smaller.
    The order is the paths' order or, with ``shuffle``, epoch ``e``'s permutation drawn with
    ``numpy.random.default_rng([seed, e])``; the dataset's epoch is set by
    ``anomaly_utils.training.datasets.set_dataset_epoch`` (``fit_autoencoder`` does it), so
    the order is a function of ``(seed, epoch)`` alone.

    Example:
        >>> ds = file_dataset(paths, 64, "rgb", batch_size=32)  # doctest: +SKIP
        >>> len(ds), ds[0].shape                                # doctest: +SKIP
        (7, (32, 64, 64, 3))
    """
    import keras  # only here: the rest of the data stage knows no model framework

    channels_for(color_mode)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer) \
            or batch_size < 1:
        raise ParameterError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if not paths:
        raise ParameterError("file_dataset needs at least one path", fix="pass image files")
    names = [os.fspath(p) for p in paths]

    class FileDataset(keras.utils.PyDataset):
        def __init__(self):
            super().__init__(workers=1, use_multiprocessing=False)
            self.epoch = 0

        def set_epoch(self, epoch: int) -> None:
            self.epoch = int(epoch)

        def __len__(self) -> int:
            return -(-len(names) // batch_size)

        def __getitem__(self, index: int):
            index = int(index)
            if not 0 <= index < len(self):
                raise IndexError(f"batch {index} of a dataset of {len(self)} batches")
            order = (np.random.default_rng([int(seed), self.epoch]).permutation(len(names))
                     if shuffle else np.arange(len(names)))
            chosen = [names[i] for i in order[index * batch_size:(index + 1) * batch_size]]
            with ThreadPoolExecutor(min(_LOAD_THREADS, len(chosen))) as pool:
                images = list(pool.map(
                    lambda name: decode_image_file(name, image_size, color_mode), chosen))
            x = np.stack(images).astype(np.float32) / np.float32(255.0)
            # Two arrays, never one buffer twice: TensorFlow may reuse an input's buffer
            # (see anomaly_utils.training.datasets, _ALIASING).
            return (x, x.copy()) if targets else x

    return FileDataset()
