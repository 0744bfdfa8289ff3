"""Scorer: one way to turn images into scores and maps, for notebooks, gallery and CLI."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from anomaly_utils.errors import ParameterError
from anomaly_utils.models.ae1 import build_ae1
from anomaly_utils.scoring.maps import absolute_error_map, anomaly_map, squared_error_map
from anomaly_utils.scoring.reconstruction import inpaint_reconstruct, sliding_window_reconstruct
from anomaly_utils.scoring.scorer import Scorer, ScoringConfig, training_sample
from anomaly_utils.training.masks import GRID_SETS


def tiny_vae():
    return build_ae1(image_size=16, channels=3, latent_dim=4, variant="vae",
                            encoder_filters=(4, 4, 4), decoder_filters=(4, 4), seed=0)


def test_vae_maps_average_the_samples_and_sample_once(monkeypatch):
    model = tiny_vae()
    images = np.random.default_rng(0).integers(0, 255, (3, 16, 16, 3), dtype=np.uint8)
    calls = []
    original = model.sample_reconstructions

    def counting(x, n_samples, seed):
        calls.append(n_samples)
        return original(x, n_samples, seed)

    monkeypatch.setattr(model, "sample_reconstructions", counting)
    scorer = Scorer(model, ScoringConfig(model="ae1", image_size=16, map_kind="l2",
                                         score_method="mean", eval_size=16, vae_samples=3))
    result = scorer.score(images)
    assert calls == [3]
    x = images.astype(np.float32) / 255
    samples = np.asarray(original(x, 3, 0))
    expected = np.mean([squared_error_map(x, s) for s in samples], axis=0)
    np.testing.assert_allclose(result.maps, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(result.recons, samples.mean(axis=0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(result.scores, expected.reshape(3, -1).mean(axis=1), rtol=1e-5)


def test_score_refuses_images_of_the_wrong_size():
    scorer = Scorer(tiny_vae(), ScoringConfig(model="ae1", image_size=16, eval_size=16))
    with pytest.raises(ParameterError, match="expects"):
        scorer.score(np.zeros((1, 32, 32, 3), np.uint8))


def test_training_sample_is_seeded_without_replacement():
    images = np.arange(50, dtype=np.uint8).reshape(50, 1, 1, 1)
    first = training_sample(images, 20, seed=3)
    assert first.shape == (20, 1, 1, 1)
    assert len(np.unique(first)) == 20                      # no image twice
    np.testing.assert_array_equal(first, training_sample(images, 20, seed=3))
    assert not np.array_equal(first, training_sample(images, 20, seed=4))
    assert training_sample(images, 80, seed=0) is images    # fewer than asked: all of them


def test_normalised_maps_are_z_scores_against_the_fitted_normals():
    inputs = keras.Input((8, 8, 1))
    grey = keras.Model(inputs, keras.layers.Lambda(lambda x: x * 0.0 + 0.5)(inputs))
    rng = np.random.default_rng(0)
    normals = rng.integers(0, 255, (6, 8, 8, 1), dtype=np.uint8)
    test = rng.integers(0, 255, (2, 8, 8, 1), dtype=np.uint8)
    scorer = Scorer(grey, ScoringConfig(model="ae2", image_size=8, color_mode="grayscale",
                                        map_kind="l2", score_method="max", eval_size=8,
                                        normalize=True))
    scorer.fit_normalization(normals)
    plain = squared_error_map(normals / 255.0, np.full(normals.shape, 0.5, np.float32))
    mean, std = plain.mean(axis=0), plain.std(axis=0) + 1e-3 * plain.std() + 1e-6
    raw = squared_error_map(test / 255.0, np.full(test.shape, 0.5, np.float32))
    result = scorer.score(test)
    np.testing.assert_allclose(result.maps, (raw - mean) / std, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(result.scores, result.maps.reshape(2, -1).max(axis=1), rtol=1e-6)


def test_inpainting_scorer_averages_the_cell_sizes_and_saves_its_settings(tmp_path):
    blur = keras.Sequential([keras.Input((None, None, 1)),
                             keras.layers.AveragePooling2D(3, 1, "same")])
    images = np.random.default_rng(5).integers(0, 255, (2, 16, 16, 1), dtype=np.uint8)
    config = ScoringConfig(model="ae2", image_size=16, color_mode="grayscale", map_kind="l1",
                           score_method="max", eval_size=16, patch_size=8, stride=4,
                           inpaint_cells=[2, 4], seed=3)
    result = Scorer(blur, config).score(images)
    x = images / np.float32(255)
    recons = [inpaint_reconstruct(blur, x, cell, seed=3) for cell in (2, 4)]
    expected = np.mean([absolute_error_map(x, r) for r in recons], axis=0)
    np.testing.assert_allclose(result.maps, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.recons, np.mean(recons, axis=0), rtol=1e-5, atol=1e-6)
    (tmp_path / "ae2").mkdir()
    Scorer(blur, config).save_config(tmp_path)
    from anomaly_utils.artifacts import read_json
    saved = ScoringConfig(**read_json(tmp_path / "ae2" / "scoring.json"))
    assert saved.inpaint_cells == [2, 4] and saved.inpaint_sets == GRID_SETS


def constant_model(value: float, size: int = 8) -> keras.Model:
    """A grayscale 'autoencoder' that reconstructs every pixel as ``value``."""
    return keras.Sequential([keras.Input((size, size, 1)),
                             keras.layers.Rescaling(scale=0.0, offset=value)])


def test_an_ensemble_maps_the_error_of_its_members_mean_reconstruction(tmp_path):
    dark, bright = constant_model(0.2), constant_model(0.8)
    images = np.random.default_rng(1).integers(0, 255, (3, 8, 8, 1), dtype=np.uint8)
    config = ScoringConfig(model="ae2", image_size=8, color_mode="grayscale", map_kind="l1",
                           score_method="max", eval_size=8, ensemble_size=2)
    result = Scorer([dark, bright], config).score(images)
    x = images / np.float32(255)
    np.testing.assert_allclose(result.recons, 0.5, atol=1e-6)
    np.testing.assert_allclose(result.maps, np.abs(x - 0.5)[..., 0], rtol=1e-5, atol=1e-6)
    # not the mean of the members' maps, which is larger wherever x lies between 0.2 and 0.8
    members_mean = np.mean([np.abs(x - 0.2), np.abs(x - 0.8)], axis=0)[..., 0]
    assert np.abs(result.maps - members_mean).max() > 0.1

    from anomaly_utils.scoring.scorer import member_dir

    for k, model in enumerate((dark, bright)):
        member_dir(tmp_path / "ae2", k).mkdir(parents=True, exist_ok=True)
        model.save(member_dir(tmp_path / "ae2", k) / "model.keras")
    Scorer([dark, bright], config).save_config(tmp_path)
    loaded = Scorer.load(tmp_path, "ae2")
    assert len(loaded.members) == 2
    np.testing.assert_allclose(loaded.score(images).maps, result.maps, rtol=1e-6)


def test_an_ensemble_with_a_missing_member_is_refused_by_name(tmp_path):
    from anomaly_utils.errors import ArtifactError

    config = ScoringConfig(model="ae2", image_size=8, color_mode="grayscale", eval_size=8,
                           ensemble_size=3)
    (tmp_path / "ae2").mkdir()
    constant_model(0.5).save(tmp_path / "ae2" / "model.keras")
    Scorer([constant_model(0.5)] * 3, config).save_config(tmp_path)
    with pytest.raises(ArtifactError, match=r"member1.model\.keras.*member2.model\.keras"):
        Scorer.load(tmp_path, "ae2")
    with pytest.raises(ParameterError, match="ensemble_size=3"):
        Scorer([constant_model(0.5)], config)


def test_padding_maps_the_mirrored_image_and_crops_back():
    """pad=p: reconstruct, map and smooth the reflect-padded image, then crop; an
    average-pooling 'model' blurs differently at the border, so padding must change it."""
    blur = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.AveragePooling2D(3, 1, "same")])
    images = np.random.default_rng(6).integers(0, 255, (2, 24, 24, 3), dtype=np.uint8)
    config = dict(model="ae2", image_size=24, map_kind="0.5*ssim+1*lowpass", score_method="max",
                  eval_size=24, smooth_sigma=2.0, patch_size=8, stride=4)
    padded = Scorer(blur, ScoringConfig(**config, pad=4))
    plain = Scorer(blur, ScoringConfig(**config))
    recons, maps = padded.reconstruct_with_maps(images)
    x = np.pad(images / np.float32(255), ((0, 0), (4, 4), (4, 4), (0, 0)), mode="reflect")
    expected_recons = sliding_window_reconstruct(blur, x, 8, 4)
    expected_maps = anomaly_map(x, expected_recons, "0.5*ssim+1*lowpass",
                                        smooth_sigma=2.0)
    assert recons.shape == (2, 24, 24, 3) and maps.shape == (2, 24, 24)
    np.testing.assert_allclose(recons, expected_recons[:, 4:-4, 4:-4], atol=1e-6)
    np.testing.assert_allclose(maps, expected_maps[:, 4:-4, 4:-4], atol=1e-5)
    np.testing.assert_allclose(padded.reconstruct(images), recons, atol=1e-6)
    assert np.abs(maps - plain.reconstruct_with_maps(images)[1])[:, 0].max() > 1e-3


@pytest.mark.parametrize(("pad", "patch_size", "match"), [(4, 0, "sliding-window"),
                                                          (24, 8, "smaller than the image")])
def test_padding_refuses_whole_image_models_and_pads_as_large_as_the_image(pad, patch_size,
                                                                           match):
    scorer = Scorer(tiny_vae(), ScoringConfig(model="ae1", image_size=16, eval_size=16,
                                              patch_size=patch_size, pad=pad))
    with pytest.raises(ParameterError, match=match):
        scorer.score(np.zeros((1, 16, 16, 3), np.uint8))
