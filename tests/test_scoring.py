"""Tests for anomaly_utils.scoring: SSIM vs skimage and tf.image.ssim, maps, scores, windows."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage
from skimage.metrics import structural_similarity

from anomaly_utils.errors import ParameterError
from anomaly_utils.models.similarity import (
    _blur_matrix,
    _blur_matrix_dynamic,
    _gaussian_kernel,
    _matmul,
    _split_tf32,
    ssim_map,
)
from anomaly_utils.scoring.map_kinds import map_components
from anomaly_utils.scoring.maps import (
    absolute_error_map,
    anomaly_map,
    gms_error_map,
    image_scores,
    lowpass_error_map,
    resize_maps,
    squared_error_map,
)
from anomaly_utils.scoring.reconstruction import (
    _window_starts,
    inpaint_reconstruct,
    naive_sliding_window_reconstruct,
    reconstruct,
    sliding_window_reconstruct,
)
from anomaly_utils.training.masks import grid_cells, grid_mask_sets

TOL = 1e-4


def skimage_ssim_map(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The slow, obviously-correct reference: skimage per image, in float64."""
    return np.stack([
        structural_similarity(a.astype(np.float64), b.astype(np.float64), gaussian_weights=True,
                              sigma=1.5, use_sample_covariance=False, data_range=1,
                              channel_axis=-1, full=True)[1].mean(-1)
        for a, b in zip(x, y, strict=True)
    ])


def noisy_copy(x: np.ndarray, rng: np.random.Generator, noise: float = 0.1) -> np.ndarray:
    return np.clip(x + noise * rng.standard_normal(x.shape), 0.0, 1.0).astype(np.float32)


def structured_pair(shape: tuple[int, ...], rng: np.random.Generator) -> tuple[np.ndarray,
                                                                               np.ndarray]:
    """Smooth images with flat patches (the float32 worst case) and a blurred, noisy copy."""
    x = ndimage.gaussian_filter(rng.random(shape), sigma=(0, 3, 3, 0))
    x = (x - x.min()) / (x.max() - x.min())
    x[:, :12, :12] = 0.8
    x[:, -9:, -7:] = 0.0
    y = noisy_copy(ndimage.gaussian_filter(x, sigma=(0, 1, 1, 0)), rng, noise=0.02)
    y[:, :12, :12] = 0.8
    return x.astype(np.float32), y


# ---------------------------------------------------------------------------------- ssim_map


@pytest.mark.parametrize("n", [1, 3, 5, 6, 11, 37])
def test_blur_matrix_is_scipy_reflect_gaussian(n):
    taps = _gaussian_kernel(1.5, 5)
    expected = ndimage.correlate1d(np.eye(n), taps, axis=0, mode="reflect")
    np.testing.assert_allclose(_blur_matrix(n, 1.5, 5), expected, atol=1e-7)
    dynamic = _blur_matrix_dynamic(tf.constant(n), 1.5, 5).numpy()
    np.testing.assert_allclose(dynamic, expected, atol=1e-7)


def test_gaussian_taps_match_scipy():
    impulse = np.zeros(21)
    impulse[10] = 1.0
    scipy_taps = ndimage.gaussian_filter1d(impulse, 1.5, truncate=3.5)[5:16]
    np.testing.assert_allclose(_gaussian_kernel(1.5, 5), scipy_taps, atol=1e-12)


@pytest.mark.parametrize("shape", [(3, 37, 50, 3), (2, 37, 50, 1), (2, 64, 64, 1),
                                   (2, 64, 64, 3), (2, 128, 128, 3), (1, 11, 16, 3)])
def test_ssim_map_matches_skimage_on_random_images(shape):
    rng = np.random.default_rng(sum(shape))
    x = rng.random(shape, dtype=np.float32)
    y = rng.random(shape, dtype=np.float32)
    out = ssim_map(x, y)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == shape[:3]
    np.testing.assert_allclose(out, skimage_ssim_map(x, y), rtol=0, atol=TOL)


@pytest.mark.parametrize("shape", [(2, 37, 50, 3), (2, 64, 64, 1), (1, 128, 128, 3)])
def test_ssim_map_matches_skimage_on_structured_images(shape):
    rng = np.random.default_rng(7)
    x, y = structured_pair(shape, rng)
    out = ssim_map(x, y)
    expected = skimage_ssim_map(x, y)
    np.testing.assert_allclose(out, expected, rtol=0, atol=TOL)
    assert expected.min() < 0.9, "the fixture must contain dissimilar regions"


def test_ssim_map_matches_skimage_on_binary_images():
    # Flat black and white areas far from the plane mean are the float32 worst case.
    rng = np.random.default_rng(3)
    half = np.zeros((2, 40, 48, 3), dtype=np.float32)
    half[:, :, 24:] = 1.0
    square = np.zeros((2, 40, 48, 1), dtype=np.float32)
    square[:, 10:25, 12:30] = 1.0
    for x, y in [(half, noisy_copy(half, rng, noise=0.001)), (square, 0.999 * square)]:
        np.testing.assert_allclose(ssim_map(x, y), skimage_ssim_map(x, y), rtol=0, atol=TOL)


def test_ssim_map_float64_and_float32_inputs_agree():
    rng = np.random.default_rng(1)
    x, y = structured_pair((2, 40, 40, 3), rng)
    np.testing.assert_allclose(ssim_map(x.astype(np.float64), y.astype(np.float64)),
                               ssim_map(x, y), atol=1e-6)


def test_ssim_map_max_val_scales_like_skimage():
    rng = np.random.default_rng(2)
    x = rng.random((1, 32, 32, 1), dtype=np.float32)
    y = noisy_copy(x, rng)
    expected = structural_similarity(255.0 * x[0].astype(np.float64), 255.0 * y[0],
                                     gaussian_weights=True, sigma=1.5,
                                     use_sample_covariance=False, data_range=255,
                                     channel_axis=-1, full=True)[1].mean(-1)
    np.testing.assert_allclose(ssim_map(255.0 * x, 255.0 * y, max_val=255.0)[0], expected,
                               atol=TOL)


def test_identical_images_give_one():
    x = np.random.default_rng(3).random((2, 24, 31, 3), dtype=np.float32)
    x[:, :10] = 0.5
    np.testing.assert_allclose(ssim_map(x, x), 1.0, atol=1e-6)


def test_interior_mean_equals_tf_image_ssim():
    # tf.image.ssim uses the same 11-tap window with VALID padding, so its score is the mean
    # of the full map over the interior that lies 5 pixels (the window radius) from each border.
    rng = np.random.default_rng(4)
    x, y = structured_pair((3, 48, 40, 3), rng)
    tf_scores = tf.image.ssim(tf.constant(x), tf.constant(y), max_val=1.0).numpy()
    interior = ssim_map(x, y)[:, 5:-5, 5:-5].mean(axis=(1, 2))
    np.testing.assert_allclose(interior, tf_scores, atol=TOL)
    assert not np.allclose(ssim_map(x, y).mean(axis=(1, 2)), tf_scores, atol=TOL)


def test_tensor_input_returns_tensor_equal_to_numpy():
    rng = np.random.default_rng(5)
    x, y = structured_pair((2, 37, 50, 3), rng)
    out = ssim_map(tf.constant(x), tf.constant(y))
    assert tf.is_tensor(out) and out.dtype == tf.float32 and tuple(out.shape) == (2, 37, 50)
    np.testing.assert_allclose(out.numpy(), ssim_map(x, y), atol=1e-6)


def test_graph_mode_dynamic_shapes_and_xla():
    rng = np.random.default_rng(6)
    x, y = structured_pair((2, 37, 50, 3), rng)
    expected = skimage_ssim_map(x, y)
    spec = tf.TensorSpec((None, None, None, 3), tf.float32)
    dynamic = tf.function(ssim_map, input_signature=(spec, spec))
    np.testing.assert_allclose(dynamic(x, y).numpy(), expected, atol=TOL)
    jitted = tf.function(ssim_map, jit_compile=True)
    np.testing.assert_allclose(jitted(tf.constant(x), tf.constant(y)).numpy(), expected, atol=TOL)


def test_gradient_is_finite_and_nonzero():
    rng = np.random.default_rng(8)
    x, y = structured_pair((2, 32, 32, 3), rng)
    y_var = tf.Variable(y)
    with tf.GradientTape() as tape:
        loss = 1.0 - tf.reduce_mean(ssim_map(tf.constant(x), y_var))
    grad = tape.gradient(loss, y_var).numpy()
    assert np.isfinite(grad).all()
    assert np.abs(grad).max() > 0


def test_gradient_matches_finite_difference():
    rng = np.random.default_rng(9)
    x = rng.random((1, 16, 16, 1), dtype=np.float64)
    y = noisy_copy(x, rng).astype(np.float64)
    y_var = tf.Variable(tf.constant(y, tf.float32))
    with tf.GradientTape() as tape:
        total = tf.reduce_sum(ssim_map(tf.constant(x, tf.float32), y_var))
    grad = tape.gradient(total, y_var).numpy()
    eps = 1e-3
    for idx in [(0, 0, 0, 0), (0, 7, 9, 0), (0, 15, 3, 0)]:
        up, down = y.copy(), y.copy()
        up[idx] += eps
        down[idx] -= eps
        numeric = (skimage_ssim_map(x, up).sum() - skimage_ssim_map(x, down).sum()) / (2 * eps)
        assert grad[idx] == pytest.approx(numeric, rel=2e-2, abs=2e-3)


def test_works_as_keras_loss():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(10)
    images = rng.random((8, 16, 16, 1), dtype=np.float32)
    model = keras.Sequential([keras.Input((16, 16, 1)),
                              keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid")])

    def ssim_loss(y_true, y_pred):
        return 1.0 - keras.ops.mean(ssim_map(y_true, y_pred), axis=(1, 2))

    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=ssim_loss)
    history = model.fit(images, images, batch_size=4, epochs=3, verbose=0, shuffle=False)
    losses = history.history["loss"]
    assert np.isfinite(losses).all()
    assert losses[-1] < losses[0]


def test_tf32_split_is_exact_and_precise_matmul_agrees():
    rng = np.random.default_rng(11)
    t = tf.constant(rng.random((64, 64), dtype=np.float32))
    hi, lo = _split_tf32(t)
    assert (tf.bitcast(hi, tf.int32).numpy() & 8191 == 0).all()
    np.testing.assert_array_equal((hi + lo).numpy(), t.numpy())
    m = tf.constant(_blur_matrix(64, 1.5, 5))
    np.testing.assert_allclose(_matmul(m, t, precise=True).numpy(),
                               _matmul(m, t, precise=False).numpy(), atol=1e-6)


@pytest.mark.parametrize("kwargs", [{"win_size": 10}, {"win_size": 1}, {"win_size": 11.0},
                                    {"sigma": 0}, {"sigma": float("nan")}, {"max_val": -1}])
def test_ssim_map_rejects_bad_parameters(kwargs):
    x = np.zeros((1, 16, 16, 1), dtype=np.float32)
    with pytest.raises(ParameterError):
        ssim_map(x, x, **kwargs)


def test_ssim_map_rejects_bad_shapes():
    with pytest.raises(ParameterError, match="same shape"):
        ssim_map(np.zeros((1, 16, 16, 1)), np.zeros((1, 16, 15, 1)))
    with pytest.raises(ParameterError, match=r"\(N, H, W, C\)"):
        ssim_map(np.zeros((16, 16, 1)), np.zeros((16, 16, 1)))
    with pytest.raises(ParameterError, match="same shape"):
        ssim_map(tf.zeros((1, 16, 16, 3)), tf.zeros((1, 16, 16, 1)))


# ------------------------------------------------------------------------- maps and scores


def test_error_maps_are_channel_means():
    rng = np.random.default_rng(12)
    x = rng.random((2, 5, 6, 3), dtype=np.float32)
    y = rng.random((2, 5, 6, 3), dtype=np.float32)
    for i, j in [(0, 0), (1, 4)]:
        diff = x[1, i, j] - y[1, i, j]
        assert squared_error_map(x, y)[1, i, j] == pytest.approx(np.mean(diff ** 2), rel=1e-6)
        assert absolute_error_map(x, y)[1, i, j] == pytest.approx(np.mean(np.abs(diff)),
                                                                  rel=1e-6)
    assert squared_error_map(x, y).dtype == np.float32


def test_anomaly_map_kinds_and_blends():
    rng = np.random.default_rng(13)
    x, recon = structured_pair((2, 32, 40, 3), rng)
    ssim_part = np.clip(1.0 - skimage_ssim_map(x, recon), 0.0, 2.0)
    l1 = absolute_error_map(x, recon)
    l2 = squared_error_map(x, recon)
    np.testing.assert_allclose(anomaly_map(x, recon, "ssim"), ssim_part, atol=TOL)
    np.testing.assert_allclose(anomaly_map(x, recon, "l1"), l1, atol=1e-7)
    np.testing.assert_allclose(anomaly_map(x, recon, "l2"), l2, atol=1e-7)
    np.testing.assert_allclose(anomaly_map(x, recon, "ssim+l1"), 0.5 * ssim_part + 0.5 * l1,
                               atol=TOL)
    blended = anomaly_map(x, recon, "ssim+l2", weights={"l2": 3.0, "ssim": 0.25})
    np.testing.assert_allclose(blended, 0.25 * ssim_part + 3.0 * l2, atol=TOL)
    np.testing.assert_allclose(anomaly_map(x, recon, "l2+l1", weights=[2.0, 0.0]), 2.0 * l2,
                               atol=1e-7)
    out = anomaly_map(x, recon, "ssim+l1+l2")
    assert out.dtype == np.float32 and out.shape == (2, 32, 40) and out.min() >= 0


def test_inline_weights_equal_passed_weights_and_tolerate_spaces():
    rng = np.random.default_rng(14)
    x, recon = structured_pair((2, 32, 32, 3), rng)
    assert map_components(" 0.5 * ssim + 2*l1 ") == {"ssim": 0.5, "l1": 2.0}
    assert map_components("ssim+gms+lowpass") == pytest.approx(
        {"ssim": 1 / 3, "gms": 1 / 3, "lowpass": 1 / 3})
    np.testing.assert_array_equal(anomaly_map(x, recon, "0.25*ssim+3*l2"),
                                  anomaly_map(x, recon, "ssim+l2",
                                              weights={"ssim": 0.25, "l2": 3.0}))


def test_lowpass_map_is_the_blurred_signed_difference():
    rng = np.random.default_rng(16)
    x, recon = structured_pair((2, 24, 32, 3), rng)
    expected = np.abs(ndimage.gaussian_filter((x - recon).astype(np.float64),
                                              sigma=(0, 2.0, 2.0, 0))).mean(-1)
    ours = lowpass_error_map(x, recon)
    assert ours.dtype == np.float32 and ours.shape == (2, 24, 32)
    np.testing.assert_allclose(ours, expected, atol=1e-6)
    np.testing.assert_allclose(lowpass_error_map(x, recon, sigma=4.0),
                               np.abs(ndimage.gaussian_filter(
                                   (x - recon).astype(np.float64), sigma=(0, 4, 4, 0))).mean(-1),
                               atol=1e-6)
    np.testing.assert_array_equal(anomaly_map(x, recon, "lowpass"), ours)
    both = anomaly_map(x, recon, "0.5*ssim+0.5*gms+1*lowpass")
    np.testing.assert_allclose(both, 0.5 * anomaly_map(x, recon, "ssim")
                               + 0.5 * gms_error_map(x, recon) + ours, atol=1e-6)
    with pytest.raises(ParameterError, match="sigma"):
        lowpass_error_map(x, recon, sigma=0)


def test_lowpass_map_ignores_a_weave_out_of_phase_but_not_a_stain():
    """What it is for: a texture reconstructed one thread off leaves a residual of
    alternating sign, which the blur cancels; a colour stain keeps its full size, while
    L1 rates both alike."""
    rows, cols = np.indices((48, 48))
    weave = (0.5 + 0.2 * ((rows // 2 + cols // 2) % 2 * 2 - 1)).astype(np.float32)
    x = np.repeat(weave[None, ..., None], 3, axis=-1)
    shifted = np.roll(x, 2, axis=2)  # one thread off: every pixel differs by 0.4
    stained = x.copy()
    stained[:, 16:32, 16:32, 0] += 0.2  # a red stain, 16 x 16 pixels
    weave_err, stain_err = lowpass_error_map(x, shifted), lowpass_error_map(x, stained)
    assert absolute_error_map(x, shifted).mean() > absolute_error_map(x, stained).max()
    assert weave_err[:, 8:40, 8:40].max() < 0.02
    assert stain_err[0, 24, 24] == pytest.approx(0.2 / 3, abs=2e-3)


def test_gms_map_at_one_scale_matches_skimage_prewitt():
    """1 - GMS from skimage's Prewitt magnitude (which is ours / sqrt 2), c = 0.0026."""
    from skimage.filters import prewitt

    rng = np.random.default_rng(21)
    x, recon = structured_pair((2, 24, 28, 3), rng)
    ours = gms_error_map(x, recon, scales=(1,))
    for i in range(2):
        a, b = (np.sqrt(2.0) * prewitt(img[i].mean(axis=-1).astype(np.float64), mode="reflect")
                for img in (x, recon))
        expected = 1.0 - (2 * a * b + 0.0026) / (a * a + b * b + 0.0026)
        np.testing.assert_allclose(ours[i], expected, atol=1e-5)


def test_gms_map_ignores_brightness_and_flags_a_vanished_edge_at_every_scale():
    x = np.zeros((1, 64, 64, 1), dtype=np.float32)
    x[:, :, 32:] = 0.8  # a vertical edge at column 32
    np.testing.assert_allclose(gms_error_map(x, x + 0.1), 0.0, atol=1e-6)  # brighter: no error
    flat = np.full_like(x, 0.4)
    multi, single = gms_error_map(x, flat), gms_error_map(x, flat, scales=(1,))
    assert multi.shape == (1, 64, 64) and multi.dtype == np.float32
    assert multi[0, 10, 31] > 0.5 and single[0, 10, 31] > 0.99  # on the edge
    assert single[0, 10, 5] == 0.0 and multi[0, 10, 5] == 0.0  # far from it, at every scale
    assert multi[0, 10, 26] > 0.0 and single[0, 10, 26] == 0.0  # coarse scales reach further
    np.testing.assert_array_equal(anomaly_map(x, flat, "gms"), multi)


def test_gms_map_refuses_images_too_small_for_any_scale():
    x = np.zeros((1, 2, 2, 1), dtype=np.float32)
    with pytest.raises(ParameterError, match="too small for a GMS map"):
        gms_error_map(x, x)


def test_anomaly_map_ssim_is_zero_for_perfect_reconstruction():
    x = np.random.default_rng(14).random((1, 20, 20, 3), dtype=np.float32)
    np.testing.assert_allclose(anomaly_map(x, x, "ssim"), 0.0, atol=1e-6)


def test_anomaly_map_smoothing():
    x = np.zeros((2, 33, 33, 1), dtype=np.float32)
    recon = x.copy()
    recon[0, 16, 16] = 1.0
    raw = anomaly_map(x, recon, "l1")
    smooth = anomaly_map(x, recon, "l1", smooth_sigma=2.0)
    np.testing.assert_allclose(smooth[0], ndimage.gaussian_filter(raw[0], 2.0), atol=1e-7)
    assert smooth[0].argmax() == 16 * 33 + 16
    assert smooth[0].max() < raw[0].max()
    assert smooth[0].sum() == pytest.approx(raw[0].sum(), rel=1e-4)
    np.testing.assert_array_equal(smooth[1], 0.0)
    np.testing.assert_array_equal(anomaly_map(x, recon, "l1", smooth_sigma=0), raw)


@pytest.mark.parametrize("kwargs", [{"kind": "ssim+ssim"}, {"kind": "mse"}, {"kind": ""},
                                    {"kind": "l1+l2", "weights": [1.0]},
                                    {"kind": "l1+l2", "weights": {"l1": 1.0}},
                                    {"kind": "l1", "weights": [-1.0]},
                                    {"kind": "l1", "weights": [0.0]},
                                    {"kind": "l1", "smooth_sigma": -1},
                                    {"kind": "0.5*ssim+l1"},
                                    {"kind": "0.5*ssim+0.5*l1", "weights": [1.0, 1.0]},
                                    {"kind": "half*ssim"},
                                    {"kind": "-1*l1+2*l2"},
                                    {"kind": "inf*l1"},
                                    {"kind": "1*lowpass+2*lowpass"}])
def test_anomaly_map_rejects_bad_arguments(kwargs):
    x = np.zeros((1, 16, 16, 1), dtype=np.float32)
    with pytest.raises(ParameterError):
        anomaly_map(x, x, **kwargs)


def test_image_scores_methods():
    rng = np.random.default_rng(15)
    maps = rng.random((4, 10, 20), dtype=np.float32)
    flat = maps.reshape(4, -1)
    np.testing.assert_allclose(image_scores(maps, "max"), flat.max(1))
    np.testing.assert_allclose(image_scores(maps, "mean"), flat.mean(1), rtol=1e-6)
    top_5pct = np.sort(flat, axis=1)[:, -10:].mean(1)
    np.testing.assert_allclose(image_scores(maps, "topk", topk_percent=5.0), top_5pct, rtol=1e-6)
    np.testing.assert_allclose(image_scores(maps, "topk", topk_percent=100), flat.mean(1),
                               rtol=1e-6)
    np.testing.assert_allclose(image_scores(maps, "topk", topk_percent=0.01), flat.max(1))
    assert image_scores(maps).dtype == np.float32 and image_scores(maps).shape == (4,)


@pytest.mark.parametrize("kwargs", [{"method": "median"}, {"method": "topk", "topk_percent": 0},
                                    {"method": "topk", "topk_percent": 101}])
def test_image_scores_rejects_bad_arguments(kwargs):
    with pytest.raises(ParameterError):
        image_scores(np.zeros((1, 4, 4)), **kwargs)
    with pytest.raises(ParameterError, match=r"\(N, H, W\)"):
        image_scores(np.zeros((4, 4)))


def test_resize_maps():
    rng = np.random.default_rng(16)
    maps = rng.random((3, 16, 24), dtype=np.float32)
    out = resize_maps(maps, 32)
    assert out.shape == (3, 32, 32) and out.dtype == np.float32
    assert resize_maps(maps, (8, 12)).shape == (3, 8, 12)
    np.testing.assert_allclose(resize_maps(np.full((2, 7, 9), 0.25), 13), 0.25, atol=1e-7)
    assert out.min() >= maps.min() - 1e-6 and out.max() <= maps.max() + 1e-6
    np.testing.assert_allclose(resize_maps(maps, (16, 24)), maps, atol=1e-6)
    with pytest.raises(ParameterError):
        resize_maps(maps, 0)


# ------------------------------------------------------------------------------ reconstruct


def identity_model(patch_size: int, channels: int) -> keras.Model:
    return keras.Sequential([keras.Input((patch_size, patch_size, channels)),
                             keras.layers.Identity()])


def tiny_conv_model(patch_size: int, channels: int) -> keras.Model:
    keras.utils.set_random_seed(17)
    return keras.Sequential([
        keras.Input((patch_size, patch_size, channels)),
        keras.layers.Conv2D(4, 3, padding="same", activation="relu"),
        keras.layers.Conv2D(channels, 3, padding="same", activation="sigmoid"),
    ])


def test_reconstruct_batches_every_image():
    rng = np.random.default_rng(18)
    images = rng.random((7, 12, 12, 3), dtype=np.float32)
    out = reconstruct(identity_model(12, 3), images, batch_size=3)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, images)
    model = tiny_conv_model(12, 3)
    np.testing.assert_allclose(reconstruct(model, images, batch_size=4),
                               np.asarray(model(images, training=False)), atol=1e-6)


@pytest.mark.parametrize(("size", "patch", "stride"), [
    ((32, 32), 16, 8),   # stride divides the size
    ((37, 50), 16, 7),   # it does not: the last windows are shifted to the border
    ((20, 20), 20, 3),   # one window
    ((30, 25), 9, 9),    # windows touch without overlap, except the border-shifted ones
])
def test_sliding_window_identity_reassembles_input(size, patch, stride):
    rng = np.random.default_rng(19)
    images = rng.random((3, *size, 2), dtype=np.float32)
    out = sliding_window_reconstruct(identity_model(patch, 2), images, patch, stride,
                                     batch_size=5)
    assert out.shape == images.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, images, atol=1e-6)


def test_window_starts_cover_the_border():
    assert _window_starts(37, 16, 7) == [0, 7, 14, 21]
    assert _window_starts(32, 16, 8) == [0, 8, 16]
    assert _window_starts(16, 16, 1) == [0]


def test_sliding_window_averages_overlaps():
    # A pointwise model gives the same value from every window covering a pixel, so the
    # overlap average must equal the pointwise result wherever the windows overlap.
    rng = np.random.default_rng(20)
    images = rng.random((2, 29, 29, 1), dtype=np.float32)
    model = keras.Sequential([keras.Input((10, 10, 1)), keras.layers.Rescaling(0.5, offset=0.1)])
    out = sliding_window_reconstruct(model, images, 10, 3)
    np.testing.assert_allclose(out, 0.5 * images + 0.1, atol=1e-6)


def test_naive_and_batched_sliding_window_agree():
    rng = np.random.default_rng(21)
    images = rng.random((2, 30, 26, 3), dtype=np.float32)
    model = tiny_conv_model(12, 3)
    batched = sliding_window_reconstruct(model, images, 12, 5, batch_size=7)
    naive = naive_sliding_window_reconstruct(model, images, 12, 5)
    np.testing.assert_allclose(batched, naive, atol=1e-5)
    # Border effects of the conv differ per window, so the overlap average is not the
    # single-pass reconstruction; this guards against a reassembly that ignores the windows.
    assert not np.allclose(batched, images, atol=1e-3)


@pytest.mark.parametrize("kwargs", [{"patch_size": 40}, {"stride": 0}, {"stride": 17},
                                    {"batch_size": 0}, {"patch_size": 8.0}])
def test_sliding_window_rejects_bad_arguments(kwargs):
    images = np.zeros((1, 32, 32, 1), dtype=np.float32)
    args = {"patch_size": 16, "stride": 8, **kwargs}
    with pytest.raises(ParameterError):
        sliding_window_reconstruct(identity_model(16, 1), images, **args)
    with pytest.raises(ParameterError):
        naive_sliding_window_reconstruct(identity_model(16, 1), images, **args)


def test_sliding_window_rejects_model_with_other_output_size():
    model = keras.Sequential([keras.Input((16, 16, 1)), keras.layers.MaxPooling2D(2)])
    with pytest.raises(ParameterError, match="same size"):
        sliding_window_reconstruct(model, np.zeros((1, 32, 32, 1), np.float32), 16, 8)


def test_reconstruct_rejects_bad_input():
    with pytest.raises(ParameterError, match=r"\(N, H, W, C\)"):
        reconstruct(identity_model(8, 1), np.zeros((8, 8, 1)))
    with pytest.raises(ParameterError):
        reconstruct(identity_model(8, 1), np.zeros((1, 8, 8, 1)), batch_size=0)


# ------------------------------------------------------------------------ inpainting masks


@pytest.mark.parametrize(("height", "width", "cell", "sets"), [(16, 16, 4, 3), (13, 20, 3, 2),
                                                               (8, 8, 8, 4)])
def test_grid_mask_sets_partition_the_image_into_whole_cells(height, width, cell, sets):
    masks = grid_mask_sets(height, width, cell, sets, seed=1)
    assert masks.shape == (sets, height, width) and masks.dtype == np.float32
    np.testing.assert_array_equal(masks.sum(axis=0), 1.0)       # every pixel hidden once
    for mask in masks:                                          # constant inside each cell
        for top in range(0, height, cell):
            for left in range(0, width, cell):
                block = mask[top:top + cell, left:left + cell]
                assert block.min() == block.max()
    np.testing.assert_array_equal(masks, grid_mask_sets(height, width, cell, sets, 1))


def test_grid_mask_sets_hide_about_one_share_each_and_depend_on_seed():
    masks = grid_mask_sets(256, 256, 4, 3, seed=0)
    np.testing.assert_allclose(masks.mean(axis=(1, 2)), 1 / 3, atol=0.03)
    assert not np.array_equal(masks, grid_mask_sets(256, 256, 4, 3, seed=1))


def test_grid_cells_scale_with_the_patch():
    assert grid_cells(64) == (4, 8, 16)
    assert grid_cells(128) == (8, 16, 32)


def whole_image_identity(channels: int) -> keras.Model:
    return keras.Sequential([keras.Input((None, None, channels)), keras.layers.Identity()])


def test_inpaint_reconstruct_never_lets_a_pixel_see_itself():
    # A model that copies its input can only return the zeros it was given where a pixel
    # was hidden, so an inpainted reconstruction of the identity is all zeros.
    images = np.random.default_rng(3).random((2, 16, 16, 3), dtype=np.float32) + 0.1
    out = inpaint_reconstruct(whole_image_identity(3), images, cell=4)
    assert out.shape == images.shape and out.dtype == np.float32
    np.testing.assert_array_equal(out, 0.0)


def test_inpaint_reconstruct_keeps_each_pass_inside_its_mask():
    # A 3x3 box blur of the masked input: every pixel's value must come from the pass in
    # which its own cell was hidden.
    blur = keras.Sequential([keras.Input((None, None, 1)),
                             keras.layers.AveragePooling2D(3, 1, "same")])
    images = np.random.default_rng(4).random((1, 12, 12, 1), dtype=np.float32)
    masks = grid_mask_sets(12, 12, 4, 3, seed=0)[..., None]
    expected = sum(np.asarray(blur(images * (1 - m)), np.float32) * m for m in masks)
    out = inpaint_reconstruct(blur, images, cell=4, sets=3, seed=0)
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kwargs", [{"cell": 0}, {"cell": 2.5}, {"sets": 0}])
def test_inpaint_reconstruct_rejects_bad_arguments(kwargs):
    args = {"cell": 4, "sets": 3, **kwargs}
    with pytest.raises(ParameterError):
        inpaint_reconstruct(whole_image_identity(1), np.zeros((1, 8, 8, 1)), **args)


def test_inpaint_reconstruct_refuses_a_fixed_size_patch_model():
    with pytest.raises(ParameterError, match="fully convolutional"):
        inpaint_reconstruct(identity_model(8, 1), np.zeros((1, 16, 16, 1)), cell=4)
