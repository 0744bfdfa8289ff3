"""The data layer: layouts, loading, splits, fingerprints, and the bad-input corpus.

Every bad input is built here at test time. Each case states its expected outcome: a
``DataError`` whose text names the file and the fix, or a documented way of handling it.
"""

from __future__ import annotations

import io
import json
import os
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from anomaly_utils.data.images import detect_color_mode, read_image, read_mask
from anomaly_utils.data.layout import dataset_summary, fingerprint, scan_dataset, split_train_val
from anomaly_utils.data.loading import file_dataset, load_dataset, load_images, resize_mask
from anomaly_utils.errors import DataError, ParameterError
from anomaly_utils.pipeline import runs
from anomaly_utils.training.datasets import set_dataset_epoch

RNG = np.random.default_rng(0)


def _png(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path)
    return path


def make_dataset(root: Path, n_train: int = 6, size: int = 32, defects=("scratch",),
                 n_defect: int = 2, n_good: int = 2) -> Path:
    """A tiny valid MVTec-layout dataset: noise images, square masks."""
    for i in range(n_train):
        _png(root / "train" / "good" / f"{i:03d}.png", RNG.integers(0, 255, (size, size, 3),
                                                                     dtype=np.uint8))
    for i in range(n_good):
        _png(root / "test" / "good" / f"{i:03d}.png", RNG.integers(0, 255, (size, size, 3),
                                                                    dtype=np.uint8))
    for defect in defects:
        for i in range(n_defect):
            _png(root / "test" / defect / f"{i:03d}.png",
                 RNG.integers(0, 255, (size, size, 3), dtype=np.uint8))
            mask = np.zeros((size, size), np.uint8)
            mask[4:12, 4:12] = 255
            _png(root / "ground_truth" / defect / f"{i:03d}_mask.png", mask)
    return root


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "cat")


# --- valid layouts --------------------------------------------------------------------------

def test_scan_pairs_images_with_masks(dataset: Path):
    index = scan_dataset(dataset)
    assert len(index.train) == 6
    assert [s.defect_type for s in index.test].count("scratch") == 2
    assert index.defect_types == ["scratch"]
    for sample in index.test:
        if sample.label:
            assert sample.mask_path.name == f"{sample.path.stem}_mask.png"
        else:
            assert sample.mask_path is None


def test_load_dataset_shapes_and_split(dataset: Path):
    ds = load_dataset(dataset, image_size=16, color_mode="grayscale", val_fraction=0.34,
                           seed=1, mask_size=8)
    assert ds.train_images.shape == (3, 16, 16, 1) and ds.val_images.shape == (3, 16, 16, 1)
    assert ds.test_images.shape == (4, 16, 16, 1)
    assert ds.test_masks.shape == (4, 8, 8) and ds.test_masks.dtype == bool
    assert ds.test_labels.tolist() == [1 if t != "good" else 0 for t in ds.test_types]
    assert ds.test_masks[ds.test_labels == 1].any(axis=(1, 2)).all()
    assert not ds.test_masks[ds.test_labels == 0].any()
    assert (ds.test_original_sizes == 32).all()


def test_validation_split_is_deterministic_and_disjoint(dataset: Path):
    index = scan_dataset(dataset)
    a_train, a_val = split_train_val(index.train, 0.5, seed=3)
    b_train, b_val = split_train_val(list(reversed(index.train)), 0.5, seed=3)
    assert [s.path for s in a_val] == [s.path for s in b_val]
    assert not {s.path for s in a_train} & {s.path for s in a_val}
    assert len(a_train) + len(a_val) == len(index.train)
    _, other_val = split_train_val(index.train, 0.5, seed=4)
    assert len(other_val) == len(a_val)
    with pytest.raises(ParameterError, match="val_fraction"):
        split_train_val(index.train, 1.0, seed=0)


def test_fingerprint_changes_with_content(dataset: Path):
    before = fingerprint(scan_dataset(dataset))
    assert before == fingerprint(scan_dataset(dataset))
    _png(dataset / "train" / "good" / "000.png", np.zeros((32, 32, 3), np.uint8))
    assert fingerprint(scan_dataset(dataset)) != before


def test_summary_counts_sizes_and_coverage(dataset: Path):
    summary = dataset_summary(scan_dataset(dataset))
    assert summary["counts"] == {"test/good": 2, "test/scratch": 2, "train/good": 6}
    assert summary["image_sizes"]["height"]["max"] == 32
    assert summary["mask_coverage"]["scratch"] == pytest.approx(64 / 1024)
    assert summary["modes"] == {"RGB": 10} or sum(summary["modes"].values()) == 10


def test_accepts_jpeg_bmp_tiff_and_varying_sizes(tmp_path: Path):
    root = make_dataset(tmp_path / "cat")
    Image.fromarray(RNG.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(
        root / "train" / "good" / "100.jpg", quality=90)
    Image.fromarray(RNG.integers(0, 255, (20, 30), dtype=np.uint8)).save(
        root / "train" / "good" / "101.bmp")
    Image.fromarray(RNG.integers(0, 255, (33, 33, 3), dtype=np.uint8)).save(
        root / "train" / "good" / "102.tiff")
    ds = load_dataset(root, image_size=24, val_fraction=0.0)
    assert ds.train_images.shape == (9, 24, 24, 3)


def test_file_dataset_reads_from_disk(dataset: Path):
    paths = [s.path for s in scan_dataset(dataset).train]
    batches = list(file_dataset(paths, 16, "rgb", batch_size=4))
    assert [b.shape for b in batches] == [(4, 16, 16, 3), (2, 16, 16, 3)]
    assert batches[0].dtype == np.float32
    assert batches[0].min() >= 0.0 and batches[0].max() <= 1.0
    # The same pixels as load_images (Pillow decoding, the same resize), divided by 255.
    for mode in ("rgb", "grayscale"):
        loaded, _, _ = load_images(paths, 16, mode)
        read = np.concatenate(list(file_dataset(paths, 16, mode, batch_size=4)))
        np.testing.assert_allclose(read, loaded / 255.0, atol=1.5 / 255)
    shuffled = file_dataset(paths, 16, "rgb", batch_size=6, shuffle=True, seed=1, targets=True)
    x, y = shuffled[0]
    assert len(x) == 6 and not np.shares_memory(x, y)
    np.testing.assert_array_equal(x, y)
    set_dataset_epoch(shuffled, 1)
    again = shuffled[0][0]
    assert not np.array_equal(x, again)
    np.testing.assert_allclose(np.sort(x.reshape(6, -1), axis=0),
                               np.sort(again.reshape(6, -1), axis=0))
    set_dataset_epoch(shuffled, 0)
    np.testing.assert_array_equal(shuffled[0][0], x)


def test_file_dataset_names_an_unreadable_file(tmp_path: Path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(DataError, match="bad.png"):
        file_dataset([bad], 16)[0]


# --- the bad-input corpus -------------------------------------------------------------------

def _truncated(path: Path, fmt: str) -> Path:
    buffer = io.BytesIO()
    Image.fromarray(RNG.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, fmt)
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return path


def _huge_png(path: Path) -> Path:
    """A valid PNG header claiming 100000 x 100000 pixels, with almost no data."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (struct.pack(">I", len(payload)) + kind + payload
                + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF))
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(b"\0" * 10)) + chunk(b"IEND", b""))
    return path


ERROR_CASES = {
    "zero-byte image": (lambda p: (p.write_bytes(b""), p)[1], "empty (0 bytes)"),
    "truncated PNG": (lambda p: _truncated(p, "PNG"), "truncated or corrupt"),
    "truncated JPEG": (lambda p: _truncated(p.with_suffix(".jpg"), "JPEG"),
                       "truncated or corrupt"),
    "text file named .png": (lambda p: (p.write_text("not an image"), p)[1],
                             "not a readable PNG/JPEG/BMP/TIFF"),
    "1x1 image": (lambda p: _png(p, np.zeros((1, 1, 3), np.uint8)), "only 1x1 pixels"),
    "huge header": (_huge_png, "huge size and was not decoded"),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_bad_image_file_is_named_with_a_fix(tmp_path: Path, case: str):
    build, expected = ERROR_CASES[case]
    path = build(tmp_path / "bad.png")
    with pytest.raises(DataError) as info:
        read_image(path)
    message = str(info.value)
    assert expected in message
    assert path.name in message and "Fix:" in message


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_bad_file_in_dataset_stops_or_is_listed_when_skipping(dataset: Path, case: str):
    build, expected = ERROR_CASES[case]
    path = build(dataset / "train" / "good" / "bad.png")
    with pytest.raises(DataError, match=expected.split(" (")[0]):
        load_dataset(dataset, image_size=16)
    ds = load_dataset(dataset, image_size=16, val_fraction=0.0, skip_unreadable=True)
    assert [p for p, _ in ds.skipped] == [path]
    assert len(ds.train_images) == 6


def test_huge_header_is_refused_without_allocating(tmp_path: Path):
    import tracemalloc

    path = _huge_png(tmp_path / "huge.png")
    tracemalloc.start()
    with pytest.raises(DataError):
        read_image(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 50_000_000


def test_16bit_png_is_scaled_to_8bit(tmp_path: Path):
    values = np.array([[0, 257 * 100], [65535, 257 * 200]], np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(np.kron(values, np.ones((8, 8), np.uint16))).save(path)
    image = read_image(path, "grayscale")
    assert image.dtype == np.uint8
    assert image[0, 0, 0] == 0 and image[0, 8, 0] == 100 and image[8, 0, 0] == 255


def test_rgba_palette_cmyk_and_gray_become_rgb(tmp_path: Path):
    rgb = RNG.integers(0, 255, (16, 16, 3), dtype=np.uint8)
    rgba = np.dstack([rgb, np.full((16, 16), 7, np.uint8)])
    _png(tmp_path / "rgba.png", rgba)
    assert (read_image(tmp_path / "rgba.png") == rgb).all()  # alpha dropped, colours kept
    Image.fromarray(rgb).convert("P").save(tmp_path / "palette.png")
    assert read_image(tmp_path / "palette.png").shape == (16, 16, 3)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg")
    cmyk = read_image(tmp_path / "cmyk.jpg")
    assert cmyk.shape == (16, 16, 3)
    assert np.abs(cmyk.astype(int) - rgb).mean() < 40
    _png(tmp_path / "gray.png", rgb[..., 0])
    assert (read_image(tmp_path / "gray.png")[..., 1] == rgb[..., 0]).all()


def test_mask_of_a_different_size_is_refused(dataset: Path):
    mask = dataset / "ground_truth" / "scratch" / "000_mask.png"
    _png(mask, np.zeros((20, 20), np.uint8))
    with pytest.raises(DataError, match="000_mask.png' is 20x20 but its image") as info:
        load_dataset(dataset, image_size=16)
    assert "regenerate the mask" in str(info.value)


def test_mask_with_noisy_values_is_binarised_at_127(tmp_path: Path):
    noisy = np.array([[0, 100, 127, 128], [200, 255, 3, 250]], np.uint8)
    _png(tmp_path / "m.png", np.kron(noisy, np.ones((4, 4), np.uint8)))
    mask = read_mask(tmp_path / "m.png")
    assert mask[::4, ::4].tolist() == [[False, False, False, True], [True, True, False, True]]


def test_resized_mask_keeps_a_defect_too_thin_for_half_a_pixel():
    mask = np.zeros((1000, 400), bool)
    mask[300:303, 50:350] = True       # a crack 3 px wide: 0.4 of a pixel at 128 px
    mask[600:900, 100:300] = True      # a blob that half-area averaging keeps as it is
    plain = cv2.resize(mask.astype(np.float32), (128, 128), interpolation=cv2.INTER_AREA) >= 0.5
    resized = resize_mask(mask, 128)
    assert not plain[:64].any()        # the crack vanishes from an area-fraction resize
    rows, columns = np.nonzero(resized[:64])
    assert set(rows) <= {38, 39} and len(set(rows)) >= 1
    assert columns.min() <= 17 and columns.max() >= 110   # along the crack's whole length
    assert np.array_equal(resized[64:], plain[64:])       # the blob unchanged
    assert np.array_equal(resize_mask(mask[600:], 128),
                          cv2.resize(mask[600:].astype(np.float32), (128, 128),
                                     interpolation=cv2.INTER_AREA) >= 0.5)


def test_defect_without_mask_is_an_error_or_image_level_only(dataset: Path):
    (dataset / "ground_truth" / "scratch" / "001_mask.png").unlink()
    with pytest.raises(DataError, match="have no mask") as info:
        scan_dataset(dataset)
    assert "001.png" in str(info.value) and "allow_missing_masks" in str(info.value)
    ds = load_dataset(dataset, image_size=16, allow_missing_masks=True)
    missing = [i for i, p in enumerate(ds.test_paths) if p.name == "001.png"
               and ds.test_types[i] == "scratch"]
    assert ds.test_has_mask[missing].tolist() == [False]
    assert ds.test_has_mask.sum() == len(ds.test_paths) - 1


def test_mask_without_image_is_refused(dataset: Path):
    _png(dataset / "ground_truth" / "scratch" / "007_mask.png", np.zeros((32, 32), np.uint8))
    with pytest.raises(DataError, match="007_mask.png' has no image"):
        scan_dataset(dataset)


def test_non_utf8_file_name_is_read_and_shown_escaped(dataset: Path):
    name = os.fsdecode(b"caf\xe9.png")
    _png(dataset / "train" / "good" / name, np.zeros((32, 32, 3), np.uint8))
    ds = load_dataset(dataset, image_size=16, val_fraction=0.0)
    assert len(ds.train_images) == 7
    (dataset / "train" / "good" / name).write_bytes(b"")
    with pytest.raises(DataError) as info:
        load_dataset(dataset, image_size=16)
    assert "caf\\xe9.png" in str(info.value)
    str(info.value).encode("utf-8")  # printable: no lone surrogates


def test_symlink_loop_is_named(dataset: Path):
    loop = dataset / "train" / "good" / "loop.png"
    os.symlink(loop, loop)
    with pytest.raises(DataError, match="loop.png") as info:
        scan_dataset(dataset)
    assert "Fix:" in str(info.value)


def test_empty_category_folder_is_refused(dataset: Path):
    (dataset / "test" / "crack").mkdir()
    with pytest.raises(DataError, match="crack' holds no images"):
        scan_dataset(dataset)


def test_missing_data_dir_and_train_folder(tmp_path: Path):
    with pytest.raises(DataError, match="does not exist") as info:
        scan_dataset(tmp_path / "nope")
    assert "make data" in str(info.value)
    (tmp_path / "cat" / "test").mkdir(parents=True)
    with pytest.raises(DataError, match="train/good"):
        scan_dataset(tmp_path / "cat")


def test_non_image_files_are_listed_not_silently_dropped(dataset: Path):
    (dataset / "train" / "good" / "notes.txt").write_text("hello")
    (dataset / "test" / "README").write_text("hello")
    index = scan_dataset(dataset)
    assert {p.name for p in index.ignored} == {"notes.txt", "README"}
    assert dataset_summary(index)["ignored"]


def test_bad_color_mode_and_image_size(dataset: Path):
    with pytest.raises(ParameterError, match="color_mode"):
        load_dataset(dataset, color_mode="cmyk")
    with pytest.raises(ParameterError, match="image_size"):
        load_dataset(dataset, image_size=2)


def test_color_mode_auto_detects_gray_files_and_gray_content(tmp_path: Path):
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (16, 16), dtype=np.uint8)
    Image.fromarray(gray).save(tmp_path / "gray.png")
    # A grayscale photograph saved as RGB, channels off by one level (JPEG-like rounding).
    rgb_gray = np.stack([gray, gray, np.clip(gray.astype(int) + 1, 0, 255)], -1).astype(np.uint8)
    Image.fromarray(rgb_gray).save(tmp_path / "rgb_gray.png")
    colour = rgb_gray.copy()
    colour[4, 4] = (200, 40, 40)
    Image.fromarray(colour).save(tmp_path / "colour.png")
    assert detect_color_mode([tmp_path / "gray.png", tmp_path / "rgb_gray.png"]) == "grayscale"
    assert detect_color_mode([tmp_path / "gray.png", tmp_path / "colour.png"]) == "rgb"
    assert detect_color_mode([tmp_path / "colour.png"], "grayscale") == "grayscale"
    with pytest.raises(ParameterError, match="color_mode"):
        detect_color_mode([tmp_path / "gray.png"], "grey")
    with pytest.raises(DataError, match="train/good"):
        detect_color_mode([])


def test_load_dataset_reports_the_detected_color_mode(dataset: Path):
    ds = load_dataset(dataset, image_size=16, color_mode="auto")
    assert ds.color_mode == "rgb" and ds.train_images.shape[-1] == 3


def test_summary_says_when_resizing_to_a_square_squeezes_the_images(tmp_path: Path):
    """Near-square images get no note; images 2.5 times as tall as wide get one that names
    the factor and the fix, and the run's summary repeats it."""
    square = dataset_summary(scan_dataset(make_dataset(tmp_path / "square")))
    assert square["image_sizes"]["elongation"]["median"] == 1.0 and square["notes"] == []
    tall = make_dataset(tmp_path / "tall")
    for path in sorted(tall.rglob("*.png")):
        image = np.asarray(Image.open(path))
        Image.fromarray(np.concatenate([image] * 5)[:80, :32]).save(path)  # 80 x 32 px
    summary = dataset_summary(scan_dataset(tall))
    assert summary["image_sizes"]["elongation"]["median"] == 2.5
    [note] = summary["notes"]
    assert "2.5" in note and "resized to a square" in note and "near-square parts" in note
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "data_summary.json").write_text(json.dumps(summary))
    assert f"note: {note}" in runs.summary(run_dir)
