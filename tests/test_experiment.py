"""Scorer: one way to turn images into scores and maps, for notebooks, gallery and CLI."""

from __future__ import annotations

import numpy as np
import pytest

from anomaly_utils import models, scoring
from anomaly_utils.errors import ParameterError
from anomaly_utils.experiment import Scorer, ScoringConfig


def tiny_vae():
    return models.build_ae1(image_size=16, channels=3, latent_dim=4, variant="vae",
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
    expected = np.mean([scoring.squared_error_map(x, s) for s in samples], axis=0)
    np.testing.assert_allclose(result.maps, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(result.recons, samples.mean(axis=0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(result.scores, expected.reshape(3, -1).mean(axis=1), rtol=1e-5)


def test_score_refuses_images_of_the_wrong_size():
    scorer = Scorer(tiny_vae(), ScoringConfig(model="ae1", image_size=16, eval_size=16))
    with pytest.raises(ParameterError, match="expects"):
        scorer.score(np.zeros((1, 32, 32, 3), np.uint8))
