"""cut-parts: elongated images and their masks cut into near-square parts, written in the
MVTec AD layout, and each source image's score from its parts."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from anomaly_utils.data.layout import scan_dataset
from anomaly_utils.data.loading import load_dataset
from anomaly_utils.data.parts import cut_into_parts, part_sources, parts_of, read_parts_table
from anomaly_utils.errors import DataError, LabError, ParameterError
from anomaly_utils.evaluation.report import whole_images, whole_images_text
from anomaly_utils.pipeline import runs
from anomaly_utils.pipeline.cli import main

HEIGHT, WIDTH = 40, 122  # about 3:1, not a multiple of 3


def _write(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), array)


def _strips(root: Path) -> Path:
    """Two training strips, one good test strip and one cracked one whose crack lies in the
    middle third; gray, each column's value its index (so parts can be told apart)."""
    image = np.tile(np.arange(WIDTH, dtype=np.uint8), (HEIGHT, 1))
    for name in ("train/good/000.png", "train/good/001.png", "test/good/000.png",
                 "test/crack/000.png"):
        _write(root / name, image)
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    mask[20, 45:75] = 255  # a one-pixel crack in the middle third only
    _write(root / "ground_truth/crack/000_mask.png", mask)
    return root


def test_parts_split_the_long_side_into_near_square_spans():
    parts = parts_of(HEIGHT, WIDTH)
    assert [(p.axis, p.start, p.stop) for p in parts] == [(1, 0, 41), (1, 41, 81), (1, 81, 122)]
    assert [p.axis for p in parts_of(300, 100)] == [0, 0, 0]
    assert len(parts_of(100, 120)) == 1  # near-square: the whole image
    assert len(parts_of(100, 120, parts=2)) == 2


def test_cut_parts_writes_masked_parts_to_their_defect_and_the_rest_to_good(tmp_path: Path):
    out = cut_into_parts(_strips(tmp_path / "strips"), tmp_path / "parts")
    index = scan_dataset(out)
    assert len(index.train) == 6
    defects = [s for s in index.test if s.label == 1]
    assert [s.path.name for s in defects] == ["000_part2of3.png"]
    mask = cv2.imread(str(defects[0].mask_path), cv2.IMREAD_GRAYSCALE)
    assert mask.shape == (HEIGHT, 40) and np.flatnonzero(mask[20]).tolist() == list(range(4, 34))
    goods = sorted(s.path.name for s in index.test if s.label == 0)
    assert goods == ["000_part1of3.png", "000_part2of3.png", "000_part3of3.png",
                     "crack_000_part1of3.png", "crack_000_part3of3.png"]
    third = cv2.imread(str(out / "test/good/crack_000_part3of3.png"), cv2.IMREAD_UNCHANGED)
    assert third.ndim == 2 and third[0, 0] == 81 and third.shape == (HEIGHT, 41)
    table = read_parts_table(out)
    assert table["test/crack/000_part2of3.png"] == "test/crack/000.png"
    assert "unmarked defect parts to test/good: 2" in (out / "README.md").read_text()
    assert "not images" not in (out / "README.md").read_text()
    (tmp_path / "strips/train/good/notes.txt").write_text("lighting log")
    again = cut_into_parts(tmp_path / "strips", tmp_path / "parts", overwrite=True)
    assert "files that are not images, not copied: 1" in (again / "README.md").read_text()
    ds = load_dataset(out, image_size=16, val_fraction=0.0)
    assert ds.test_masks[ds.test_labels == 1].any()


def test_each_source_image_scores_its_highest_part_and_is_defective_by_any(tmp_path: Path):
    out = cut_into_parts(_strips(tmp_path / "strips"), tmp_path / "parts")
    paths = ["test/good/000_part1of3.png", "test/crack/000_part2of3.png",
             "test/good/crack_000_part1of3.png", "test/good/000_part2of3.png"]
    sources = part_sources(out, paths)
    assert sources == ["test/good/000.png", "test/crack/000.png", "test/crack/000.png",
                       "test/good/000.png"]
    assert part_sources(tmp_path / "strips", paths) is None  # not parts: no PARTS.tsv
    assert part_sources(None, paths) is None
    with pytest.raises(DataError, match="not in .*PARTS.tsv"):
        part_sources(out, ["test/good/other.png"])
    # the crack's own part scores low, its unmarked neighbour high: the source takes the high
    whole = whole_images(np.array([0, 1, 0, 0]), np.array([0.1, 0.2, 0.9, 0.4]), sources, 0.5)
    assert (whole["images"], whole["defective"], whole["image_auroc"]) == (2, 1, 1.0)
    assert (whole["at_threshold"]["tp"], whole["at_threshold"]["fp"]) == (1, 0)
    whole = whole_images(np.array([0, 1, 0, 0]), np.array([0.1, 0.2, 0.1, 0.4]), sources, 0.3)
    assert whole["image_auroc"] == 0.0 and whole["at_threshold"]["fp"] == 1
    text = whole_images_text({"floor": {"whole_images": whole}, "ae1": {}})
    assert text.startswith("floor: 2 whole images (1 defective), image AUROC 0.000")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.json").write_text(json.dumps({"floor": {"whole_images": whole}}))
    assert "    floor: 2 whole images" in runs.summary(run_dir)


def test_cut_parts_refuses_defects_without_masks_and_foreign_folders(tmp_path: Path):
    strips = _strips(tmp_path / "strips")
    (strips / "ground_truth/crack/000_mask.png").unlink()
    with pytest.raises(DataError, match="which part holds the defect is unknown") as info:
        cut_into_parts(strips, tmp_path / "parts")
    assert "test/crack/000.png" in str(info.value) and not (tmp_path / "parts").exists()
    _strips(strips)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine/notes.txt").write_text("keep")
    with pytest.raises(LabError, match="not empty"):
        cut_into_parts(strips, tmp_path / "mine", overwrite=False)
    with pytest.raises(LabError, match="was not written by cut-parts"):
        cut_into_parts(strips, tmp_path / "mine", overwrite=True)
    with pytest.raises(ParameterError, match="parts must be"):
        cut_into_parts(strips, tmp_path / "parts", parts=0)
    assert not list(tmp_path.glob("*.partial-*"))


def test_cut_parts_command(tmp_path: Path, capsys):
    strips = _strips(tmp_path / "strips")
    assert main(["cut-parts", str(strips), str(tmp_path / "parts"), "--parts", "2"]) == 0
    assert "PARTS.tsv" in capsys.readouterr().out
    assert len(scan_dataset(tmp_path / "parts").train) == 4
    assert main(["cut-parts", str(strips), str(tmp_path / "parts"), "--overwrite"]) == 0
    assert len(scan_dataset(tmp_path / "parts").train) == 6
    assert main(["cut-parts", str(strips), str(tmp_path / "other"), "--parts", "two"]) == 2
    assert "--parts must be auto or a number >= 1" in capsys.readouterr().err


def test_a_defect_whose_mask_marks_nothing_keeps_every_part_defective(tmp_path: Path):
    strips = _strips(tmp_path / "strips")
    _write(strips / "ground_truth/crack/000_mask.png", np.zeros((HEIGHT, WIDTH), np.uint8))
    out = cut_into_parts(strips, tmp_path / "parts")
    defects = sorted(s.path.name for s in scan_dataset(out).test if s.label == 1)
    assert defects == ["000_part1of3.png", "000_part2of3.png", "000_part3of3.png"]
    assert "mask marks nothing: every part kept defective: 1" in (out / "README.md").read_text()


def test_new_images_are_cut_and_scored_as_the_run_was_trained(tmp_path: Path):
    from anomaly_utils.data.layout import dataset_summary
    from anomaly_utils.pipeline.score_images import trained_on_parts
    from anomaly_utils.scoring.serving import ServedCandidate, score_in_parts
    from anomaly_utils.scoring.stored import ScoreResult

    out = cut_into_parts(_strips(tmp_path / "strips"), tmp_path / "parts", parts=2)
    summary = dataset_summary(scan_dataset(out))
    assert summary["parts"] == 2 and "parts" not in dataset_summary(scan_dataset(tmp_path / "strips"))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    assert trained_on_parts(run_dir) is None
    (run_dir / "data_summary.json").write_text(json.dumps(summary))
    assert trained_on_parts(run_dir) == 2

    def mean_score(images):  # each part scored by its mean level, its map that level
        levels = np.array([float(image.mean()) for image in images])
        return ScoreResult(scores=levels, maps=np.ones((len(images), 4, 4)) * levels[:, None, None],
                           recons=None)

    served = ServedCandidate("floor", "grayscale", mean_score)
    image = np.tile(np.arange(WIDTH, dtype=np.uint8), (HEIGHT, 1))[..., None]
    scores, maps = score_in_parts(served, [image, image.transpose(1, 0, 2)], "auto")
    assert scores.tolist() == [image[:, 81:].mean()] * 2  # the last third's level is highest
    assert maps[0].shape == (HEIGHT, WIDTH) and maps[1].shape == (WIDTH, HEIGHT)
    assert maps[0][0, 0] == image[:, :41].mean() and maps[0][0, -1] == image[:, 81:].mean()
    assert maps[1][0, 0] == image[:, :41].mean() and maps[1][-1, 0] == image[:, 81:].mean()


def test_score_command_cuts_each_image_as_the_runs_parts_were_cut(tmp_path: Path):
    from anomaly_utils.data.images import read_image
    from anomaly_utils.data.layout import dataset_summary
    from anomaly_utils.pipeline.score_images import score_paths
    from anomaly_utils.scoring.serving import load_candidate
    from anomaly_utils.scoring.statistics_floor import StatisticsFloor
    from anomaly_utils.scoring.stored import score_splits

    strips = _strips(tmp_path / "strips")
    rng = np.random.default_rng(0)
    for path in sorted(strips.rglob("test/*/*.png")) + sorted(strips.rglob("train/*/*.png")):
        _write(path, rng.integers(90, 110, (HEIGHT, WIDTH), dtype=np.uint8))
    out = cut_into_parts(strips, tmp_path / "parts")
    ds = load_dataset(out, image_size=32, color_mode="grayscale", val_fraction=0.25, seed=0,
                      mask_size=32)
    run = tmp_path / "run"
    floor = StatisticsFloor(variant="global", eval_size=32).fit(ds.train_images)
    floor.save(run / "floor")
    score_splits(floor, ds, run, 0, name="floor", eval_size=32)
    (run / "thresholds.json").write_text(json.dumps(
        {"floor": {"image_threshold": 0.0, "strategy": "percentile"}}))
    (run / "data_summary.json").write_text(json.dumps(dataset_summary(scan_dataset(out))))
    lines = []
    [result] = score_paths(run, "floor", [strips / "test/crack/000.png"], log=lines.append)
    assert any("trained on parts" in line for line in lines)
    image = read_image(strips / "test/crack/000.png", "grayscale")
    crops = [image[:, :41], image[:, 41:81], image[:, 81:]]
    expected = load_candidate(run, "floor").score(crops).scores.max()
    assert result["score"] == pytest.approx(float(expected), rel=1e-6)
    whole = load_candidate(run, "floor").score([image]).scores[0]
    assert result["score"] != pytest.approx(float(whole), rel=1e-6)  # not the squeezed image


def test_a_run_on_elongated_masked_images_works_on_their_parts(tmp_path: Path, monkeypatch,
                                                               capsys):
    from anomaly_utils.pipeline import cli
    from anomaly_utils.pipeline.elongated import data_for_run, run_parts_option

    strips = _strips(tmp_path / "strips")
    folder, line = data_for_run(strips, "auto", tmp_path / "runs", "r1")
    assert folder == tmp_path / "runs" / "r1-parts" and "near-square parts" in line
    assert len(scan_dataset(folder).train) == 6
    assert data_for_run(strips, "none", tmp_path / "runs", "r2") == (None, None)
    folder, _ = data_for_run(strips, 2, tmp_path / "runs", "r3")
    assert len(scan_dataset(folder).train) == 4
    square = tmp_path / "square"
    for path in strips.rglob("*.png"):
        target = square / path.relative_to(strips)
        _write(target, cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)[:, :HEIGHT])
    assert data_for_run(square, "auto", tmp_path / "runs", "r4") == (None, None)
    assert data_for_run(tmp_path / "absent", "auto", tmp_path / "runs", "r6") == (None, None)
    (strips / "ground_truth/crack/000_mask.png").unlink()
    folder, line = data_for_run(strips, "auto", tmp_path / "runs", "r5")
    assert folder is None and "1 defect images have no mask" in line
    assert not (tmp_path / "runs" / "r5-parts").exists()
    with pytest.raises(ParameterError, match="--parts must be auto, none or a number"):
        run_parts_option("0")
    assert run_parts_option("3") == 3 and run_parts_option("none") == "none"

    _strips(strips)
    seen = {}
    monkeypatch.setattr(cli, "run_pipeline", lambda overrides, **kw: seen.update(
        overrides=overrides, **kw) or tmp_path)
    monkeypatch.setattr(cli, "summary", lambda run_dir: "")
    assert cli.main(["run", "--data-dir", str(strips), "--preset", "defaults", "--run-id", "x",
                     "--runs-dir", str(tmp_path / "runs")]) == 0
    assert seen["overrides"]["data_dir"] == str(tmp_path / "runs" / "x-parts")
    assert seen["run_id"] == "x" and "parts: each image" in capsys.readouterr().out
    assert cli.main(["run", "--data-dir", str(strips), "--preset", "defaults", "--parts", "none",
                     "--runs-dir", str(tmp_path / "runs")]) == 0
    assert seen["overrides"]["data_dir"] == str(strips)


def test_a_sweep_on_elongated_masked_images_works_on_their_parts(tmp_path: Path, monkeypatch):
    from anomaly_utils.pipeline import cli

    strips = _strips(tmp_path / "strips")
    seen = {}
    monkeypatch.setattr(cli, "run_sweep", lambda grid, fixed, **kw: seen.update(
        fixed=fixed, **kw) or tmp_path)
    assert cli.main(["sweep", "-p", "epochs", "1", "2", "--data-dir", str(strips),
                     "--sweep-id", "s", "--runs-dir", str(tmp_path / "runs")]) == 0
    assert seen["fixed"]["data_dir"] == str((tmp_path / "runs" / "s-parts").resolve())
    assert seen["sweep_id"] == "s"
    assert cli.main(["sweep", "-p", "epochs", "1", "--data-dir", str(strips), "--parts", "none",
                     "--runs-dir", str(tmp_path / "runs")]) == 0
    assert seen["fixed"]["data_dir"] == str(strips)
    # Without --sweep-id, two sweeps started in the same second claim their own parts.
    from anomaly_utils.pipeline import run_ids
    monkeypatch.setattr(run_ids, "new_run_id", lambda prefix="": f"{prefix}20261207-120000")
    for expected in ("sweep-20261207-120000", "sweep-20261207-120000-2"):
        assert cli.main(["sweep", "-p", "epochs", "1", "--data-dir", str(strips),
                         "--runs-dir", str(tmp_path / "runs")]) == 0
        assert seen["sweep_id"] == expected
        assert seen["fixed"]["data_dir"] == str((tmp_path / "runs" / f"{expected}-parts").resolve())


def test_labelled_validation_defects_keep_their_marked_parts_and_count_the_rest(tmp_path: Path):
    strips = _strips(tmp_path / "strips")
    image = cv2.imread(str(strips / "test/crack/000.png"), cv2.IMREAD_GRAYSCALE)
    _write(strips / "val/crack/050.png", image)
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    mask[5:9, 2:10] = 255  # in the first third only
    _write(strips / "ground_truth/crack/050_mask.png", mask)
    out = cut_into_parts(strips, tmp_path / "parts")
    index = scan_dataset(out)
    assert [s.path.name for s in index.val_defects] == ["050_part1of3.png"]
    assert "left out: 2" in (out / "README.md").read_text()


def test_a_mask_of_another_size_than_its_image_is_refused_naming_both(tmp_path: Path):
    strips = _strips(tmp_path / "strips")
    _write(strips / "ground_truth/crack/000_mask.png", np.zeros((HEIGHT, WIDTH - 2), np.uint8))
    with pytest.raises(DataError, match="000_mask.png' is not the size of its image") as info:
        cut_into_parts(strips, tmp_path / "parts")
    assert "test/crack/000.png" in str(info.value)
    assert not (tmp_path / "parts").exists() and not list(tmp_path.glob("*.partial-*"))


def test_colour_images_keep_their_colours_in_their_parts(tmp_path: Path):
    from anomaly_utils.data.images import read_image

    strips = _strips(tmp_path / "strips")
    colour = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    colour[:, :41] = (0, 0, 200)  # red in OpenCV's BGR order
    colour[:, 81:] = (200, 0, 0)  # blue
    for path in strips.rglob("*/good/*.png"):
        _write(path, colour)
    out = cut_into_parts(strips, tmp_path / "parts")
    first = read_image(out / "train/good/000_part1of3.png", "rgb")
    last = read_image(out / "train/good/000_part3of3.png", "rgb")
    assert first.shape == (HEIGHT, 41, 3) and tuple(first[0, 0]) == (200, 0, 0)
    assert tuple(last[0, 0]) == (0, 0, 200)


def test_runs_started_in_the_same_second_keep_their_own_parts_and_run_folders(
        tmp_path: Path, monkeypatch):
    """Without --run-id a run on parts claims its timestamp id as it makes the parts folder:
    a second run on parts in the same second takes ``-2``, and a run on whole images
    started then passes over the claimed id instead of taking the parts run's folder."""
    from anomaly_utils.pipeline import run_ids, runs
    from anomaly_utils.pipeline.elongated import data_for_run

    monkeypatch.setattr(run_ids, "new_run_id", lambda prefix="": f"{prefix}20261207-120000")
    strips = _strips(tmp_path / "strips")
    first, _ = data_for_run(strips, "auto", tmp_path / "runs", None)
    second, _ = data_for_run(strips, "auto", tmp_path / "runs", None)
    assert (first.name, second.name) == ("20261207-120000-parts", "20261207-120000-2-parts")
    assert len(scan_dataset(first).train) == len(scan_dataset(second).train) == 6
    whole = runs._create_timestamped_run({"data_dir": str(strips)}, tmp_path / "runs")
    assert whole.name == "20261207-120000-3"
    (strips / "ground_truth/crack/000_mask.png").unlink()
    with pytest.raises(DataError):
        data_for_run(strips, 2, tmp_path / "runs", None)  # --parts 2 needs every mask
    assert not (tmp_path / "runs" / "20261207-120000-4-parts").exists()  # the claim undone


def test_a_run_on_parts_under_an_existing_id_leaves_that_runs_parts_alone(tmp_path: Path):
    from anomaly_utils.pipeline.elongated import data_for_run
    from anomaly_utils.pipeline.run_ids import RunExistsError

    strips = _strips(tmp_path / "strips")
    folder, _ = data_for_run(strips, "auto", tmp_path / "runs", "r1")
    (tmp_path / "runs" / "r1").mkdir()  # the run made on those parts
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("*")}
    with pytest.raises(RunExistsError, match="--resume r1"):
        data_for_run(strips, "auto", tmp_path / "runs", "r1")
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*")} == before
