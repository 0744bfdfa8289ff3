"""Reading single image and mask files, with errors a user can act on.

Decoding goes through Pillow, which reads PNG, JPEG, BMP and TIFF and handles the awkward
variants (palette, RGBA, CMYK, 16-bit). The steps for one file:

1. Read the header only and refuse sizes that are too small to resize meaningfully or so
   large that decoding would allocate gigabytes (checked before any pixel is decoded).
2. Decode fully; a truncated or corrupt file becomes a :class:`DataError` naming it.
3. Convert to the requested colour mode ("rgb" or "grayscale") as uint8: 16-bit images are
   scaled to 8 bits, alpha is dropped (composited on black would invent content; the colour
   channels are kept as stored), palette and CMYK images are converted to RGB first.

Example:
    >>> image = read_image("data/synthetic_carpet/train/good/000.png", "rgb")  # doctest: +SKIP
    >>> image.shape, image.dtype                                                # doctest: +SKIP
    ((256, 256, 3), dtype('uint8'))
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from anomaly_utils.errors import DataError, ParameterError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
COLOR_MODES = ("rgb", "grayscale")
AUTO_COLOR = "auto"  # a notebook parameter value: the colour mode the data has (detect_color_mode)
GRAY_TOLERANCE = 2  # largest channel difference, in 8-bit levels, of a pixel read as gray
MIN_SIDE = 8
MAX_PIXELS = 40_000_000


def display_path(path: str | os.PathLike) -> str:
    """A printable form of ``path``, also when its name is not valid UTF-8."""
    return os.fsencode(path).decode("utf-8", errors="backslashreplace")


def channels_for(color_mode: str) -> int:
    """Number of channels of ``color_mode``: 3 for "rgb", 1 for "grayscale"."""
    if color_mode not in COLOR_MODES:
        raise ParameterError(
            f"color_mode must be one of {COLOR_MODES}, got {color_mode!r}",
            fix="pass -p color_mode rgb or -p color_mode grayscale",
        )
    return 3 if color_mode == "rgb" else 1


def _open_checked(path: Path) -> Image.Image:
    """Open ``path`` lazily (header only) and check its size before decoding."""
    name = display_path(path)
    try:
        if path.stat().st_size == 0:
            raise DataError(f"image file '{name}' is empty (0 bytes)",
                            fix="replace it with a valid image or delete it")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
    except DataError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(f"image '{name}' claims a huge size and was not decoded ({exc})",
                        fix="downscale the image, or check that the file is not corrupt") from exc
    except UnidentifiedImageError as exc:
        raise DataError(f"'{name}' is not a readable PNG/JPEG/BMP/TIFF image ({exc})",
                        fix="replace it with a valid image or delete it") from exc
    except OSError as exc:
        raise DataError(f"cannot open image '{name}': {exc.strerror or exc}",
                        fix="check that the file exists and is readable") from exc
    width, height = image.size
    if width * height > MAX_PIXELS:
        image.close()
        raise DataError(
            f"image '{name}' claims {width}x{height} pixels, more than the limit of "
            f"{MAX_PIXELS:,}; it was not decoded",
            fix="downscale the image, or check that the file is not corrupt",
        )
    if min(width, height) < MIN_SIDE:
        image.close()
        raise DataError(f"image '{name}' is only {width}x{height} pixels "
                        f"(at least {MIN_SIDE}x{MIN_SIDE} needed)",
                        fix="remove it from the dataset or replace it with a full-size image")
    return image


def is_gray(path: str | os.PathLike) -> bool:
    """Whether an image file holds gray content: a single-channel file, or a colour file whose
    channels differ by at most :data:`GRAY_TOLERANCE` levels at every pixel (a grayscale
    photograph saved as RGB, as JPEG encoders often do)."""
    array = read_image(path, "rgb").astype(np.int16)
    return bool(np.abs(array - array[..., :1]).max() <= GRAY_TOLERANCE)


def detect_color_mode(paths: list[Path], color_mode: str = AUTO_COLOR,
                      sample: int = 16) -> str:
    """The colour mode to load ``paths`` in: ``color_mode`` itself unless it is "auto", then
    "grayscale" when every one of up to ``sample`` evenly spread files is gray
    (:func:`is_gray`), else "rgb".

    Raises:
        ParameterError: ``color_mode`` is not "auto", "rgb" or "grayscale".
        DataError: ``paths`` is empty with "auto", or a sampled file cannot be read.
    """
    if color_mode != AUTO_COLOR:
        channels_for(color_mode)  # raises for an unknown mode
        return color_mode
    if not paths:
        raise DataError("no training images to detect the colour mode from",
                        fix="add images to train/good, or pass -p color_mode rgb|grayscale")
    picks = np.unique(np.linspace(0, len(paths) - 1, min(sample, len(paths))).astype(int))
    return "grayscale" if all(is_gray(paths[i]) for i in picks) else "rgb"


def _decode(image: Image.Image, path: Path) -> np.ndarray:
    """Decode ``image`` to a uint8 array (H, W) or (H, W, 3), scaling 16-bit data."""
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"image '{display_path(path)}' is truncated or corrupt ({exc})",
                        fix="replace it with a complete copy or delete it") from exc
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if array.max(initial=0) > 255 or image.mode.startswith("I;16") else 255.0
        return np.clip(np.round(array * (255.0 / peak)), 0, 255).astype(np.uint8)
    if image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        return np.clip(np.round(array * 255.0 if array.max(initial=0) <= 1 else array), 0,
                       255).astype(np.uint8)
    if image.mode in ("L", "RGB"):
        return np.asarray(image, dtype=np.uint8)
    if image.mode == "LA":
        return np.asarray(image.getchannel("L"), dtype=np.uint8)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def read_image(path: str | os.PathLike, color_mode: str = "rgb") -> np.ndarray:
    """Read one image file as uint8 in the requested colour mode.

    Args:
        path: a PNG, JPEG, BMP or TIFF file.
        color_mode: "rgb" gives (H, W, 3); "grayscale" gives (H, W, 1) (ITU-R 601 luma).

    Returns:
        uint8 array (H, W, C) at the file's own resolution.

    Raises:
        DataError: the file is empty, not an image, truncated, too small or too large.
    """
    channels = channels_for(color_mode)
    path = Path(path)
    with _open_checked(path) as image:
        array = _decode(image, path)
    if array.ndim == 2:
        array = array[..., None]
    if channels == 3 and array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    elif channels == 1 and array.shape[-1] == 3:
        luma = array.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        array = np.clip(np.round(luma), 0, 255).astype(np.uint8)[..., None]
    return np.ascontiguousarray(array)


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a ground-truth mask as bool (H, W), binarised at > 127.

    Real masks carry JPEG-like noise (values other than 0 and 255); thresholding at the
    midpoint is what the MVTec AD evaluation does. Colour masks are reduced to their luma.
    """
    return read_image(path, "grayscale")[..., 0] > 127


def image_header(path: str | os.PathLike) -> tuple[int, int, str]:
    """(height, width, Pillow mode) of an image file from its header, without decoding."""
    with _open_checked(Path(path)) as image:
        width, height = image.size
        return height, width, image.mode


def image_size_of(path: str | os.PathLike) -> tuple[int, int]:
    """(height, width) of an image file from its header, without decoding the pixels."""
    return image_header(path)[:2]
