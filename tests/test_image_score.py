"""The image score a candidate's validation set chooses (scoring/image_score.py): its own, or
the scale-adaptive peak; stored with the scores, applied again when a run serves images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from anomaly_utils.data.images import read_image
from anomaly_utils.data.loading import load_dataset
from anomaly_utils.errors import ArtifactError
from anomaly_utils.scoring.image_score import (
    CHOICE_FILE,
    OWN,
    SCALE_ADAPTIVE,
    ImageScoreChoice,
    ScaleAdaptivePeak,
    choose_image_score,
    read_choice,
    window_peaks,
    window_sizes,
    write_choice,
)
from anomaly_utils.scoring.serving import load_candidate
from anomaly_utils.scoring.statistics_floor import StatisticsFloor
from anomaly_utils.scoring.stored import load_scores, score_splits

SIDE = 64


def _normal_maps(n: int, seed: int) -> np.ndarray:
    """Smooth noise, the texture of a normal image's map."""
    noise = np.random.default_rng(seed).normal(0, 1, (n, SIDE, SIDE))
    return ndimage.gaussian_filter(noise, (0, 1, 1)).astype(np.float32)


def _validation(seed: int = 1) -> dict[str, np.ndarray]:
    """12 clean maps and 12 with a large, faint raised square: its peak pixel hides in the
    noise, its area does not."""
    maps = _normal_maps(24, seed)
    masks = np.zeros(maps.shape, bool)
    masks[12:, 16:48, 16:48] = True
    maps[masks] += 0.25
    labels = np.r_[np.zeros(12, int), np.ones(12, int)]
    return {"labels": labels, "maps": maps, "masks": masks,
            "scores": maps.reshape(24, -1).max(axis=1)}


def test_window_sides_are_odd_fractions_of_the_map_side():
    assert window_sizes(128) == (1, 5, 9, 17, 33, 65)
    assert window_sizes(8) == (1, 3, 5)  # repeats dropped
    assert all(w % 2 for w in window_sizes(300))


def test_window_peaks_are_the_maxima_of_mean_filtered_maps():
    maps = _normal_maps(3, 0)
    peaks = window_peaks(maps, (1, 5, 17))
    for k, w in enumerate((1, 5, 17)):
        expected = ndimage.uniform_filter(maps.astype(np.float64), (1, w, w),
                                          mode="reflect").reshape(3, -1).max(axis=1)
        np.testing.assert_allclose(peaks[:, k], expected, rtol=1e-5, atol=1e-6)


def test_scale_adaptive_scores_are_the_largest_standardised_peak():
    normals = _normal_maps(30, 2)
    peak = ScaleAdaptivePeak.of_normals(normals)
    assert peak.windows == window_sizes(SIDE)
    z = (window_peaks(normals, peak.windows) - peak.mean) / peak.std
    np.testing.assert_allclose(peak.apply(normals), z.max(axis=1), rtol=1e-5)
    np.testing.assert_allclose(z.mean(axis=0), 0, atol=1e-9)  # standardised on them
    flat = ScaleAdaptivePeak.of_normals(np.ones((3, 8, 8)))  # no spread: no division by 0
    assert np.isfinite(flat.apply(np.ones((2, 8, 8)))).all()
    with pytest.raises(Exception, match="normal maps"):
        ScaleAdaptivePeak.of_normals(np.ones((0, 8, 8)))


def test_validation_takes_the_scale_adaptive_peak_where_it_ranks_better():
    val = _validation()
    choice = choose_image_score(_normal_maps(20, 3), val)
    assert choice.rule == SCALE_ADAPTIVE
    own, adaptive = (choice.validation_auroc[r] for r in (OWN, SCALE_ADAPTIVE))
    assert adaptive > own and adaptive > 0.95
    np.testing.assert_array_equal(choice.scores(val["scores"], val["maps"]),
                                  choice.peak.apply(val["maps"]))
    assert "scale-adaptive" in choice.describe()
    # How sure validation is of it: the lead's interval, on resamples of the images.
    assert choice.lead["low"] <= choice.lead["mean"] <= choice.lead["high"]
    assert choice.lead["mean"] == pytest.approx(adaptive - own, abs=0.05)
    assert "lead" in choice.describe() and "interval" in choice.describe()
    row = choice.row()  # notebook 04's table
    assert row["image score"] == SCALE_ADAPTIVE and row[f"validation AUROC, {OWN}"] == own
    assert row["scale-adaptive lead, 90% interval"].startswith(f"{choice.lead['mean']:+.3f} [")


def test_a_candidate_keeps_its_own_score_unless_validation_prefers_the_other():
    val = _validation()
    perfect = {**val, "scores": val["labels"].astype(np.float32)}  # own ranks every image
    choice = choose_image_score(_normal_maps(20, 3), perfect)
    assert choice.rule == OWN and choice.validation_auroc[OWN] == 1.0
    np.testing.assert_array_equal(choice.scores(perfect["scores"], val["maps"]),
                                  perfect["scores"])
    clean = {**val, "labels": np.zeros(24, int)}  # nothing to compare on: own
    assert choose_image_score(_normal_maps(20, 3), clean).rule == OWN


def test_labelled_validation_defects_count_as_the_selection_counts_them():
    val = _validation()
    # The pasted anomalies favour the scale-adaptive peak; two labelled defects that only the
    # own score ranks above every normal pull the mean the other way.
    types = np.array(["good"] * 12 + ["faint"] * 10 + ["labelled/dent"] * 2)
    scores = val["scores"].copy()
    scores[22:] = 100.0
    maps = val["maps"].copy()
    maps[22:] = _normal_maps(2, 9)
    both = {**val, "types": types, "scores": scores, "maps": maps}
    choice = choose_image_score(_normal_maps(20, 3), both)
    assert choice.rule == OWN  # own: (pasted < 1) + labelled 1.0; adaptive: labelled ~0.5


def test_the_choice_survives_the_file_and_a_bad_file_is_named(tmp_path: Path):
    val = _validation()
    choice = choose_image_score(_normal_maps(20, 3), val)
    write_choice(tmp_path, choice)
    back = read_choice(tmp_path)
    assert back.rule == choice.rule and back.peak == choice.peak
    assert back.lead == choice.lead and back.lead is not None
    np.testing.assert_array_equal(back.scores(val["scores"], val["maps"]),
                                  choice.scores(val["scores"], val["maps"]))
    assert read_choice(tmp_path / "older_run").rule == OWN  # made before the file existed
    older = {k: v for k, v in json.loads((tmp_path / CHOICE_FILE).read_text()).items()
             if k != "lead"}  # a run made before leads were stored
    (tmp_path / "before_leads").mkdir()
    (tmp_path / "before_leads" / CHOICE_FILE).write_text(json.dumps(older))
    assert read_choice(tmp_path / "before_leads").lead is None
    assert "lead" not in read_choice(tmp_path / "before_leads").describe()
    (tmp_path / CHOICE_FILE).write_text(json.dumps({"rule": "scale_adaptive", "peak": None,
                                                    "validation_auroc": {}}))
    with pytest.raises(ArtifactError, match=CHOICE_FILE):
        read_choice(tmp_path)


@pytest.mark.parametrize("eigen_side", [None, 16])  # the floor alone, with eigen-images
def test_stored_scores_follow_the_choice_and_serving_applies_it(tiny_data: Path,
                                                                  tmp_path: Path, eigen_side):
    ds = load_dataset(tiny_data, image_size=32, color_mode="grayscale", val_fraction=0.25,
                      seed=0, mask_size=32)
    run = tmp_path / "run"
    floor = StatisticsFloor(variant="global", eval_size=32,
                            eigen_side=eigen_side).fit(ds.train_images)
    assert (floor.eigen is None) == (eigen_side is None)
    floor.save(run / "floor")
    score_splits(floor, ds, run, 0, name="floor", eval_size=32)
    choice = read_choice(run / "floor")
    assert (run / "floor" / CHOICE_FILE).is_file() and choice.peak is not None
    test = load_scores(run / "floor" / "scores_test.npz")
    own = floor.score(ds.test_images)
    np.testing.assert_allclose(test["scores"], choice.scores(own.scores, own.maps), rtol=1e-6)
    originals = [read_image(p, "grayscale") for p in ds.test_paths]
    served = load_candidate(run, "floor").score(originals)
    np.testing.assert_allclose(served.scores, test["scores"], rtol=1e-4, atol=1e-4)
    # Whatever the file says is what serving applies.
    forced = ImageScoreChoice(SCALE_ADAPTIVE if choice.rule == OWN else OWN, {},
                              ScaleAdaptivePeak.of_normals(own.maps))
    write_choice(run / "floor", forced)
    served = load_candidate(run, "floor").score(originals)
    expected = forced.peak.apply(served.maps) if forced.rule == SCALE_ADAPTIVE else own.scores
    np.testing.assert_allclose(served.scores, expected, rtol=1e-4, atol=1e-4)


def test_the_studys_baseline_keeps_its_own_score():
    from anomaly_utils.scoring.candidates import BY_NAME

    assert BY_NAME["ae1"].own_score_only
    assert not any(BY_NAME[n].own_score_only for n in ("floor", "ae2", "blend"))
    val = _validation()
    choice = choose_image_score(_normal_maps(20, 3), val, own_only=True)
    assert choice.rule == OWN
    assert choice.validation_auroc[SCALE_ADAPTIVE] > choice.validation_auroc[OWN]  # reported


def test_a_served_blend_scored_by_its_maps_gives_its_stored_scores(tiny_data: Path,
                                                                   tmp_path: Path,
                                                                   monkeypatch):
    """The blend is made from its parts' stored (float16) maps; serving rounds the parts'
    fresh maps the same way, so a blend under the scale-adaptive peak scores new images as
    its score files say."""
    from anomaly_utils.scoring import serving
    from anomaly_utils.scoring.blend import combine, read_blend, write_blend

    ds = load_dataset(tiny_data, image_size=32, color_mode="grayscale", val_fraction=0.25,
                      seed=0, mask_size=32)
    run = tmp_path / "run"
    parts = {"floor": StatisticsFloor(variant="global", eval_size=32),
             "ae2": StatisticsFloor(variant="positional", grid=4, eval_size=32)}
    for name, floor in parts.items():  # a second floor stands in for AE-2's Keras model
        floor.fit(ds.train_images)
        floor.save(run / name)
        score_splits(floor, ds, run, 0, name=name, eval_size=32)
    own = serving._load_own

    def load_own(run_dir, name):
        if name == "ae2":
            return serving.ServedCandidate(name, "grayscale", serving._resized(
                StatisticsFloor.load(Path(run_dir) / name).score, 32))
        return own(run_dir, name)

    monkeypatch.setattr(serving, "_load_own", load_own)
    write_blend(run, "blend")
    forced = ImageScoreChoice(SCALE_ADAPTIVE, {}, ScaleAdaptivePeak.of_normals(
        load_scores(run / "blend" / "scores_val.npz")["maps"]))
    write_choice(run / "blend", forced)
    # the scores write_blend gives under this rule: from the parts' stored maps
    blended = combine({p: (load_scores(run / p / "scores_test.npz")["scores"],
                           load_scores(run / p / "scores_test.npz")["maps"]) for p in parts},
                      read_blend(run / "blend"))
    expected = forced.peak.apply(blended.maps)
    originals = [read_image(p, "grayscale") for p in ds.test_paths]
    served = serving.load_candidate(run, "blend").score(originals)
    np.testing.assert_allclose(served.scores, expected, rtol=1e-5, atol=1e-5)
