"""The blend of the statistics floor and AE-2 (scoring/blend.py): standardised by each part's
clean validation normals, averaged, written as a candidate's score files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from anomaly_utils.errors import ArtifactError
from anomaly_utils.evaluation.selection import choose_candidate, validation_metrics
from anomaly_utils.scoring.blend import (
    SPLITS,
    Standardiser,
    combine,
    read_blend,
    write_blend,
    write_blends,
)
from anomaly_utils.scoring.candidates import BY_NAME
from anomaly_utils.scoring.image_score import read_choice
from anomaly_utils.scoring.stored import ScoreResult, load_scores, save_scores


def _write_part(run_dir: Path, name: str, offset: float, scale: float, finds: np.ndarray,
                paths=("test/good/0.png", "test/cut/0.png", "test/cut/1.png")) -> None:
    """Score files of a fake part: its maps are ``offset + scale * noise``, plus 3 scale where
    ``finds`` says the part sees the defect (per image)."""
    rng = np.random.default_rng(len(name))
    labels = {"val": np.zeros(6, int), "val_pseudo": np.array([0, 0, 0, 1, 1, 1]),
              "test": np.array([0, 1, 1])}
    for split in SPLITS:
        n = len(labels[split])
        masks = np.zeros((n, 4, 4), bool)
        masks[labels[split] == 1, :2, :2] = True
        seen = masks & (finds[:n] if split != "val" else np.zeros(n, bool))[:, None, None]
        maps = (offset + scale * (rng.normal(0, 1, (n, 4, 4)) + 3 * seen)).astype(np.float32)
        save_scores(run_dir / name / f"scores_{split}.npz",
                    ScoreResult(maps.max(axis=(1, 2)), maps, None), labels=labels[split],
                    types=np.where(labels[split] == 1, "cut", "good"), masks=masks,
                    has_mask=labels[split] == 1,
                    paths=list(paths) if split == "test" else [], fingerprint="f",
                    model=name)


def test_a_standardiser_measures_in_standard_deviations_of_the_normals():
    normals = {"scores": np.array([1.0, 2.0, 3.0]), "maps": np.array([[[0.0, 2.0]]] * 3)}
    s = Standardiser.of_normals(normals)
    scores, maps = s.apply(np.array([2.0, 2.0 + np.std([1, 2, 3])]), np.array([[[1.0, 3.0]]]))
    np.testing.assert_allclose(scores, [0.0, 1.0])
    np.testing.assert_allclose(maps, [[[0.0, 2.0]]])
    flat = Standardiser.of_normals({"scores": np.ones(3), "maps": np.ones((3, 2, 2))})
    assert np.isfinite(flat.apply(np.array([2.0]), np.ones((1, 2, 2)))[0]).all()


def test_the_blend_is_the_mean_of_its_parts_standardised_scores_and_maps(tmp_path: Path):
    assert BY_NAME["blend"].parts == ("floor", "ae2")
    # The floor sees the first two pseudo-anomalies, AE-2 the last two, on other scales.
    _write_part(tmp_path, "floor", 5.0, 2.0, np.array([False, False, False, True, True, False]))
    _write_part(tmp_path, "ae2", 0.1, 0.01, np.array([False, False, False, False, True, True]))
    assert write_blends(tmp_path) == ["blend"]
    standardisers = read_blend(tmp_path / "blend")
    assert list(standardisers) == ["floor", "ae2"]
    for split in SPLITS:
        blend = load_scores(tmp_path / "blend" / f"scores_{split}.npz", "f", "blend")
        parts = [load_scores(tmp_path / p / f"scores_{split}.npz") for p in ("floor", "ae2")]
        expected = np.mean([standardisers[p].apply(z["scores"], z["maps"])[0]
                            for p, z in zip(("floor", "ae2"), parts, strict=True)], axis=0)
        # under the image score the blend's validation set chose (image_score.json)
        expected = read_choice(tmp_path / "blend").scores(expected, blend["maps"])
        np.testing.assert_allclose(blend["scores"], expected, rtol=1e-5, atol=1e-6)
        for key in ("labels", "types", "masks", "has_mask", "paths"):
            np.testing.assert_array_equal(blend[key], parts[0][key])
    # On the clean normals the blend is centred: each part contributes mean 0.
    val = load_scores(tmp_path / "blend" / "scores_val.npz")
    assert abs(float(np.mean(val["scores"]))) < 1e-5
    # Each part misses a pseudo-anomaly the other finds; the blend's maps find both better
    # than either part alone, and the chooser can prefer it.
    validation = {name: validation_metrics(load_scores(tmp_path / name /
                                                       "scores_val_pseudo.npz"))
                  for name in ("floor", "ae2", "blend")}
    pixel = {name: v["pixel_auroc"] for name, v in validation.items()}
    assert pixel["blend"] > max(pixel["floor"], pixel["ae2"])
    assert choose_candidate(validation)["model"] in validation


def test_a_blend_of_parts_that_scored_other_images_is_refused(tmp_path: Path):
    finds = np.zeros(6, bool)
    _write_part(tmp_path, "floor", 0.0, 1.0, finds)
    _write_part(tmp_path, "ae2", 0.0, 1.0, finds,
                paths=("test/good/0.png", "test/cut/0.png", "test/cut/9.png"))
    with pytest.raises(ArtifactError, match="scored other test images"):
        write_blend(tmp_path, "blend")
    assert not (tmp_path / "blend").exists()


def test_parts_with_maps_of_other_sizes_cannot_be_combined():
    s = Standardiser(0.0, 1.0, 0.0, 1.0)
    with pytest.raises(ArtifactError, match="maps of different shapes"):
        combine({"floor": (np.zeros(2), np.zeros((2, 4, 4))),
                 "ae2": (np.zeros(2), np.zeros((2, 8, 8)))}, {"floor": s, "ae2": s})


def test_a_missing_or_foreign_blend_file_is_a_clear_error(tmp_path: Path):
    (tmp_path / "blend").mkdir()
    (tmp_path / "blend" / "blend.json").write_text('{"other": 1}')
    with pytest.raises(ArtifactError, match="does not describe a blend"):
        read_blend(tmp_path / "blend")
