"""AE-1, the study's baseline: a convolutional autoencoder with a dense latent (1024 by
default) on 64x64 images, and its variational variant (TensorFlow and JAX backends).
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
from keras import ops

from anomaly_utils.errors import ParameterError
from anomaly_utils.models.building import (
    AE1_BUILDER,
    PACKAGE,
    check_positive_int,
    check_widths,
    remember_builder,
    seeded_initializer,
)

VALIDATION_SEED_OFFSET = 2**30  # validation noise: seed + this, apart from (seed, step)


def _ae1_encoder_trunk(inputs, encoder_filters: tuple[int, ...], seed: int):
    x = inputs
    for i, filters in enumerate(encoder_filters):
        x = keras.layers.Conv2D(filters, 4, strides=2, padding="same", activation="relu",
                                kernel_initializer=seeded_initializer(seed, i), name=f"enc_conv{i + 1}")(x)
    return keras.layers.Flatten(name="flatten")(x)


def _ae1_decoder(latent_dim: int, image_size: int, channels: int,
                 encoder_filters: tuple[int, ...], decoder_filters: tuple[int, ...],
                 seed: int) -> keras.Model:
    side = image_size // 2 ** len(encoder_filters)
    depth = encoder_filters[-1]
    z = keras.Input((latent_dim,), name="latent")
    x = keras.layers.Dense(side * side * depth, activation="relu",
                           kernel_initializer=seeded_initializer(seed, 100), name="dec_dense")(z)
    x = keras.layers.Reshape((side, side, depth), name="dec_reshape")(x)
    for i, filters in enumerate(decoder_filters):
        x = keras.layers.Conv2DTranspose(filters, 4, strides=2, padding="same",
                                         activation="relu", kernel_initializer=seeded_initializer(seed, 101 + i),
                                         name=f"dec_deconv{i + 1}")(x)
    out = keras.layers.Conv2DTranspose(channels, 4, strides=2, padding="same",
                                       activation="sigmoid", dtype="float32",
                                       kernel_initializer=seeded_initializer(seed, 199),
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
        hand it to :func:`anomaly_utils.training.fit.fit_autoencoder`.

    Example:
        >>> vae = build_ae1(image_size=16, latent_dim=8, variant="vae")
        >>> tuple(vae(np.zeros((2, 16, 16, 3), "float32")).shape)
        (2, 16, 16, 3)
    """
    image_size = check_positive_int("image_size", image_size)
    channels = check_positive_int("channels", channels)
    latent_dim = check_positive_int("latent_dim", latent_dim)
    encoder_filters = check_widths("encoder_filters", encoder_filters)
    decoder_filters = check_widths("decoder_filters", decoder_filters,
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
        z = keras.layers.Dense(latent_dim, kernel_initializer=seeded_initializer(seed, 50),
                               name="latent")(features)
        model = keras.Model(inputs, decoder(z), name="ae1")
    else:
        mean = keras.layers.Dense(latent_dim, kernel_initializer=seeded_initializer(seed, 50),
                                  name="z_mean")(features)
        log_var = keras.layers.Dense(latent_dim, kernel_initializer=seeded_initializer(seed, 51),
                                     name="z_log_var")(features)
        encoder = keras.Model(inputs, [mean, log_var], name="encoder")
        model = VariationalAutoencoder(encoder, decoder, seed=seed, name="ae1_vae")
        model.build((None, image_size, image_size, channels))
    return remember_builder(model, AE1_BUILDER, kwargs)


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

    The training noise of step ``k`` is drawn by ``keras.random.normal`` from a
    ``keras.random.SeedGenerator`` whose state :meth:`fit` sets to ``(seed, k)`` at the
    optimizer's step count (restored from a backup on resume), and which every backend threads
    through its train step, so a resumed run draws the same noise as an uninterrupted one.
    Validation draws from the fixed integer seed :meth:`validation_seed`, so ``val_loss`` is
    deterministic. The ELBO is a ``compute_loss`` in ``keras.ops``, and the noise is Keras'
    own on every backend (TensorFlow, JAX, PyTorch); each backend draws other numbers from
    the same seed.

    Calling the model (``model(x)``, ``predict``) returns the reconstruction decoded from the
    posterior mean; :meth:`sample_reconstructions` draws several stochastic ones.
    """

    def __init__(self, encoder: keras.Model, decoder: keras.Model, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.decoder = decoder
        self.seed = int(seed)
        self.noise = keras.random.SeedGenerator(self.seed, name="noise")
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.reconstruction_tracker = keras.metrics.Mean(name="reconstruction_loss")
        self.kl_tracker = keras.metrics.Mean(name="kl_loss")

    def call(self, inputs, training=False):
        mean, _ = self.encoder(inputs, training=training)
        return self.decoder(mean, training=training)

    @property
    def metrics(self):
        return [self.loss_tracker, self.reconstruction_tracker, self.kl_tracker]

    def _start_noise(self) -> None:
        """Key the next training step's noise on the optimizer's step count."""
        if self.optimizer is not None:
            step = int(ops.convert_to_numpy(self.optimizer.iterations))
            self.noise.state.assign(ops.convert_to_tensor([self.seed, step],
                                                          self.noise.state.dtype))

    def validation_seed(self) -> int:
        """The integer seed of the validation noise: apart from the training keys
        ``(seed, step)``, whose first element is ``seed``."""
        return (self.seed + VALIDATION_SEED_OFFSET) % 2**31

    def fit(self, *args, **kwargs):
        self._start_noise()
        return super().fit(*args, **kwargs)

    def train_on_batch(self, *args, **kwargs):
        self._start_noise()
        return super().train_on_batch(*args, **kwargs)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """The negative ELBO of one reparameterised sample (``y_pred``, the decoded mean, is
        not used); updates the three logged metrics."""
        mean, log_var = self.encoder(x, training=training)
        eps = keras.random.normal(ops.shape(mean), dtype=mean.dtype,
                                  seed=self.noise if training else self.validation_seed())
        z = mean + ops.exp(0.5 * log_var) * eps
        recon = self.decoder(z, training=training)
        target = x if y is None else y
        reconstruction = ops.sum(ops.square(ops.cast(target, recon.dtype) - recon),
                                 axis=(1, 2, 3))
        kl = -0.5 * ops.sum(1.0 + log_var - ops.square(mean) - ops.exp(log_var), axis=-1)
        loss = ops.mean(reconstruction + kl)
        self.loss_tracker.update_state(loss)
        self.reconstruction_tracker.update_state(ops.mean(reconstruction))
        self.kl_tracker.update_state(ops.mean(kl))
        return loss

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
        n_samples = check_positive_int("n_samples", n_samples)
        mean, log_var = self.encoder(ops.convert_to_tensor(x, "float32"), training=False)
        draws = keras.random.SeedGenerator(int(seed))  # sample i: the i-th draw from seed
        samples = []
        for _ in range(n_samples):
            eps = keras.random.normal(ops.shape(mean), dtype=mean.dtype, seed=draws)
            samples.append(self.decoder(mean + ops.exp(0.5 * log_var) * eps, training=False))
        return ops.convert_to_numpy(ops.stack(samples))

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
