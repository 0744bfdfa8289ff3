"""Tests for anomaly_utils.evaluation.report: thresholds from validation data only, the report
of each model, and the files notebook 04 writes."""

from __future__ import annotations

import numpy as np
import pytest

from anomaly_utils.artifacts import read_json
from anomaly_utils.errors import ParameterError
from anomaly_utils.evaluation import metrics, thresholds
from anomaly_utils.evaluation.report import (
    HEADLINE,
    candidate_thresholds,
    headline,
    model_report,
    strategy_settings,
    write_report,
)

SETTINGS = strategy_settings(percentile=95.0, k_std=2.0, target_fpr=0.1)


def _scores(seed: int = 0, with_masks: bool = True) -> dict[str, dict]:
    rng = np.random.default_rng(seed)
    types = np.array(["good"] * 6 + ["cut"] * 3 + ["hole"] * 3)
    labels = (types != "good").astype(np.int64)
    masks = np.zeros((12, 8, 8), bool)
    masks[6:, 2:5, 2:5] = True
    maps = rng.random((12, 8, 8)).astype(np.float32) + 2 * masks
    test = {"labels": labels, "scores": maps.max(axis=(1, 2)), "maps": maps, "masks": masks,
            "has_mask": np.full(12, with_masks) | (labels == 0), "types": types}
    val = {"scores": rng.random(10).astype(np.float32), "maps": rng.random((10, 8, 8))}
    return {"val": val, "test": test,
            "val_pseudo": {"labels": np.array([0, 0, 1, 1]), "scores": np.array([.1, .2, .8, .9])}}


def test_candidates_come_from_the_validation_scores_alone():
    scores = _scores()
    candidates = candidate_thresholds(scores["val"]["scores"], SETTINGS)
    assert candidates["percentile"] == pytest.approx(np.percentile(scores["val"]["scores"], 95))
    assert candidates["max"] == pytest.approx(scores["val"]["scores"].max())
    assert "f1_optimal" not in candidates
    labelled = candidate_thresholds(scores["val"]["scores"], SETTINGS, scores["val_pseudo"])
    assert labelled["f1_optimal"] == pytest.approx(
        thresholds.f1_optimal_threshold(scores["val_pseudo"]["labels"],
                                        scores["val_pseudo"]["scores"]))
    # Changing the test split changes no candidate.
    other = _scores(seed=1)
    other["val"] = scores["val"]
    assert candidate_thresholds(other["val"]["scores"], SETTINGS) == candidates


def test_model_report_uses_the_chosen_strategy_and_measures_the_test_split():
    scores = _scores()
    candidates = candidate_thresholds(scores["val"]["scores"], SETTINGS)
    chosen, report = model_report(scores, candidates, "mean_std", SETTINGS, pixel_percentile=99,
                                  min_defect_area=4, n_boot=50, seed=0)
    assert chosen == {"image_threshold": candidates["mean_std"],
                      "pixel_threshold": thresholds.pixel_threshold(scores["val"]["maps"], q=99),
                      "strategy": "mean_std", "settings": {"k": 2.0}, "min_defect_area": 4}
    test = scores["test"]
    assert report["image_auroc"] == metrics.image_auroc(test["labels"], test["scores"])
    assert report["pixel_auroc"] == metrics.pixel_auroc(test["masks"], test["maps"])
    assert report["at_threshold"] == metrics.threshold_metrics(test["labels"], test["scores"],
                                                               candidates["mean_std"])
    assert set(report["per_defect"]) == {"cut", "hole"}


def test_defect_images_without_masks_count_for_image_metrics_only():
    scores = _scores(with_masks=False)
    candidates = candidate_thresholds(scores["val"]["scores"], SETTINGS)
    _, report = model_report(scores, candidates, "percentile", SETTINGS, pixel_percentile=99,
                             min_defect_area=0, n_boot=20, seed=0)
    test = scores["test"]
    assert report["image_auroc"] == metrics.image_auroc(test["labels"], test["scores"])
    assert report["pixel_auroc"] is None  # only normal images have masks: one class
    assert report["per_defect"]["cut"]["pixel_auroc"] is None


def test_f1_optimal_without_labelled_validation_is_refused_with_the_fix():
    scores = _scores()
    candidates = candidate_thresholds(scores["val"]["scores"], SETTINGS)
    with pytest.raises(ParameterError, match="labelled validation"):
        model_report(scores, candidates, "f1_optimal", SETTINGS, pixel_percentile=99,
                     min_defect_area=0, n_boot=20, seed=0)
    with pytest.raises(ParameterError, match="strategy must be one of"):
        model_report(scores, candidates, "median", SETTINGS, pixel_percentile=99,
                     min_defect_area=0, n_boot=20, seed=0)


def test_report_files_and_headline(tmp_path):
    scores = _scores()
    candidates = candidate_thresholds(scores["val"]["scores"], SETTINGS)
    chosen, report = model_report(scores, candidates, "percentile", SETTINGS,
                                  pixel_percentile=99, min_defect_area=0, n_boot=20, seed=0)
    write_report(tmp_path, {"ae2": chosen}, {"ae2": report}, fingerprint="abc",
                 data_summary={"counts": {"train": 3}, "root": "/data"}, params={"x": 1})
    assert read_json(tmp_path / "thresholds.json") == {"ae2": chosen}
    written = read_json(tmp_path / "metrics.json")
    assert written["dataset"] == {"fingerprint": "abc", "counts": {"train": 3}, "root": "/data"}
    assert written["params"] == {"x": 1}
    assert written["ae2"]["image_auroc"] == pytest.approx(report["image_auroc"])
    row = headline({"ae2": report})["ae2"]
    assert list(row) == list(HEADLINE)
    assert row["AUROC 95% CI low"] == report["image_auroc_ci"][0]
    assert row["F1 at threshold"] == report["at_threshold"]["f1"]


def _write_run(run_dir, fingerprints):
    from anomaly_utils.scoring.stored import ScoreResult, save_scores

    for name, fingerprint in fingerprints.items():
        (run_dir / name).mkdir(parents=True)
        for split in ("test", "val", "val_pseudo"):
            result = ScoreResult(scores=np.zeros(2, np.float32),
                                 maps=np.zeros((2, 4, 4), np.float32),
                                 recons=np.zeros((2, 4, 4, 1), np.float32))
            save_scores(run_dir / name / f"scores_{split}.npz", result, labels=[0, 1],
                        types=["good", "cut"], masks=None, has_mask=None,
                        paths=["test/good/0.png", "test/cut/0.png"], fingerprint=fingerprint,
                        model=name)


def test_a_runs_scores_load_together_and_must_share_one_dataset(tmp_path):
    from anomaly_utils.errors import ArtifactError
    from anomaly_utils.scoring.stored import CANDIDATES, load_run_scores

    _write_run(tmp_path / "same", dict.fromkeys(CANDIDATES, "abc"))
    scores = load_run_scores(tmp_path / "same")
    assert set(scores) == {"floor", "ae1", "ae2", "blend"}
    assert set(scores["ae2"]) == {"test", "val", "val_pseudo"}
    _write_run(tmp_path / "mixed", {**dict.fromkeys(CANDIDATES, "abc"), "ae2": "xyz"})
    with pytest.raises(ArtifactError, match="different datasets"):
        load_run_scores(tmp_path / "mixed")


def test_the_gallery_names_a_vanished_test_image(tmp_path):
    from anomaly_utils.errors import DataError
    from anomaly_utils.visualization.gallery import stored_test_images

    (tmp_path / "test" / "good").mkdir(parents=True)
    (tmp_path / "test" / "good" / "0.png").write_bytes(b"")
    assert stored_test_images(tmp_path, np.array(["test/good/0.png"])) == [
        tmp_path / "test" / "good" / "0.png"]
    with pytest.raises(DataError, match=r"1 test image\(s\).*test/cut/0.png"):
        stored_test_images(tmp_path, np.array(["test/good/0.png", "test/cut/0.png"]))


def test_the_gallery_shows_the_stored_reconstructions_without_a_model(tmp_path):
    import cv2

    from anomaly_utils.errors import ArtifactError
    from anomaly_utils.scoring.stored import ScoreResult, load_scores, save_scores
    from anomaly_utils.visualization.gallery import rows_for

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    paths = []
    for i, image in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        cv2.imwrite(str(paths[-1]), image[..., ::-1])  # stored as BGR, read back as RGB
    recons = rng.random((2, 8, 8, 3), dtype=np.float32)
    result = ScoreResult(scores=np.array([0.1, 0.9], np.float32),
                         maps=rng.random((2, 4, 4), dtype=np.float32), recons=recons)
    for keep in (True, False):
        save_scores(tmp_path / f"{keep}.npz", result, labels=[0, 1], types=["good", "cut"],
                    masks=None, has_mask=None, paths=[p.name for p in paths],
                    fingerprint="f", model="ae2", keep_recons=keep)
    test = load_scores(tmp_path / "True.npz", with_recons=True)
    assert test["recons"].dtype == np.uint8 and test["recons"].shape == (2, 8, 8, 3)
    rows = rows_for([1, 0], test, paths, threshold=0.5, pixel_threshold=0.5, min_area=1)
    assert [r["verdict"] for r in rows] == ["TP", "TN"]
    np.testing.assert_array_equal(rows[0]["image"], images[1])
    np.testing.assert_allclose(rows[0]["recon"], recons[1], atol=0.5 / 255 + 1e-6)
    # Notebook 05 asks for them when it loads the file, so the error names the file.
    with pytest.raises(ArtifactError, match=r"False\.npz' lacks \['recons'\]") as info:
        load_scores(tmp_path / "False.npz", with_recons=True)
    assert "rerun the training notebook" in info.value.fix


def test_the_gallery_shows_a_candidate_without_reconstructions(tmp_path):
    import cv2
    import matplotlib

    matplotlib.use("Agg")
    from anomaly_utils.scoring.stored import ScoreResult, load_scores, save_scores
    from anomaly_utils.visualization.gallery import rows_for
    from anomaly_utils.visualization.plots import gallery_rows

    rng = np.random.default_rng(1)
    gray = rng.integers(0, 256, (2, 16, 16), dtype=np.uint8)
    paths = [tmp_path / f"{i}.png" for i in range(2)]
    for path, image in zip(paths, gray, strict=True):
        cv2.imwrite(str(path), image)
    result = ScoreResult(scores=np.array([0.2, 0.7], np.float32),
                         maps=rng.random((2, 8, 8), dtype=np.float32), recons=None)
    save_scores(tmp_path / "floor.npz", result, labels=[0, 1], types=["good", "cut"],
                masks=None, has_mask=None, paths=[p.name for p in paths], fingerprint="f",
                model="floor")
    rows = rows_for([1, 0], load_scores(tmp_path / "floor.npz"), paths, threshold=0.5,
                    pixel_threshold=0.5, min_area=1)
    assert [r["recon"] for r in rows] == [None, None]
    assert rows[0]["image"].shape == (8, 8, 1)  # at the maps' side, gray as detected
    fig = gallery_rows(rows)
    assert len(fig.axes) == 2 * 3  # image, heatmap, score: no reconstruction column


def _page_rows(n: int, rng: np.random.Generator) -> list[dict]:
    """Gallery rows with every column: image, reconstruction, error map, heatmap, score."""
    rows = []
    for i in range(n):
        mask = np.zeros((32, 32), bool)
        mask[8:16, 8:20] = True
        rows.append({"image": rng.random((32, 32, 3), dtype=np.float32),
                     "recon": rng.random((32, 32, 3), dtype=np.float32),
                     "error_map": rng.random((32, 32), dtype=np.float32),
                     "map": rng.random((32, 32), dtype=np.float32), "mask": mask,
                     "pred": mask, "score": 0.5 + i, "threshold": 1.0,
                     "verdict": "FN" if i % 2 else "TP",
                     "title": f"a fairly long title · cut #{100 + i}"})
    return rows


@pytest.mark.parametrize("n", [1, 12])
def test_a_gallery_page_lays_out_every_text_inside_the_page_without_overlaps(n):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from anomaly_utils.visualization.plots import gallery_rows

    fig = gallery_rows(_page_rows(n, np.random.default_rng(0)))
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    page = fig.bbox
    boxes = []
    for ax in fig.axes:
        low, high = ax.get_xlim()
        texts = [ax.title] + [t for t in ax.get_xticklabels()  # those drawn: inside the limits
                              if ax.xaxis.get_visible() and t.get_text()
                              and low <= t.get_position()[0] <= high]
        for text in texts:
            box = text.get_window_extent(renderer)
            if box.width == 0:
                continue
            assert page.x0 - 0.5 <= box.x0 and box.x1 <= page.x1 + 0.5, text.get_text()
            assert page.y0 - 0.5 <= box.y0 and box.y1 <= page.y1 + 0.5, text.get_text()
            boxes.append((text.get_text(), box))
    assert len(boxes) >= 5 * n  # five titles per row, and the score axis' labels
    for i, (name, box) in enumerate(boxes):
        for other, box2 in boxes[i + 1:]:
            assert not box.overlaps(box2), (name, other)
    plt.close(fig)


def test_a_gallery_page_is_saved_whole_as_png(tmp_path):
    import cv2
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from anomaly_utils.visualization.plots import gallery_rows, save_page

    fig = gallery_rows(_page_rows(3, np.random.default_rng(1)))
    save_page(fig, tmp_path / "page.png", dpi=50)
    saved = cv2.imread(str(tmp_path / "page.png"))
    width, height = fig.get_size_inches() * 50
    assert saved.shape == (round(height), round(width), 3)  # untrimmed: the page as laid out
    assert saved.std() > 0 and [p.name for p in tmp_path.iterdir()] == ["page.png"]
    plt.close(fig)


def test_pages_saved_in_two_processes_are_the_bytes_of_pages_saved_here(tmp_path):
    """notebook 05 saves its error pages in separate processes: the same files, every page."""
    from anomaly_utils.visualization.pages import save_pages

    rng = np.random.default_rng(2)
    pages = [(_page_rows(n, rng), name) for n, name in ((2, "a.png"), (1, "b.png"),
                                                         (3, "c.png"), (1, "d.png"),
                                                         (2, "e.png"))]
    here, there = tmp_path / "here", tmp_path / "there"
    here.mkdir()
    there.mkdir()
    assert save_pages([(rows, here / name) for rows, name in pages]) == 5
    assert save_pages(((rows, there / name) for rows, name in pages), workers=2) == 5
    assert sorted(p.name for p in there.iterdir()) == ["a.png", "b.png", "c.png", "d.png",
                                                       "e.png"]
    for _, name in pages:
        assert (there / name).read_bytes() == (here / name).read_bytes(), name


def test_a_page_that_fails_in_a_worker_fails_the_caller(tmp_path):
    from anomaly_utils.visualization.pages import save_pages

    broken = _page_rows(1, np.random.default_rng(3))
    del broken[0]["verdict"]
    good = _page_rows(1, np.random.default_rng(4))
    with pytest.raises(KeyError, match="verdict"):
        save_pages([(good, tmp_path / "good.png"), (broken, tmp_path / "broken.png")],
                   workers=2)
    assert not (tmp_path / "broken.png").exists()  # nothing half-written


def test_pages_are_saved_here_where_no_process_pool_can_be_made(tmp_path, monkeypatch, capsys):
    from anomaly_utils.visualization import pages as page_module

    def no_pool(*args, **kwargs):
        raise OSError("[Errno 38] Function not implemented")  # sem_open without /dev/shm

    monkeypatch.setattr(page_module, "ProcessPoolExecutor", no_pool)
    rows = _page_rows(1, np.random.default_rng(5))
    assert page_module.save_pages([(rows, tmp_path / "a.png"), (rows, tmp_path / "b.png")],
                                  workers=2) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png"]
    assert "no process pool here" in capsys.readouterr().out


def test_model_report_adds_the_source_images_only_for_parts():
    scores = _scores()
    candidates = candidate_thresholds(scores["val"]["scores"], SETTINGS)
    _, plain = model_report(scores, candidates, "percentile", SETTINGS, pixel_percentile=99,
                            min_defect_area=1, n_boot=20, seed=0)
    assert "whole_images" not in plain
    sources = [f"image{i // 2}" for i in range(12)]  # pairs of parts: 3 good, 3 defective
    _, report = model_report(scores, candidates, "percentile", SETTINGS, pixel_percentile=99,
                             min_defect_area=1, n_boot=20, seed=0, sources=sources)
    whole = report["whole_images"]
    assert (whole["images"], whole["defective"]) == (6, 3)
    best = scores["test"]["scores"].reshape(6, 2).max(axis=1)
    assert whole["image_auroc"] == metrics.image_auroc([0, 0, 0, 1, 1, 1], best)
    with pytest.raises(ParameterError, match="one of each per part"):
        model_report(scores, candidates, "percentile", SETTINGS, pixel_percentile=99,
                     min_defect_area=1, n_boot=20, seed=0, sources=sources[:5])


def test_intensity_histograms_are_densities_over_0_to_255_per_kind():
    import matplotlib

    matplotlib.use("Agg")
    from anomaly_utils.visualization import plots

    images = np.zeros((3, 4, 4, 3), np.uint8)
    images[1] = 255
    images[2, :2] = 100
    fig = plots.intensity_histograms(images, np.array(["good", "cut", "cut"]))
    steps = fig.axes[0].patches
    assert [s.get_label() for s in steps] == ["good", "cut"]
    for step in steps:
        values, edges = step.get_data().values, step.get_data().edges
        assert edges[0] == 0 and edges[-1] == 255 and len(values) == 64
        assert np.sum(values * np.diff(edges)) == pytest.approx(1.0)
    cut, edges = steps[1].get_data().values, steps[1].get_data().edges
    assert cut[-1] * (edges[1] - edges[0]) == pytest.approx(0.5)  # half of cut's pixels at 255
