"""Tests for anomaly_utils.models: architectures, parameter counts, one training step,
safe-mode save/load round trips and the AE-2 loss."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from anomaly_utils.errors import ParameterError
from anomaly_utils.models.ae1 import VariationalAutoencoder, build_ae1
from anomaly_utils.models.ae2 import build_ae2
from anomaly_utils.models.losses import AE2Loss, gms_loss, make_ae2_loss, ssim_loss
from anomaly_utils.models.similarity import ssim_map


def conv(k, c_in, c_out):
    """Parameters of a Conv2D or Conv2DTranspose with bias."""
    return k * k * c_in * c_out + c_out


def dense(n_in, n_out):
    return n_in * n_out + n_out


def _smooth_images(n, size, channels, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = [0.5 + 0.4 * np.sin(2 * np.pi * rng.uniform(1, 4) * (xx + yy) + rng.uniform(0, 6))
           for _ in range(n)]
    return np.repeat(np.stack(out)[..., None], channels, axis=-1).astype(np.float32)


# --------------------------------------------------------------------------- architecture


def _ae1_expected_params(size, channels, latent, vae):
    encoder = conv(4, channels, 64) + conv(4, 64, 128) + conv(4, 128, 512)
    flat = (size // 8) ** 2 * 512
    heads = dense(flat, latent) * (2 if vae else 1)
    decoder = (dense(latent, (size // 8) ** 2 * 512) + conv(4, 512, 256) + conv(4, 256, 64)
               + conv(4, 64, channels))
    return encoder + heads + decoder


@pytest.mark.parametrize("variant", ["ae", "vae"])
def test_ae1_default_shape_and_parameter_count(variant):
    model = build_ae1(variant=variant)
    out = model(np.zeros((1, 64, 64, 3), np.float32))
    assert tuple(out.shape) == (1, 64, 64, 3)
    assert model.count_params() == _ae1_expected_params(64, 3, 1024, variant == "vae")
    if variant == "vae":
        assert isinstance(model, VariationalAutoencoder)
        mean, log_var = model.encoder(np.zeros((1, 64, 64, 3), np.float32))
        assert mean.shape == log_var.shape == (1, 1024)


@pytest.mark.parametrize("channels", [1, 3])
def test_ae2_default_shape_and_parameter_count(channels):
    model = build_ae2(channels=channels)
    assert model.output_shape == (None, 128, 128, channels)
    widths = [32, 32, 32, 64, 64, 128, 64, 32]
    kernels = [4, 4, 3, 4, 3, 4, 3, 3]
    ins = [channels] + widths[:-1]
    encoder = sum(conv(k, i, o) for k, i, o in zip(kernels, ins, widths, strict=True))
    bottleneck = conv(8, 32, 100)
    decoder = conv(8, 100, 32) + sum(conv(k, o, i) for k, i, o in zip(kernels, ins, widths,
                                                                       strict=True))
    assert model.count_params() == encoder + bottleneck + decoder
    latent = model.get_layer("latent").output
    assert tuple(latent.shape) == (None, 1, 1, 100)


def test_builders_validate_sizes():
    with pytest.raises(ParameterError, match="image_size"):
        build_ae1(image_size=60)
    with pytest.raises(ParameterError, match="patch_size"):
        build_ae2(patch_size=72)
    with pytest.raises(ParameterError, match="variant"):
        build_ae1(variant="gan")
    with pytest.raises(ParameterError, match="decoder_filters"):
        build_ae1(decoder_filters=(64,))


def test_builds_with_same_seed_have_identical_weights():
    a, b = build_ae2(32, latent_dim=8, seed=4), build_ae2(32, latent_dim=8, seed=4)
    c = build_ae2(32, latent_dim=8, seed=5)
    for wa, wb in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_array_equal(wa, wb)
    assert not np.array_equal(a.get_weights()[0], c.get_weights()[0])


# --------------------------------------------------------------------------- training step


def _tiny(kind):
    if kind == "ae2":
        return build_ae2(32, channels=1, latent_dim=8), _smooth_images(4, 32, 1), make_ae2_loss()
    model = build_ae1(16, latent_dim=16, variant=kind)
    return model, _smooth_images(4, 16, 3), (None if kind == "vae" else "mse")


@pytest.mark.parametrize("kind", ["ae", "vae", "ae2"])
def test_a_few_training_steps_lower_the_loss(kind):
    # A few, not one: one step on the VAE's single-sample ELBO may go either way.
    keras.utils.set_random_seed(0)
    model, x, loss = _tiny(kind)
    model.compile(keras.optimizers.Adam(1e-3), loss=loss)
    before = model.evaluate(x, x, verbose=0, return_dict=True)["loss"]
    for _ in range(3):
        model.train_on_batch(x, x)
    after = model.evaluate(x, x, verbose=0, return_dict=True)["loss"]
    assert np.isfinite(before) and after < before


# --------------------------------------------------------------------------- save / load


@pytest.mark.parametrize("kind", ["ae", "vae", "ae2"])
def test_safe_mode_round_trip_gives_identical_outputs(kind, tmp_path):
    model, x, loss = _tiny(kind)
    model.compile(keras.optimizers.Adam(1e-3), loss=loss)
    model.train_on_batch(x, x)
    path = tmp_path / f"{kind}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(model.predict(x, verbose=0), loaded.predict(x, verbose=0))
    assert not any(isinstance(layer, keras.layers.Lambda) for layer in loaded._flatten_layers())
    if kind == "ae2":
        assert isinstance(loaded.loss, AE2Loss)
    if kind == "vae":
        assert isinstance(loaded, VariationalAutoencoder)
        np.testing.assert_array_equal(model.sample_reconstructions(x, 2, seed=1),
                                      loaded.sample_reconstructions(x, 2, seed=1))


def test_vae_call_decodes_the_mean_and_samples_vary_with_seed():
    model, x, _ = _tiny("vae")
    mean, _ = model.encoder(x)
    np.testing.assert_allclose(model(x, training=False), model.decoder(mean), atol=1e-6)
    samples = model.sample_reconstructions(x, 3, seed=0)
    assert samples.shape == (3,) + x.shape and samples.dtype == np.float32
    np.testing.assert_array_equal(samples, model.sample_reconstructions(x, 3, seed=0))
    assert not np.array_equal(samples, model.sample_reconstructions(x, 3, seed=1))
    assert not np.array_equal(samples[0], samples[1])


class _GradientTapeVAE(VariationalAutoencoder):
    """The VAE's training written out for TensorFlow: a GradientTape step whose noise is
    drawn at the seed (seed, optimizer.iterations), validation at ``validation_seed``. The
    reference for the backend-neutral ``compute_loss``: on TensorFlow both give the same
    bits."""

    def _reference_elbo(self, x, y, noise_seed, training):
        mean, log_var = self.encoder(x, training=training)
        eps = tf.random.stateless_normal(tf.shape(mean), seed=noise_seed, dtype=mean.dtype)
        recon = self.decoder(mean + tf.exp(0.5 * log_var) * eps, training=training)
        reconstruction = tf.reduce_sum(tf.square(tf.cast(y, recon.dtype) - recon), [1, 2, 3])
        kl = -0.5 * tf.reduce_sum(1.0 + log_var - tf.square(mean) - tf.exp(log_var), axis=-1)
        loss = tf.reduce_mean(reconstruction + kl)
        for tracker, value in zip(self.metrics, (loss, tf.reduce_mean(reconstruction),
                                                 tf.reduce_mean(kl)), strict=True):
            tracker.update_state(value)
        return loss

    def train_step(self, data):
        x, y = data
        step = tf.cast(self.optimizer.iterations, tf.int32)
        with tf.GradientTape() as tape:
            loss = self._reference_elbo(x, y, tf.stack([tf.constant(self.seed, tf.int32), step]),
                                        True)
        self.optimizer.apply(tape.gradient(loss, self.trainable_weights), self.trainable_weights)
        return {m.name: m.result() for m in self.metrics}

    def test_step(self, data):
        x, y = data
        self._reference_elbo(x, y, tf.constant([self.validation_seed(), 0], tf.int32), False)
        return {m.name: m.result() for m in self.metrics}


def test_vae_compute_loss_equals_the_tensorflow_gradient_tape_step_bit_for_bit():
    x = _smooth_images(8, 16, 3)

    def build(cls):
        model = build_ae1(16, latent_dim=8, variant="vae", encoder_filters=(8, 16, 32),
                          decoder_filters=(16, 8), seed=3)
        model = cls(model.encoder, model.decoder, seed=model.seed)
        model.compile(keras.optimizers.Adam(1e-3))
        return model

    histories = []
    for cls in (VariationalAutoencoder, _GradientTapeVAE):
        model = build(cls)
        first = model.fit(x[:6], x[:6], validation_data=(x[6:], x[6:]), batch_size=2,
                          epochs=2, shuffle=False, verbose=0).history
        # A second fit continues the noise at the optimizer's step, as a resume does.
        second = model.fit(x[:6], x[:6], batch_size=2, epochs=1, shuffle=False,
                           verbose=0).history
        samples = model.sample_reconstructions(x[6:], 2, seed=1)
        histories.append((first, second, samples))
    (first, second, samples), (ref_first, ref_second, ref_samples) = histories
    assert set(first) == {"loss", "reconstruction_loss", "kl_loss", "val_loss",
                          "val_reconstruction_loss", "val_kl_loss"}
    assert first == ref_first and second == ref_second
    np.testing.assert_array_equal(samples, ref_samples)


# --------------------------------------------------------------------------- AE-2 loss


def test_ae2_loss_blends_ssim_and_l1():
    rng = np.random.default_rng(0)
    y_true = rng.random((2, 24, 24, 1), dtype=np.float32)
    y_pred = np.clip(y_true + rng.normal(0, 0.1, y_true.shape), 0, 1).astype(np.float32)
    ssim_part = 1.0 - ssim_map(y_true, y_pred).mean(axis=(1, 2))
    l1_part = np.abs(y_true - y_pred).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(ssim_loss(tf.constant(y_true), tf.constant(y_pred)), ssim_part,
                               atol=1e-5)
    blended = make_ae2_loss(ssim_weight=0.7, l1_weight=0.3)
    expected = np.mean(0.7 * ssim_part + 0.3 * l1_part)
    assert float(blended(y_true, y_pred)) == pytest.approx(expected, abs=1e-5)
    assert float(make_ae2_loss()(y_true, y_true)) == pytest.approx(0.0, abs=1e-5)


def test_make_ae2_loss_validates_weights():
    with pytest.raises(ParameterError, match="all 0"):
        make_ae2_loss(0.0, 0.0)
    with pytest.raises(ParameterError, match="gms_weight"):
        make_ae2_loss(1.0, 0.0, float("nan"))
    with pytest.raises(ParameterError, match="l1_weight"):
        make_ae2_loss(1.0, -1.0)


def _gms_reference(y_true: np.ndarray, y_pred: np.ndarray, factors) -> np.ndarray:
    """Per-image mean of 1 - GMS with numpy: block means, zero-padded Prewitt (as the loss)."""
    from scipy import ndimage

    prewitt = np.array([[1, 0, -1], [1, 0, -1], [1, 0, -1]], np.float64) / 3.0
    per_scale = []
    for factor in factors:
        mags = []
        for image in (y_true, y_pred):
            gray = image.mean(axis=-1, dtype=np.float64)
            n, h, w = gray.shape
            gray = gray.reshape(n, h // factor, factor, w // factor, factor).mean(axis=(2, 4))
            gx = np.stack([ndimage.correlate(g, prewitt, mode="constant") for g in gray])
            gy = np.stack([ndimage.correlate(g, prewitt.T, mode="constant") for g in gray])
            mags.append(np.sqrt(gx ** 2 + gy ** 2))
        gms = (2 * mags[0] * mags[1] + 0.0026) / (mags[0] ** 2 + mags[1] ** 2 + 0.0026)
        per_scale.append((1 - gms).mean(axis=(1, 2)))
    return np.mean(per_scale, axis=0)


def test_gms_loss_matches_a_numpy_reference_and_has_finite_gradients():
    rng = np.random.default_rng(3)
    y_true = rng.random((2, 32, 32, 3), dtype=np.float32)
    y_pred = np.clip(y_true + rng.normal(0, 0.1, y_true.shape), 0, 1).astype(np.float32)
    ours = gms_loss(tf.constant(y_true), tf.constant(y_pred)).numpy()
    np.testing.assert_allclose(ours, _gms_reference(y_true, y_pred, (1, 2, 4, 8)), atol=1e-4)
    np.testing.assert_allclose(gms_loss(tf.constant(y_true), tf.constant(y_true)), 0.0,
                               atol=1e-6)
    flat = tf.Variable(np.full((1, 16, 16, 1), 0.5, np.float32))
    with tf.GradientTape() as tape:
        value = tf.reduce_sum(gms_loss(tf.constant(y_true[:1, :16, :16, :1]), flat))
    gradient = tape.gradient(value, flat).numpy()
    assert np.isfinite(gradient).all() and np.abs(gradient).max() > 0
    blended = make_ae2_loss(ssim_weight=0.0, gms_weight=2.0)
    assert float(blended(y_true, y_pred)) == pytest.approx(2.0 * ours.mean(), abs=1e-5)
    assert AE2Loss.from_config(blended.get_config()).gms_weight == 2.0


# --------------------------------------------------------------------------- inpainting U-Net


def test_unet_variant_of_ae2_is_fully_convolutional():
    model = build_ae2(patch_size=32, channels=3, bottleneck="unet", seed=0)
    assert model.output_shape == (None, None, None, 3)
    for size in (32, 64, 40):                            # any side divisible by 8
        out = model.predict(np.zeros((1, size, size, 3), np.float32), verbose=0)
        assert out.shape == (1, size, size, 3)
        assert out.min() >= 0.0 and out.max() <= 1.0
    with pytest.raises(ParameterError, match="divisible by 8"):
        build_ae2(patch_size=36, bottleneck="unet")


def test_unet_round_trips_in_safe_mode_and_trains(tmp_path):
    keras.utils.set_random_seed(0)
    model = build_ae2(patch_size=32, channels=1, bottleneck="unet", widths=(4, 8), seed=0)
    x = _smooth_images(4, 32, 1)
    model.compile(keras.optimizers.Adam(1e-3), loss=make_ae2_loss(l1_weight=0.5))
    before = model.evaluate(x, x, verbose=0)
    model.train_on_batch(x, x)
    assert model.evaluate(x, x, verbose=0) < before
    model.save(tmp_path / "unet.keras")
    loaded = keras.saving.load_model(tmp_path / "unet.keras", safe_mode=True)
    np.testing.assert_array_equal(model.predict(x, verbose=0), loaded.predict(x, verbose=0))
    again = build_ae2(patch_size=32, channels=1, bottleneck="unet", widths=(4, 8), seed=0)
    for a, b in zip(build_ae2(patch_size=32, channels=1, bottleneck="unet", widths=(4, 8),
                              seed=0).get_weights(), again.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_mixed_precision_only_where_a_gpu_is_seen(monkeypatch):
    import keras
    import tensorflow as tf

    from anomaly_utils.models.ae2 import build_ae2
    from anomaly_utils.models.precision import use_mixed_precision_on_gpu

    try:
        assert use_mixed_precision_on_gpu() == ("mixed_float16" if tf.config.list_physical_devices(
            "GPU") else "float32")
        monkeypatch.setattr(tf.config, "list_physical_devices",
                            lambda kind=None: ["gpu"] if kind == "GPU" else [])
        assert use_mixed_precision_on_gpu() == "mixed_float16"
        model = build_ae2(32, 3, 4, widths=[4] * 8, bottleneck="spatial")
        assert model.layers[1].compute_dtype == "float16"
        assert model.output.dtype == "float32"  # losses and maps stay in float32
    finally:
        keras.mixed_precision.set_global_policy("float32")
