"""AE-2's segmentation head: its shapes, its training data and loss, and its maps and scores."""

from __future__ import annotations

import numpy as np
import pytest

from anomaly_utils.errors import ParameterError
from anomaly_utils.models.ae2 import build_ae2
from anomaly_utils.models.segmentation_head import (
    HEAD_TRAININGS,
    build_head_trainer,
    build_segmentation_head,
    head_of,
    reconstructor_of,
)
from anomaly_utils.pipeline.parameters import validate
from anomaly_utils.scoring.head_maps import peak_of_mean_filtered, score_window
from anomaly_utils.scoring.scorer import Scorer, ScoringConfig
from anomaly_utils.scoring.stored import load_scores, save_scores
from anomaly_utils.training.datasets import anomaly_patch_dataset, set_dataset_epoch
from anomaly_utils.training.head import fit_segmentation_head, step_schedule


def textures(n: int = 12, side: int = 32, channels: int = 3) -> np.ndarray:
    """Defect-free stripes with a little noise, uint8 (n, side, side, channels)."""
    rng = np.random.default_rng(0)
    x = np.arange(side)
    stripes = 0.5 + 0.3 * np.sin(x[None, :] / 2.0 + rng.uniform(0, 6, (n, 1)))
    images = np.repeat(stripes[:, None, :], side, axis=1)[..., None].repeat(channels, -1)
    images = images + rng.normal(0, 0.03, images.shape)
    return (np.clip(images, 0, 1) * 255).astype(np.uint8)


def test_head_maps_image_and_reconstruction_to_a_probability_per_pixel():
    head = build_segmentation_head(channels=3, widths=(4, 8, 16), seed=0)
    assert head.input_shape == (None, None, None, 6)
    out = np.asarray(head.predict_on_batch(np.random.default_rng(0).random((2, 24, 40, 6))))
    assert out.shape == (2, 24, 40, 1)
    assert out.min() >= 0 and out.max() <= 1


def test_head_builds_are_seeded():
    a = build_segmentation_head(1, (4, 8), seed=3).get_weights()
    b = build_segmentation_head(1, (4, 8), seed=3).get_weights()
    c = build_segmentation_head(1, (4, 8), seed=4).get_weights()
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_two_stage_trainer_freezes_the_autoencoder_and_joint_does_not():
    ae = build_ae2(32, 3, 4, widths=[4] * 8, bottleneck="spatial")
    head = build_segmentation_head(3, (4, 8))
    two_stage = build_head_trainer(ae, head, "two_stage")
    assert len(two_stage.trainable_weights) == len(head.trainable_weights)
    assert two_stage.output_shape == (None, 32, 32, 1)
    joint = build_head_trainer(ae, head, "joint")
    assert len(joint.trainable_weights) == len(head.trainable_weights) + len(ae.trainable_weights)
    assert set(joint.output) == {"mask", "reconstruction"}
    assert head_of(joint) is head and reconstructor_of(joint) is ae


def test_trainer_refuses_a_head_for_other_channels_and_unknown_training():
    ae = build_ae2(32, 3, 4, widths=[4] * 8, bottleneck="spatial")
    with pytest.raises(ParameterError, match="channels"):
        build_head_trainer(ae, build_segmentation_head(1, (4, 8)))
    with pytest.raises(ParameterError, match="head_training"):
        build_head_trainer(ae, build_segmentation_head(3, (4, 8)), "together")


def test_every_head_training_name_passes_the_parameter_check_and_others_fail():
    for name in HEAD_TRAININGS:
        validate("03_train_ae2", {"head_training": name})
    with pytest.raises(ParameterError, match="head_training"):
        validate("03_train_ae2", {"head_training": "together"})


def test_anomaly_patches_are_epoch_keyed_and_their_masks_mark_the_changes():
    images = textures(8)
    ds = anomaly_patch_dataset(images, 16, 32, batch_size=16, seed=1,
                               anomaly_options={"clean_fraction": 0.5})
    set_dataset_epoch(ds, 3)
    first = list(ds)
    set_dataset_epoch(ds, 0)
    other = [x for x, _ in ds]
    set_dataset_epoch(ds, 3)
    again = list(ds)
    assert len(first) == 2
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
               for a, b in zip(first, again, strict=True))
    assert not np.array_equal(first[0][0], other[0])
    x, m = first[0]
    assert x.shape == (16, 16, 16, 3) and m.shape == (16, 16, 16, 1)
    assert set(np.unique(m)) <= {0.0, 1.0}
    assert 0 < np.mean(m.reshape(16, -1).max(axis=1)) < 1  # some crops clean, some not


def test_joint_patches_carry_the_clean_crop_as_reconstruction_target():
    images = textures(6)
    ds = anomaly_patch_dataset(images, 16, 8, batch_size=8, seed=0, joint=True,
                               anomaly_options={"clean_fraction": 0.0})
    x, targets = next(iter(ds))
    mask, clean = targets["mask"], targets["reconstruction"]
    assert x.dtype == mask.dtype == clean.dtype == np.float32
    outside = mask[..., 0] == 0
    assert np.array_equal(x[outside], clean[outside])  # only masked pixels differ
    assert mask.reshape(8, -1).max(axis=1).all()


def test_step_schedule_drops_at_80_and_90_percent():
    rate = step_schedule(1e-3, 10)
    assert [round(rate(e), 8) for e in (0, 7, 8, 9)] == [1e-3, 1e-3, 2e-4, 4e-5]


def test_head_training_lowers_the_focal_loss(tmp_path):
    images = textures(12)
    ae = build_ae2(32, 3, 4, widths=[8] * 8, bottleneck="spatial", seed=0)
    fit = fit_segmentation_head(ae, build_segmentation_head(3, (8, 16), seed=0), images,
                                tmp_path / "head", patch_size=32, epochs=6,
                                patches_per_epoch=64, batch_size=16, learning_rate=3e-3,
                                seed=0)
    losses = fit["history"]["loss"]
    assert len(losses) == 6
    # The untrained head says 0.5 everywhere; it learns that most pixels are normal.
    assert losses[-1] < 0.5 * losses[0], losses
    assert (tmp_path / "head" / "model.keras").is_file()


def test_joint_training_fits_both_outputs(tmp_path):
    images = textures(8)
    ae = build_ae2(32, 3, 4, widths=[4] * 8, bottleneck="spatial")
    before = [w.copy() for w in ae.get_weights()]
    fit = fit_segmentation_head(ae, build_segmentation_head(3, (4, 8)), images,
                                tmp_path / "head", patch_size=32, epochs=1,
                                patches_per_epoch=16, batch_size=8, learning_rate=1e-3,
                                seed=0, training="joint")
    assert {"mask_loss", "reconstruction_loss"} <= set(fit["history"])
    after = fit["reconstructor"].get_weights()
    assert not all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))


def test_peak_of_mean_filtered_matches_a_plain_loop():
    rng = np.random.default_rng(0)
    maps = rng.random((3, 20, 20)).astype(np.float32)
    side = score_window(20, 0.15)
    assert side == 3
    padded = np.pad(maps, ((0, 0), (1, 1), (1, 1)), mode="symmetric")
    expected = [max(padded[n, i:i + 3, j:j + 3].mean() for i in range(20) for j in range(20))
                for n in range(3)]
    np.testing.assert_allclose(peak_of_mean_filtered(maps, 0.15), expected, rtol=1e-5)


def test_scorer_with_a_head_stores_the_learned_map_and_the_error_map(tmp_path):
    ae = build_ae2(16, 3, 4, widths=[4] * 8, bottleneck="spatial")
    head = build_segmentation_head(3, (4, 8))
    config = ScoringConfig(model="ae2", image_size=32, patch_size=16, stride=8, eval_size=16,
                           map_kind="l2", head="segmentation")
    scorer = Scorer(ae, config, head=head)
    result = scorer.score(textures(3))
    assert result.maps.shape == (3, 16, 16) and result.error_maps.shape == (3, 16, 16)
    assert result.maps.min() >= 0 and result.maps.max() <= 1
    np.testing.assert_allclose(result.scores, peak_of_mean_filtered(
        np.asarray(head_of_maps(head, scorer, textures(3))), config.head_score_window),
        rtol=1e-5)
    path = tmp_path / "scores.npz"
    save_scores(path, result, labels=np.zeros(3, int), types=np.full(3, "good"), masks=None,
                has_mask=None, paths=[], fingerprint="f", model="ae2")
    stored = load_scores(path)
    np.testing.assert_allclose(stored["error_maps"], result.error_maps, atol=1e-2)
    assert "recons" not in stored  # only the test split keeps them (keep_recons)


def head_of_maps(head, scorer, images):
    x = images.astype(np.float32) / 255
    recons = scorer.reconstruct(images)
    return head.predict_on_batch(np.concatenate([x, recons], -1))[..., 0]


def test_scorer_refuses_a_head_config_without_a_head_and_one_head_for_two_members():
    ae = build_ae2(16, 3, 4, widths=[4] * 8, bottleneck="spatial")
    with pytest.raises(ParameterError, match="no head model"):
        Scorer(ae, ScoringConfig(model="ae2", image_size=32, head="segmentation"))
    with pytest.raises(ParameterError, match="1 head.* for 2 ensemble member"):
        Scorer([ae, ae], ScoringConfig(model="ae2", image_size=32, head="segmentation",
                                       ensemble_size=2), head=build_segmentation_head(3, (4,)))


def test_an_ensemble_with_heads_maps_the_mean_of_its_members_heads(tmp_path):
    """Each member's head sees that member's reconstruction; the map is their mean, the
    image score its filtered peak, and the reconstruction shown the members' mean."""
    members = [build_ae2(16, 3, 4, widths=[4] * 8, bottleneck="spatial", seed=s)
               for s in (0, 1)]
    heads = [build_segmentation_head(3, (4, 8), seed=s) for s in (0, 1)]
    config = ScoringConfig(model="ae2", image_size=32, patch_size=16, stride=8, eval_size=32,
                           map_kind="l2", head="segmentation", ensemble_size=2)
    ensemble = Scorer(members, config, head=heads)
    result = ensemble.score(textures(3))
    single = [Scorer(m, ScoringConfig(**{**vars(config), "ensemble_size": 1}), head=h)
              for m, h in zip(members, heads, strict=True)]
    each = [head_of_maps(h, s, textures(3)) for h, s in zip(heads, single, strict=True)]
    np.testing.assert_allclose(result.maps, np.mean(each, axis=0), rtol=1e-5, atol=1e-6)
    assert not np.allclose(each[0], each[1])  # two heads, two maps
    np.testing.assert_allclose(result.scores, peak_of_mean_filtered(
        np.mean(each, axis=0), config.head_score_window), rtol=1e-5)
    np.testing.assert_allclose(result.recons, np.mean(
        [s.reconstruct(textures(3)) for s in single], axis=0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("name", "value", "match"), [
    ("head", "draem", "head"), ("head_training", "both", "head_training"),
    ("head_widths", [16, 0], "head_widths"), ("anomaly_fills", ["paint"], "anomaly_fills"),
    ("anomaly_opacity", [0.9, 0.1], "anomaly_opacity"),
    ("anomaly_clean_fraction", 1.0, "anomaly_clean_fraction"),
    ("head_score_window", 0, "head_score_window"),
])
def test_head_parameters_are_checked_before_a_run(name, value, match):
    with pytest.raises(ParameterError, match=match):
        validate("03_train_ae2", {name: value})


def test_a_head_needs_a_plain_autoencoder_one_per_ensemble_member():
    with pytest.raises(ParameterError, match="unet"):
        validate("03_train_ae2", {"head": "segmentation", "bottleneck": "unet"})
    validate("03_train_ae2", {"head": "segmentation", "ensemble_size": 3,
                              "bottleneck": "spatial"})
    validate("03_train_ae2", {"head": "none", "ensemble_size": 3, "bottleneck": "spatial"})
