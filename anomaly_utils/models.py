"""The lab's two autoencoders and the AE-2 training loss.

AE-1 (:func:`build_ae1`) is the original baseline, kept faithful to the study the lab grew
out of (MVTec carpet at 64x64 RGB):

1. Encoder: Conv2D 64, 128, 512 filters (4x4, stride 2, ReLU, same padding), Flatten,
   Dense latent of 1024 units (linear).
2. Decoder: Dense (size/8 x size/8 x 512, ReLU), Reshape, Conv2DTranspose 256, 64
   (4x4, stride 2, ReLU, same), Conv2DTranspose ``channels`` (4x4, stride 2, sigmoid).
3. Trained with MSE and Adam. ``variant="vae"`` keeps encoder and decoder but ends the
   encoder in two Dense heads (mean and log-variance) and trains on the ELBO.

AE-2 (:func:`build_ae2`) is the structural autoencoder after Bergmann et al. 2019
(SSIM autoencoder, also the MVTec AD paper's baseline): fully convolutional on patches,
LeakyReLU(0.2), a 1x1 latent map of ``latent_dim`` channels, and a decoder that mirrors the
encoder with Conv2DTranspose. It is trained on ``1 - SSIM`` (:func:`make_ae2_loss`).
``bottleneck="unet"`` swaps the bottleneck for skip connections (:func:`build_inpainting_unet`):
an inpainting network that is scored on masked inputs (``anomaly_utils.scoring.inpaint_reconstruct``).

Every custom class is registered with Keras under the package ``anomaly_utils`` and no
Lambda layer is used, so saved ``.keras`` files load with ``safe_mode=True``.

Example:
    >>> model = build_ae1(image_size=32, latent_dim=16)
    >>> model.output_shape
    (None, 32, 32, 3)
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from .errors import ParameterError
from .scoring import GMS_C, GMS_SCALES, PREWITT, ssim_map

PACKAGE = "anomaly_utils"
AE1_BUILDER = "build_ae1"
AE2_BUILDER = "build_ae2"
AE2_WIDTHS = (32, 32, 32, 64, 64, 128, 64, 32)
# (kernel, stride) of AE-2's eight encoder convolutions before the bottleneck.
AE2_KERNELS = ((4, 2), (4, 2), (3, 1), (4, 2), (3, 1), (4, 2), (3, 1), (3, 1))
UNET_WIDTHS = (16, 32, 64, 128)


def _check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ParameterError(f"{name} must be a positive integer, got {value!r}",
                             fix=f"pass {name} as an int >= 1")
    return int(value)


def _check_widths(name: str, values: object, length: int | None = None) -> tuple[int, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ParameterError(f"{name} must be a sequence of positive ints, got {values!r}")
    widths = tuple(_check_positive_int(f"{name}[{i}]", v) for i, v in enumerate(values))
    if not widths or (length is not None and len(widths) != length):
        expected = f"{length}" if length is not None else "at least one"
        raise ParameterError(f"{name} must hold {expected} values, got {len(widths)}")
    return widths


def _init(seed: int, index: int) -> keras.initializers.Initializer:
    """A seeded Glorot initializer, distinct per layer, so builds never depend on global state."""
    return keras.initializers.GlorotUniform(seed=seed * 1000 + index)


def _remember_builder(model: keras.Model, builder: str, kwargs: dict) -> keras.Model:
    # A JSON string is not tracked by Keras, so it never enters the saved weights or config.
    model.lab_builder = json.dumps({"builder": builder, "kwargs": kwargs})
    return model


def builder_config(model: keras.Model) -> dict | None:
    """The builder name and keyword arguments a model was built with, or ``None``.

    Only models built in this process by :func:`build_ae1` / :func:`build_ae2` carry it;
    a model loaded from disk does not (its architecture is in the ``.keras`` file).

    Example:
        >>> builder_config(build_ae2(patch_size=32, latent_dim=8))["builder"]
        'build_ae2'
    """
    text = getattr(model, "lab_builder", None)
    return json.loads(text) if isinstance(text, str) else None


# --------------------------------------------------------------------------- AE-1


def _ae1_encoder_trunk(inputs, encoder_filters: tuple[int, ...], seed: int):
    x = inputs
    for i, filters in enumerate(encoder_filters):
        x = keras.layers.Conv2D(filters, 4, strides=2, padding="same", activation="relu",
                                kernel_initializer=_init(seed, i), name=f"enc_conv{i + 1}")(x)
    return keras.layers.Flatten(name="flatten")(x)


def _ae1_decoder(latent_dim: int, image_size: int, channels: int,
                 encoder_filters: tuple[int, ...], decoder_filters: tuple[int, ...],
                 seed: int) -> keras.Model:
    side = image_size // 2 ** len(encoder_filters)
    depth = encoder_filters[-1]
    z = keras.Input((latent_dim,), name="latent")
    x = keras.layers.Dense(side * side * depth, activation="relu",
                           kernel_initializer=_init(seed, 100), name="dec_dense")(z)
    x = keras.layers.Reshape((side, side, depth), name="dec_reshape")(x)
    for i, filters in enumerate(decoder_filters):
        x = keras.layers.Conv2DTranspose(filters, 4, strides=2, padding="same",
                                         activation="relu", kernel_initializer=_init(seed, 101 + i),
                                         name=f"dec_deconv{i + 1}")(x)
    out = keras.layers.Conv2DTranspose(channels, 4, strides=2, padding="same",
                                       activation="sigmoid", kernel_initializer=_init(seed, 199),
                                       name="reconstruction")(x)
    return keras.Model(z, out, name="decoder")


def build_ae1(image_size: int = 64, channels: int = 3, latent_dim: int = 1024,
              variant: str = "ae", encoder_filters: Sequence[int] = (64, 128, 512),
              decoder_filters: Sequence[int] = (256, 64), *, seed: int = 0) -> keras.Model:
    """Build AE-1, the original dense-bottleneck baseline (plain ``"ae"`` or ``"vae"``).

    Args:
        image_size: side of the square input in pixels; divisible by 2**len(encoder_filters)
            (8 with the defaults), since every encoder conv halves it.
        channels: 3 for RGB, 1 for grayscale.
        latent_dim: size of the dense latent vector (per head for the VAE).
        variant: ``"ae"`` (MSE-trained autoencoder, a functional model) or ``"vae"``
            (a :class:`VariationalAutoencoder` trained on the ELBO).
        encoder_filters: filters of the stride-2 encoder convs; the last one is also the depth
            of the decoder's Dense/Reshape (512 -> 8x8x512 at 64x64).
        decoder_filters: filters of the ReLU Conv2DTranspose layers before the output layer;
            exactly one fewer than ``encoder_filters`` so the output size equals the input's.
        seed: seeds every kernel initializer (and the VAE's sampling noise), so two builds
            with the same arguments have identical weights whatever the global RNG state.

    Returns:
        An uncompiled keras.Model mapping float32 (N, image_size, image_size, channels) in
        [0, 1] to a reconstruction of the same shape in [0, 1] (the VAE decodes the
        posterior mean). Compile it with MSE + Adam (the AE) or Adam alone (the VAE), or
        hand it to :func:`anomaly_utils.training.fit_autoencoder`.

    Example:
        >>> vae = build_ae1(image_size=16, latent_dim=8, variant="vae")
        >>> tuple(vae(np.zeros((2, 16, 16, 3), "float32")).shape)
        (2, 16, 16, 3)
    """
    image_size = _check_positive_int("image_size", image_size)
    channels = _check_positive_int("channels", channels)
    latent_dim = _check_positive_int("latent_dim", latent_dim)
    encoder_filters = _check_widths("encoder_filters", encoder_filters)
    decoder_filters = _check_widths("decoder_filters", decoder_filters,
                                    length=len(encoder_filters) - 1)
    if variant not in ("ae", "vae"):
        raise ParameterError(f"variant must be 'ae' or 'vae', got {variant!r}")
    factor = 2 ** len(encoder_filters)
    if image_size % factor:
        raise ParameterError(
            f"image_size={image_size} is not divisible by {factor}; AE-1's "
            f"{len(encoder_filters)} stride-2 convolutions need it to be",
            fix=f"use an image_size that is a multiple of {factor}, e.g. "
                f"{max(factor, image_size // factor * factor)}")
    kwargs = {"image_size": image_size, "channels": channels, "latent_dim": latent_dim,
              "variant": variant, "encoder_filters": list(encoder_filters),
              "decoder_filters": list(decoder_filters), "seed": seed}

    inputs = keras.Input((image_size, image_size, channels), name="image")
    features = _ae1_encoder_trunk(inputs, encoder_filters, seed)
    decoder = _ae1_decoder(latent_dim, image_size, channels, encoder_filters,
                           decoder_filters, seed)
    if variant == "ae":
        z = keras.layers.Dense(latent_dim, kernel_initializer=_init(seed, 50),
                               name="latent")(features)
        model = keras.Model(inputs, decoder(z), name="ae1")
    else:
        mean = keras.layers.Dense(latent_dim, kernel_initializer=_init(seed, 50),
                                  name="z_mean")(features)
        log_var = keras.layers.Dense(latent_dim, kernel_initializer=_init(seed, 51),
                                     name="z_log_var")(features)
        encoder = keras.Model(inputs, [mean, log_var], name="encoder")
        model = VariationalAutoencoder(encoder, decoder, seed=seed, name="ae1_vae")
        model.build((None, image_size, image_size, channels))
    return _remember_builder(model, AE1_BUILDER, kwargs)


@keras.saving.register_keras_serializable(package=PACKAGE)
class VariationalAutoencoder(keras.Model):
    """A VAE over an encoder returning ``[mean, log_var]`` and a decoder from the latent.

    Training minimises the negative ELBO, averaged over the batch::

        loss = mean_over_images( sum_{h,w,c} (x - x_hat)^2  +  KL(q(z|x) || N(0, I)) )
        KL   = -0.5 * sum_j (1 + log_var_j - mean_j^2 - exp(log_var_j))

    where ``x_hat`` decodes one reparameterised sample ``z = mean + exp(log_var / 2) * eps``.
    The squared error is summed (not averaged) over pixels so that it is a Gaussian
    log-likelihood on the same scale as the KL term; its value therefore grows with the image
    size and is not comparable to AE-1's per-pixel MSE. The logged metrics are ``loss``,
    ``reconstruction_loss`` and ``kl_loss``.

    The training noise is drawn with stateless ops keyed on ``(seed, optimizer.iterations)``:
    a run resumed from a backup (which restores ``iterations``) draws the same noise as an
    uninterrupted one. Validation uses fixed noise keyed on ``seed`` alone, so ``val_loss``
    is deterministic. Runs on the TensorFlow backend (its ``train_step`` uses GradientTape).

    Calling the model (``model(x)``, ``predict``) returns the reconstruction decoded from the
    posterior mean; :meth:`sample_reconstructions` draws several stochastic ones.
    """

    def __init__(self, encoder: keras.Model, decoder: keras.Model, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.decoder = decoder
        self.seed = int(seed)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.reconstruction_tracker = keras.metrics.Mean(name="reconstruction_loss")
        self.kl_tracker = keras.metrics.Mean(name="kl_loss")

    def call(self, inputs, training=False):
        mean, _ = self.encoder(inputs, training=training)
        return self.decoder(mean, training=training)

    @property
    def metrics(self):
        return [self.loss_tracker, self.reconstruction_tracker, self.kl_tracker]

    def _elbo(self, x, y, noise_seed, training):
        mean, log_var = self.encoder(x, training=training)
        eps = tf.random.stateless_normal(tf.shape(mean), seed=noise_seed, dtype=mean.dtype)
        z = mean + tf.exp(0.5 * log_var) * eps
        recon = self.decoder(z, training=training)
        reconstruction = tf.reduce_sum(tf.square(tf.cast(y, recon.dtype) - recon), axis=[1, 2, 3])
        kl = -0.5 * tf.reduce_sum(1.0 + log_var - tf.square(mean) - tf.exp(log_var), axis=-1)
        return tf.reduce_mean(reconstruction + kl), tf.reduce_mean(reconstruction), \
            tf.reduce_mean(kl)

    def _update_metrics(self, loss, reconstruction, kl):
        self.loss_tracker.update_state(loss)
        self.reconstruction_tracker.update_state(reconstruction)
        self.kl_tracker.update_state(kl)
        return {m.name: m.result() for m in self.metrics}

    @staticmethod
    def _unpack(data):
        x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
        return x, (x if y is None else y)

    def train_step(self, data):
        x, y = self._unpack(data)
        step = tf.cast(self.optimizer.iterations, tf.int64)
        noise_seed = tf.stack([tf.constant(self.seed, tf.int64), step])
        with tf.GradientTape() as tape:
            loss, reconstruction, kl = self._elbo(x, y, noise_seed, training=True)
        grads = tape.gradient(loss, self.trainable_weights)
        self.optimizer.apply(grads, self.trainable_weights)
        return self._update_metrics(loss, reconstruction, kl)

    def test_step(self, data):
        x, y = self._unpack(data)
        noise_seed = tf.constant([self.seed, -1], tf.int64)
        return self._update_metrics(*self._elbo(x, y, noise_seed, training=False))

    def sample_reconstructions(self, x, n_samples: int, seed: int) -> np.ndarray:
        """Decode ``n_samples`` posterior samples per image.

        Args:
            x: float32 (N, H, W, C) images in [0, 1].
            n_samples: samples per image (>= 1).
            seed: the noise is a pure function of ``seed`` (same seed, same samples).

        Returns:
            float32 (n_samples, N, H, W, C) reconstructions in [0, 1].

        Example:
            >>> vae = build_ae1(image_size=16, latent_dim=8, variant="vae")
            >>> vae.sample_reconstructions(np.zeros((2, 16, 16, 3), "float32"), 4, 0).shape
            (4, 2, 16, 16, 3)
        """
        n_samples = _check_positive_int("n_samples", n_samples)
        mean, log_var = self.encoder(tf.convert_to_tensor(x, tf.float32), training=False)
        samples = []
        for i in range(n_samples):
            eps = tf.random.stateless_normal(tf.shape(mean), seed=[int(seed), i],
                                             dtype=mean.dtype)
            z = mean + tf.exp(0.5 * log_var) * eps
            samples.append(self.decoder(z, training=False))
        return tf.stack(samples).numpy()

    def get_config(self):
        config = super().get_config()
        config.update({"encoder": keras.saving.serialize_keras_object(self.encoder),
                       "decoder": keras.saving.serialize_keras_object(self.decoder),
                       "seed": self.seed})
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        encoder = keras.saving.deserialize_keras_object(config.pop("encoder"))
        decoder = keras.saving.deserialize_keras_object(config.pop("decoder"))
        return cls(encoder, decoder, **config)

    def build(self, input_shape):
        # Encoder and decoder are functional models, built at construction.
        self.built = True


# --------------------------------------------------------------------------- AE-2


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
            corrupted inputs, see :func:`anomaly_utils.training.patch_dataset`) or "unet"
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
    patch_size = _check_positive_int("patch_size", patch_size)
    channels = _check_positive_int("channels", channels)
    latent_dim = _check_positive_int("latent_dim", latent_dim)
    if bottleneck == "unet":
        widths = UNET_WIDTHS if widths is None else _check_widths("widths", widths)
        step = 2 ** (len(widths) - 1)
        if patch_size % step:
            raise ParameterError(f"patch_size={patch_size} is not divisible by {step}, which "
                                 f"the U-Net's {len(widths) - 1} poolings need",
                                 fix=f"use a multiple of {step}")
        return build_inpainting_unet(channels, widths, seed=seed)
    widths = AE2_WIDTHS if widths is None else _check_widths("widths", widths, length=8)
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
                                kernel_initializer=_init(seed, i), name=f"enc_conv{i + 1}")(x)
        x = keras.layers.LeakyReLU(0.2, name=f"enc_act{i + 1}")(x)
    x = keras.layers.Conv2D(latent_dim, bottleneck_kernel, padding="valid",
                            kernel_initializer=_init(seed, 8), name="latent")(x)

    x = keras.layers.Conv2DTranspose(widths[-1], bottleneck_kernel, padding="valid",
                                     kernel_initializer=_init(seed, 100), name="dec_deconv0")(x)
    x = keras.layers.LeakyReLU(0.2, name="dec_act0")(x)
    mirrored_inputs = (channels,) + tuple(widths[:-1])  # input channels of each encoder conv
    for j in range(len(widths) - 1, 0, -1):
        kernel, stride = AE2_KERNELS[j]
        x = keras.layers.Conv2DTranspose(mirrored_inputs[j], kernel, strides=stride,
                                         padding="same", kernel_initializer=_init(seed, 100 + j),
                                         name=f"dec_deconv{len(widths) - j}")(x)
        x = keras.layers.LeakyReLU(0.2, name=f"dec_act{len(widths) - j}")(x)
    kernel, stride = AE2_KERNELS[0]
    outputs = keras.layers.Conv2DTranspose(channels, kernel, strides=stride, padding="same",
                                           activation="sigmoid",
                                           kernel_initializer=_init(seed, 199),
                                           name="reconstruction")(x)
    model = keras.Model(inputs, outputs, name="ae2")
    return _remember_builder(model, AE2_BUILDER, kwargs)


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
    channels = _check_positive_int("channels", channels)
    widths = _check_widths("widths", widths)
    kwargs = {"channels": channels, "widths": list(widths), "seed": seed}
    layer = itertools.count()  # a distinct initializer seed per conv

    def conv(x, width, name, kernel=3, activation="relu"):
        return keras.layers.Conv2D(width, kernel, padding="same", activation=activation,
                                   kernel_initializer=_init(seed, next(layer)), name=name)(x)

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
    outputs = conv(x, channels, "reconstruction", kernel=1, activation="sigmoid")
    model = keras.Model(inputs, outputs, name="ae2_unet")
    return _remember_builder(model, AE2_BUILDER, {**kwargs, "bottleneck": "unet"})


@keras.saving.register_keras_serializable(package=PACKAGE)
def ssim_loss(y_true, y_pred):
    """Per-image ``1 - mean SSIM``: (N, H, W, C) in [0, 1] -> (N,) in [0, 2]."""
    ssim = ssim_map(tf.cast(y_true, y_pred.dtype), y_pred)
    return 1.0 - tf.reduce_mean(ssim, axis=[1, 2])


def gms_loss(y_true, y_pred, scales: tuple[int, ...] = GMS_SCALES):
    """Per-image mean multi-scale gradient magnitude dissimilarity (RIAD's MSGMS loss).

    The differentiable counterpart of :func:`anomaly_utils.scoring.gms_error_map`: channel
    means, average pooling by each factor, Prewitt gradients (zero padding), ``1 - GMS``
    averaged over pixels and then over the scales that leave at least 3 pixels.
    (N, H, W, C) in [0, 1] -> (N,) in [0, 1].
    """
    y_true = tf.cast(y_true, y_pred.dtype)
    kernel = tf.constant(np.stack([PREWITT, PREWITT.T], axis=-1)[:, :, None, :], y_pred.dtype)
    size = min(y_pred.shape[1], y_pred.shape[2])
    used = [factor for factor in scales if size // factor >= 3] or [1]
    total = tf.zeros(tf.shape(y_pred)[:1], y_pred.dtype)
    for factor in used:
        magnitudes = []
        for image in (y_true, y_pred):
            gray = tf.reduce_mean(image, axis=-1, keepdims=True)
            if factor > 1:
                gray = tf.nn.avg_pool2d(gray, factor, factor, "VALID")
            gradients = tf.nn.conv2d(gray, kernel, 1, "SAME")
            # The epsilon keeps the square root's gradient finite on flat regions.
            magnitudes.append(tf.sqrt(tf.reduce_sum(tf.square(gradients), axis=-1) + 1e-12))
        m_true, m_pred = magnitudes
        gms = (2 * m_true * m_pred + GMS_C) / (tf.square(m_true) + tf.square(m_pred) + GMS_C)
        total += tf.reduce_mean(1.0 - gms, axis=[1, 2])
    return total / len(used)


@keras.saving.register_keras_serializable(package=PACKAGE)
class AE2Loss(keras.losses.Loss):
    """``ssim_weight * (1 - mean SSIM) + l1_weight * mean |y - y_hat|
    + gms_weight * mean (1 - GMS)``, per image.

    SSIM comes from :func:`anomaly_utils.scoring.ssim_map` (11x11 Gaussian window,
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
        y_true = tf.cast(y_true, y_pred.dtype)
        loss = tf.zeros(tf.shape(y_pred)[:1], y_pred.dtype)
        if self.ssim_weight:
            loss += self.ssim_weight * ssim_loss(y_true, y_pred)
        if self.l1_weight:
            loss += self.l1_weight * tf.reduce_mean(tf.abs(y_true - y_pred), axis=[1, 2, 3])
        if self.gms_weight:
            loss += self.gms_weight * gms_loss(y_true, y_pred)
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
    if isinstance(model, VariationalAutoencoder):
        return None
    if model.name == "ae2":
        return make_ae2_loss()
    return "mse"
