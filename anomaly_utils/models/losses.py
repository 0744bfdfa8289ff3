"""Training losses: 1 - SSIM, multi-scale gradient-magnitude similarity (GMS), and AE-2's
weighted blend of SSIM, L1 and GMS; :func:`default_loss` picks a model's own.

Written in ``keras.ops``: the same losses train on TensorFlow, JAX and PyTorch, and importing
this module loads no TensorFlow under another backend.
"""

from __future__ import annotations

import sys

import keras
import numpy as np

from anomaly_utils.errors import ParameterError
from anomaly_utils.models.building import PACKAGE
from anomaly_utils.models.similarity import GMS_C, GMS_SCALES, PREWITT, ssim_map


@keras.saving.register_keras_serializable(package=PACKAGE)
def ssim_loss(y_true, y_pred):
    """Per-image ``1 - mean SSIM``: (N, H, W, C) in [0, 1] -> (N,) in [0, 2]."""
    ssim = ssim_map(keras.ops.cast(y_true, y_pred.dtype), y_pred)
    return 1.0 - keras.ops.mean(ssim, axis=(1, 2))


def gms_loss(y_true, y_pred, scales: tuple[int, ...] = GMS_SCALES):
    """Per-image mean multi-scale gradient magnitude dissimilarity (RIAD's MSGMS loss).

    The differentiable counterpart of :func:`anomaly_utils.scoring.maps.gms_error_map`: channel
    means, average pooling by each factor, Prewitt gradients (zero padding), ``1 - GMS``
    averaged over pixels and then over the scales that leave at least 3 pixels.
    (N, H, W, C) in [0, 1] -> (N,) in [0, 1].
    """
    dtype = keras.backend.standardize_dtype(y_pred.dtype)
    y_true = keras.ops.cast(y_true, dtype)
    kernel = keras.ops.convert_to_tensor(
        np.stack([PREWITT, PREWITT.T], axis=-1)[:, :, None, :], dtype=dtype)
    size = min(y_pred.shape[1], y_pred.shape[2])
    used = [factor for factor in scales if size // factor >= 3] or [1]
    total = None
    for factor in used:
        magnitudes = []
        for image in (y_true, y_pred):
            gray = keras.ops.mean(image, axis=-1, keepdims=True)
            if factor > 1:
                gray = keras.ops.average_pool(gray, factor, strides=factor, padding="valid",
                                              data_format="channels_last")
            gradients = keras.ops.conv(gray, kernel, padding="same", data_format="channels_last")
            # The epsilon keeps the square root's gradient finite on flat regions.
            magnitudes.append(keras.ops.sqrt(
                keras.ops.sum(keras.ops.square(gradients), axis=-1) + 1e-12))
        m_true, m_pred = magnitudes
        gms = (2 * m_true * m_pred + GMS_C) / (keras.ops.square(m_true)
                                               + keras.ops.square(m_pred) + GMS_C)
        term = keras.ops.mean(1.0 - gms, axis=(1, 2))
        total = term if total is None else total + term
    return total / len(used)


@keras.saving.register_keras_serializable(package=PACKAGE)
class AE2Loss(keras.losses.Loss):
    """``ssim_weight * (1 - mean SSIM) + l1_weight * mean |y - y_hat|
    + gms_weight * mean (1 - GMS)``, per image.

    SSIM comes from :func:`anomaly_utils.models.similarity.ssim_map` (11x11 Gaussian window,
    sigma 1.5, data range 1), GMS from :func:`gms_loss`. The per-image values are averaged
    over the batch.
    """

    def __init__(self, ssim_weight: float = 1.0, l1_weight: float = 0.0,
                 gms_weight: float = 0.0, name: str = "ae2_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.ssim_weight = float(ssim_weight)
        self.l1_weight = float(l1_weight)
        self.gms_weight = float(gms_weight)

    def call(self, y_true, y_pred):
        y_true = keras.ops.cast(y_true, y_pred.dtype)
        terms = []
        if self.ssim_weight:
            terms.append(self.ssim_weight * ssim_loss(y_true, y_pred))
        if self.l1_weight:
            terms.append(self.l1_weight
                         * keras.ops.mean(keras.ops.abs(y_true - y_pred), axis=(1, 2, 3)))
        if self.gms_weight:
            terms.append(self.gms_weight * gms_loss(y_true, y_pred))
        if not terms:  # every weight 0 (make_ae2_loss refuses this)
            return keras.ops.zeros_like(y_pred[:, 0, 0, 0])
        loss = terms[0]
        for term in terms[1:]:
            loss = loss + term
        return loss

    def get_config(self):
        config = super().get_config()
        config.update({"ssim_weight": self.ssim_weight, "l1_weight": self.l1_weight,
                       "gms_weight": self.gms_weight})
        return config


def make_ae2_loss(ssim_weight: float = 1.0, l1_weight: float = 0.0,
                  gms_weight: float = 0.0) -> AE2Loss:
    """The AE-2 training loss: SSIM loss, optionally blended with L1 and GMS.

    Args:
        ssim_weight: weight of ``1 - mean SSIM`` (>= 0).
        l1_weight: weight of the mean absolute error (>= 0).
        gms_weight: weight of the multi-scale gradient magnitude dissimilarity
            (:func:`gms_loss`, >= 0); at least one of the three weights > 0.

    Returns:
        A registered, serializable :class:`AE2Loss`; a model compiled with it saves and
        loads in safe mode.

    Example:
        >>> make_ae2_loss(l1_weight=0.5).get_config()["l1_weight"]
        0.5
    """
    weights = (("ssim_weight", ssim_weight), ("l1_weight", l1_weight),
               ("gms_weight", gms_weight))
    for name, value in weights:
        if not isinstance(value, (int, float)) or not np.isfinite(value) or value < 0:
            raise ParameterError(f"{name} must be a finite number >= 0, got {value!r}")
    if ssim_weight == 0 and l1_weight == 0 and gms_weight == 0:
        raise ParameterError("ssim_weight, l1_weight and gms_weight are all 0, so the loss is "
                             "constant", fix="give at least one of them a positive weight")
    return AE2Loss(ssim_weight, l1_weight, gms_weight)


def default_loss(model: keras.Model):
    """The loss a lab model trains on: ``None`` for the VAE (its own ELBO), the SSIM loss
    for AE-2 (a model named ``ae2``), MSE otherwise."""
    # A VAE exists only once models.ae1 is loaded; looking it up instead of importing it keeps
    # this module free of ae1's TensorFlow import, so the losses load under any backend.
    ae1 = sys.modules.get("anomaly_utils.models.ae1")
    if ae1 is not None and isinstance(model, ae1.VariationalAutoencoder):
        return None
    if model.name == "ae2":
        return make_ae2_loss()
    return "mse"
