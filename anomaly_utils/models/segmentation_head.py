"""AE-2's learned anomaly map: a discriminative U-Net that looks at an image and its
reconstruction side by side and predicts, per pixel, the probability of an anomaly (after
DRAEM, Zavrtanik et al., ICCV 2021).

1. :func:`build_segmentation_head` is the U-Net: input the channel-wise concatenation of the
   image and AE-2's reconstruction, output a one-channel probability map at the input's size.
2. :func:`build_head_trainer` wraps AE-2 and the head in one model for training on synthetic
   anomalies (:mod:`anomaly_utils.data.training_anomalies`): two-stage (AE-2 frozen, only the
   head learns) or joint (both learn; AE-2 also learns to restore the clean image).
3. :func:`head_of` takes the head back out of a trained (or loaded) trainer for scoring, where
   the reconstruction comes from AE-2's sliding window over the whole image.

Example:
    >>> head = build_segmentation_head(channels=3, widths=(4, 8))
    >>> head.output_shape
    (None, None, None, 1)
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import keras

from anomaly_utils.errors import ParameterError
from anomaly_utils.models.building import (
    check_positive_int,
    check_widths,
    remember_builder,
    seeded_initializer,
)
from anomaly_utils.models.vocabulary import HEAD_TRAININGS

HEAD_BUILDER = "build_segmentation_head"
HEAD_LAYER = "segmentation_head"
HEAD_WIDTHS = (16, 32, 64)
# Batch norm's moving statistics follow the last ~10 steps (PyTorch's default, which DRAEM
# trains with); Keras' 0.99 lags ~100 steps, several of the head's short epochs, behind
# weights that still move fast, and the inference-mode maps then swing between epochs.
BN_MOMENTUM = 0.9
# The paper's widths: base 64 doubling over five levels (its discriminative network).
PAPER_HEAD_WIDTHS = (64, 128, 256, 512, 512)


def build_segmentation_head(channels: int = 3, widths: Sequence[int] = HEAD_WIDTHS, *,
                            seed: int = 0) -> keras.Model:
    """The discriminative U-Net of the head.

    Each encoder level is two 3x3 convs (batch normalisation with momentum
    :data:`BN_MOMENTUM`, ReLU) then 2x2 max pooling;
    the bottom level two such convs of ``widths[-1]``; each decoder level upsamples 2x, convs,
    concatenates the encoder features of its level and convs twice; a 1x1 conv with a
    sigmoid gives the probability.

    Args:
        channels: channels of the image (1 grayscale, 3 RGB); the input has twice as many.
        widths: filters per level, finest first; spatial sides must be divisible by
            2 ** (len(widths) - 1).
        seed: seeds every kernel initializer.

    Returns:
        An uncompiled keras.Model mapping float32 (N, H, W, 2 * channels), the image and its
        reconstruction in [0, 1], to (N, H, W, 1) anomaly probabilities in [0, 1]. Being
        fully convolutional it is trained on patches and applied to whole images.
    """
    channels = check_positive_int("channels", channels)
    widths = check_widths("widths", widths)
    kwargs = {"channels": channels, "widths": list(widths), "seed": seed}
    layer = itertools.count()

    def block(x, width, name):
        for part in ("a", "b"):
            x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False,
                                    kernel_initializer=seeded_initializer(seed, next(layer)),
                                    name=f"{name}_{part}")(x)
            x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM,
                                                name=f"{name}_{part}_norm")(x)
            x = keras.layers.ReLU(name=f"{name}_{part}_act")(x)
        return x

    inputs = keras.Input((None, None, 2 * channels), name="image_and_reconstruction")
    x, skips = inputs, []
    for level, width in enumerate(widths[:-1]):
        x = block(x, width, f"enc{level}")
        skips.append(x)
        x = keras.layers.MaxPooling2D(name=f"pool{level}")(x)
    x = block(x, widths[-1], "bottom")
    for level in range(len(widths) - 2, -1, -1):
        x = keras.layers.UpSampling2D(name=f"up{level}")(x)
        x = keras.layers.Conv2D(widths[level], 3, padding="same", activation="relu",
                                kernel_initializer=seeded_initializer(seed, next(layer)),
                                name=f"dec{level}_up")(x)
        x = keras.layers.Concatenate(name=f"skip{level}")([x, skips[level]])
        x = block(x, widths[level], f"dec{level}")
    outputs = keras.layers.Conv2D(1, 1, activation="sigmoid", dtype="float32",
                                  kernel_initializer=seeded_initializer(seed, next(layer)),
                                  name="anomaly_probability")(x)
    model = keras.Model(inputs, outputs, name=HEAD_LAYER)
    return remember_builder(model, HEAD_BUILDER, kwargs)


def build_head_trainer(reconstructor: keras.Model, head: keras.Model,
                       training: str = "two_stage") -> keras.Model:
    """AE-2 and the head as one model, for training on synthetic anomalies.

    Args:
        reconstructor: a trained AE-2 (patch model), (N, p, p, C) -> (N, p, p, C).
        head: from :func:`build_segmentation_head` with the same ``channels``.
        training: "two_stage": AE-2 is frozen (``trainable = False``), only the head learns;
            "joint": both learn, AE-2 restoring the clean patch under an SSIM + L2 loss while
            the head learns the mask.

    Returns:
        A keras.Model from corrupted patches (N, p, p, C) to the mask probability
        (N, p, p, 1) ("two_stage"), or to ``{"mask": (N, p, p, 1), "reconstruction":
        (N, p, p, C)}`` ("joint").
    """
    if training not in HEAD_TRAININGS:
        raise ParameterError(f"head_training must be one of {HEAD_TRAININGS}, got "
                             f"{training!r}", fix="pass -p head_training two_stage or joint")
    channels = reconstructor.output_shape[-1]
    if head.input_shape[-1] != 2 * channels:
        raise ParameterError(
            f"the head takes {head.input_shape[-1]} channels but the reconstructor gives "
            f"{channels} (the head needs image and reconstruction: {2 * channels})",
            fix="build the head with channels equal to the autoencoder's")
    reconstructor.trainable = training == "joint"
    inputs = keras.Input(reconstructor.input_shape[1:], name="corrupted")
    recon = reconstructor(inputs)
    both = keras.layers.Concatenate(name="image_and_reconstruction")([inputs, recon])
    mask = head(both)
    if training == "joint":
        outputs = {"mask": keras.layers.Identity(name="mask")(mask),
                   "reconstruction": keras.layers.Identity(name="reconstruction")(recon)}
    else:
        outputs = mask
    return keras.Model(inputs, outputs, name=f"ae2_head_{training}")


def head_of(trainer: keras.Model) -> keras.Model:
    """The segmentation head inside a model from :func:`build_head_trainer`."""
    try:
        return trainer.get_layer(HEAD_LAYER)
    except ValueError as exc:
        raise ParameterError(f"model {trainer.name!r} holds no layer {HEAD_LAYER!r}",
                             fix="pass a model built by build_head_trainer") from exc


def reconstructor_of(trainer: keras.Model) -> keras.Model:
    """The autoencoder inside a model from :func:`build_head_trainer` (joint training
    changes its weights, so scoring must use this one)."""
    for layer in trainer.layers:
        if isinstance(layer, keras.Model) and layer.name != HEAD_LAYER:
            return layer
    raise ParameterError(f"model {trainer.name!r} holds no autoencoder",
                         fix="pass a model built by build_head_trainer")
