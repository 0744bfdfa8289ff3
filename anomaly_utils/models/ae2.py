"""AE-2, the lab's patch autoencoder: a fully convolutional encoder-decoder on 128x128
patches with a spatial or 1x1 bottleneck, or an inpainting U-Net.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import keras

from anomaly_utils.errors import ParameterError
from anomaly_utils.models.building import (
    AE2_BUILDER,
    check_positive_int,
    check_widths,
    remember_builder,
    seeded_initializer,
)

AE2_WIDTHS = (32, 32, 32, 64, 64, 128, 64, 32)

# (kernel, stride) of AE-2's eight encoder convolutions before the bottleneck.
AE2_KERNELS = ((4, 2), (4, 2), (3, 1), (4, 2), (3, 1), (4, 2), (3, 1), (3, 1))
UNET_WIDTHS = (16, 32, 64, 128)


def build_ae2(patch_size: int = 128, channels: int = 1, latent_dim: int = 100,
              widths: Sequence[int] | None = None, bottleneck: str = "global", *,
              seed: int = 0) -> keras.Model:
    """Build AE-2, the fully convolutional SSIM autoencoder of Bergmann et al. (2019).

    Encoder (LeakyReLU 0.2 after every conv, ``same`` padding): Conv 4x4/2 w0, 4x4/2 w1,
    3x3/1 w2, 4x4/2 w3, 3x3/1 w4, 4x4/2 w5, 3x3/1 w6, 3x3/1 w7 with widths
    ``(32, 32, 32, 64, 64, 128, 64, 32)``, then a linear bottleneck conv to ``latent_dim``
    channels with kernel patch_size/16 and ``valid`` padding, giving a 1x1 latent map. The
    decoder mirrors it layer by layer with Conv2DTranspose (same kernel and stride, output
    channels = the mirrored conv's input channels); its last layer is the output conv to
    ``channels`` with a sigmoid.

    Args:
        patch_size: side of the square patches in pixels; divisible by 16 (128 as in the
            paper; 32 or 64 for fast experiments).
        channels: 1 for grayscale, 3 for RGB.
        latent_dim: channels of the latent map.
        widths: the eight encoder widths; ``None`` means the paper's.
        bottleneck: "global" (the paper: a patch_size/16 kernel to a 1x1 latent map),
            "spatial" (a 1x1 kernel keeping the (patch_size/16)^2 latent map, so each latent
            cell describes a 16x16 neighbourhood; sharper, and meant to be trained with
            corrupted inputs, see :func:`anomaly_utils.training.datasets.patch_dataset`) or "unet"
            (no bottleneck: :func:`build_inpainting_unet` with ``widths`` or its default;
            ``latent_dim`` is unused).
        seed: seeds every kernel initializer (builds are reproducible).

    Returns:
        An uncompiled keras.Model mapping float32 (N, patch_size, patch_size, channels) in
        [0, 1] to a reconstruction of the same shape in [0, 1]. Train it with
        :func:`make_ae2_loss` (``fit_autoencoder`` does by default). Being fully
        convolutional up to the bottleneck, it only accepts the patch size it was built for.

    Example:
        >>> build_ae2(patch_size=64, channels=3, latent_dim=8).output_shape
        (None, 64, 64, 3)
    """
    patch_size = check_positive_int("patch_size", patch_size)
    channels = check_positive_int("channels", channels)
    latent_dim = check_positive_int("latent_dim", latent_dim)
    if bottleneck == "unet":
        widths = UNET_WIDTHS if widths is None else check_widths("widths", widths)
        step = 2 ** (len(widths) - 1)
        if patch_size % step:
            raise ParameterError(f"patch_size={patch_size} is not divisible by {step}, which "
                                 f"the U-Net's {len(widths) - 1} poolings need",
                                 fix=f"use a multiple of {step}")
        return build_inpainting_unet(channels, widths, seed=seed)
    widths = AE2_WIDTHS if widths is None else check_widths("widths", widths, length=8)
    if patch_size % 16:
        raise ParameterError(
            f"patch_size={patch_size} is not divisible by 16; AE-2's four stride-2 "
            "convolutions and its bottleneck need it to be",
            fix=f"use a multiple of 16, e.g. {max(16, patch_size // 16 * 16)}")
    if bottleneck not in ("global", "spatial"):
        raise ParameterError(f"bottleneck must be 'global', 'spatial' or 'unet', got "
                             f"{bottleneck!r}", fix="pass -p bottleneck global (the paper), "
                             "spatial or unet")
    kwargs = {"patch_size": patch_size, "channels": channels, "latent_dim": latent_dim,
              "widths": list(widths), "bottleneck": bottleneck, "seed": seed}
    bottleneck_kernel = patch_size // 16 if bottleneck == "global" else 1

    inputs = keras.Input((patch_size, patch_size, channels), name="patch")
    x = inputs
    for i, (width, (kernel, stride)) in enumerate(zip(widths, AE2_KERNELS, strict=True)):
        x = keras.layers.Conv2D(width, kernel, strides=stride, padding="same",
                                kernel_initializer=seeded_initializer(seed, i), name=f"enc_conv{i + 1}")(x)
        x = keras.layers.LeakyReLU(0.2, name=f"enc_act{i + 1}")(x)
    x = keras.layers.Conv2D(latent_dim, bottleneck_kernel, padding="valid",
                            kernel_initializer=seeded_initializer(seed, 8), name="latent")(x)

    x = keras.layers.Conv2DTranspose(widths[-1], bottleneck_kernel, padding="valid",
                                     kernel_initializer=seeded_initializer(seed, 100), name="dec_deconv0")(x)
    x = keras.layers.LeakyReLU(0.2, name="dec_act0")(x)
    mirrored_inputs = (channels,) + tuple(widths[:-1])  # input channels of each encoder conv
    for j in range(len(widths) - 1, 0, -1):
        kernel, stride = AE2_KERNELS[j]
        x = keras.layers.Conv2DTranspose(mirrored_inputs[j], kernel, strides=stride,
                                         padding="same", kernel_initializer=seeded_initializer(seed, 100 + j),
                                         name=f"dec_deconv{len(widths) - j}")(x)
        x = keras.layers.LeakyReLU(0.2, name=f"dec_act{len(widths) - j}")(x)
    kernel, stride = AE2_KERNELS[0]
    outputs = keras.layers.Conv2DTranspose(channels, kernel, strides=stride, padding="same",
                                           activation="sigmoid", dtype="float32",
                                           kernel_initializer=seeded_initializer(seed, 199),
                                           name="reconstruction")(x)
    model = keras.Model(inputs, outputs, name="ae2")
    return remember_builder(model, AE2_BUILDER, kwargs)


def build_inpainting_unet(channels: int = 1, widths: Sequence[int] = UNET_WIDTHS, *,
                          seed: int = 0) -> keras.Model:
    """An inpainting U-Net in the spirit of RIAD (Zavrtanik et al. 2021), AE-2's third variant.

    Without a bottleneck the network could copy any input, defects included; it is useful
    only when trained to fill in masked grid cells from their surroundings
    (``patch_dataset(..., corrupt_mode="grid")``) and scored on inputs whose cells are masked
    in turn, so no pixel is ever reconstructed from itself (:func:`~anomaly_utils.scoring.
    inpaint_reconstruct`). Levels 0..L-2 are two 3x3 ReLU convs then 2x2 max pooling; the
    bottom level two 3x3 convs of ``widths[-1]``; each decoder level upsamples 2x, convs,
    concatenates the encoder features of its level and convs twice; a 1x1 sigmoid conv
    gives the output.

    Args:
        channels: 1 for grayscale, 3 for RGB.
        widths: filters per level, finest first; spatial sides must be divisible by
            2 ** (len(widths) - 1).
        seed: seeds every kernel initializer.

    Returns:
        An uncompiled keras.Model mapping float32 (N, H, W, channels) in [0, 1], any H and W
        divisible by 2 ** (len(widths) - 1), to (N, H, W, channels) in [0, 1]: train it on
        patches, apply it to whole images.

    Example:
        >>> build_inpainting_unet(3, (4, 8)).output_shape
        (None, None, None, 3)
    """
    channels = check_positive_int("channels", channels)
    widths = check_widths("widths", widths)
    kwargs = {"channels": channels, "widths": list(widths), "seed": seed}
    layer = itertools.count()  # a distinct initializer seed per conv

    def conv(x, width, name, kernel=3, activation="relu", dtype=None):
        return keras.layers.Conv2D(width, kernel, padding="same", activation=activation,
                                   kernel_initializer=seeded_initializer(seed, next(layer)),
                                   name=name, dtype=dtype)(x)

    inputs = keras.Input((None, None, channels), name="image")
    x, skips = inputs, []
    for level, width in enumerate(widths[:-1]):
        x = conv(conv(x, width, f"enc{level}_a"), width, f"enc{level}_b")
        skips.append(x)
        x = keras.layers.MaxPooling2D(name=f"pool{level}")(x)
    x = conv(conv(x, widths[-1], "bottom_a"), widths[-1], "bottom_b")
    for level in range(len(widths) - 2, -1, -1):
        x = keras.layers.UpSampling2D(name=f"up{level}")(x)
        x = conv(x, widths[level], f"dec{level}_up")
        x = keras.layers.Concatenate(name=f"skip{level}")([x, skips[level]])
        x = conv(conv(x, widths[level], f"dec{level}_a"), widths[level], f"dec{level}_b")
    outputs = conv(x, channels, "reconstruction", kernel=1, activation="sigmoid",
                   dtype="float32")
    model = keras.Model(inputs, outputs, name="ae2_unet")
    return remember_builder(model, AE2_BUILDER, {**kwargs, "bottleneck": "unet"})
