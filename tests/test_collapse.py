"""An autoencoder that learned nothing is noticed and trained again at a lower rate."""

from __future__ import annotations

import json

import keras
import numpy as np

from anomaly_utils.training.collapse import (
    ATTEMPTS_FILE,
    COLLAPSED_DIR,
    fit_until_learned,
    reconstruction_check,
)


def _crops(seed: int, n: int = 16) -> np.ndarray:
    """Smooth random 16x16 gray crops with clear structure (a flat grey misses it)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:16, 0:16] / 16.0
    phase = rng.random((n, 1, 1)) * 6
    return (0.5 + 0.4 * np.sin(6 * x[None] + phase) * np.cos(3 * y[None]))[..., None].astype(
        np.float32)


class Constant(keras.Model):
    """Outputs a flat dark grey whatever it sees."""

    def call(self, inputs):
        return keras.ops.zeros_like(inputs) + 0.2


class Identity(keras.Model):
    def call(self, inputs):
        return inputs


def test_the_check_tells_a_flat_output_from_a_reconstruction():
    crops = _crops(0)
    batches = [(crops[:8], crops[:8]), (crops[8:], crops[8:])]
    flat = reconstruction_check(Constant(), batches)
    assert not flat["learned"] and flat["ratio"] >= 1.0
    copy = reconstruction_check(Identity(), batches)
    assert copy["learned"] and copy["ratio"] == 0.0
    assert copy["flat_l1"] == flat["flat_l1"] > 0


def test_a_collapsed_attempt_is_set_aside_and_retried_slower(tmp_path, monkeypatch):
    """fit_autoencoder is replaced by a stub whose model collapses at rates >= 1e-3; the
    retry runs at a third of the rate, the first attempt's files are kept aside, and a
    rerun (a resumed run) starts with the retry's rate."""
    import anomaly_utils.training.collapse as collapse

    crops = _crops(1)
    rates = []

    def fake_fit(model, train, val, model_dir, *, learning_rate, **options):
        rates.append(learning_rate)
        (model_dir / "model.keras").write_text(f"lr {learning_rate}")
        return {"model": Constant() if learning_rate >= 1e-3 else Identity(),
                "history": {"loss": [1.0]}, "best_epoch": 0}

    monkeypatch.setattr(collapse, "fit_autoencoder", fake_fit)
    (tmp_path / "ae2").mkdir()
    messages = []
    fit = fit_until_learned(lambda: None, None, [(crops, crops)], tmp_path / "ae2",
                            learning_rate=1e-3, log=messages.append, epochs=40)
    assert rates == [1e-3, 1e-3 / 3] and fit["learning_rate"] == 1e-3 / 3
    assert fit["check"]["learned"] and len(fit["attempts"]) == 1
    aside = tmp_path / "ae2" / COLLAPSED_DIR / "lr_0.001" / "model.keras"
    assert aside.read_text() == "lr 0.001"
    assert (tmp_path / "ae2" / "model.keras").read_text() == f"lr {1e-3 / 3}"
    record = json.loads((tmp_path / "ae2" / ATTEMPTS_FILE).read_text())
    assert record["collapsed"][0]["learning_rate"] == 1e-3 and "learned nothing" in messages[0]
    rates.clear()
    fit_until_learned(lambda: None, None, [(crops, crops)], tmp_path / "ae2",
                      learning_rate=1e-3, log=messages.append, epochs=40)
    assert rates == [1e-3 / 3]


def test_it_gives_up_after_the_retries_and_says_so(tmp_path, monkeypatch):
    import anomaly_utils.training.collapse as collapse

    crops = _crops(2)
    monkeypatch.setattr(collapse, "fit_autoencoder", lambda *a, learning_rate, **k: {
        "model": Constant(), "history": {}, "best_epoch": 0})
    messages = []
    fit = fit_until_learned(lambda: None, None, [(crops, crops)], tmp_path,
                            learning_rate=1.0, retries=1, log=messages.append, epochs=40)
    assert not fit["check"]["learned"] and fit["learning_rate"] == 1 / 3
    assert messages[-1].startswith("warning:") and "after 1 slower retry;" in messages[-1]
    # A short training is warned about, not retried: it had no time to learn.
    messages.clear()
    fit = fit_until_learned(lambda: None, None, [(crops, crops)], tmp_path / "short",
                            learning_rate=1.0, log=messages.append, epochs=4)
    assert fit["learning_rate"] == 1.0 and fit["attempts"] == []
    assert len(messages) == 1 and "fewer than 10, so not retried" in messages[0]
