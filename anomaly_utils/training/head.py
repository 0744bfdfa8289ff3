"""Training AE-2's segmentation head on synthetic anomalies.

1. Every batch crops defect-free training images and paints Perlin-shaped anomalies into
   them (:func:`anomaly_utils.training.datasets.anomaly_patch_dataset`).
2. AE-2 reconstructs the corrupted crops; the head sees crop and reconstruction side by side
   and is trained with the focal loss (Lin et al. 2017, gamma 2) against the painted mask.
   Two-stage training freezes AE-2; joint training also fits AE-2 to restore the clean crop.
3. The learning rate drops by 5x at 80 % and again at 90 % of the epochs (DRAEM's schedule).
4. The fit is :func:`anomaly_utils.training.fit.fit_autoencoder`, so the head gets the same
   atomic checkpoints, resume after a kill, NaN guard and ``history.csv``.

Example:
    >>> import numpy as np, tempfile
    >>> from anomaly_utils.models.ae2 import build_ae2
    >>> from anomaly_utils.models.segmentation_head import build_segmentation_head
    >>> x = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    >>> fit = fit_segmentation_head(build_ae2(32, 3, 4, bottleneck="spatial"),
    ...     build_segmentation_head(3, (4, 8)), x, tempfile.mkdtemp(), patch_size=32,
    ...     epochs=1, patches_per_epoch=8, batch_size=4, learning_rate=1e-3, seed=0)
    >>> fit["head"].output_shape
    (None, None, None, 1)
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

from anomaly_utils.models.losses import default_loss
from anomaly_utils.models.segmentation_head import (
    build_head_trainer,
    head_of,
    reconstructor_of,
)
from anomaly_utils.training.datasets import anomaly_patch_dataset, check_int
from anomaly_utils.training.fit import fit_autoencoder

FOCAL_GAMMA = 2.0
# DRAEM's MultiStepLR: x0.2 at 80 % and at 90 % of the epochs.
LR_DROPS = ((0.8, 0.2), (0.9, 0.2))


def step_schedule(learning_rate: float, epochs: int):
    """The learning rate of each epoch (a function of the epoch alone, so resume-exact)."""

    def rate(epoch: int, _current: float = 0.0) -> float:
        value = learning_rate
        for fraction, factor in LR_DROPS:
            if epoch >= int(fraction * epochs):
                value *= factor
        return float(value)

    return rate


def fit_segmentation_head(reconstructor: keras.Model, head: keras.Model,
                          train_images: np.ndarray, model_dir: str | os.PathLike, *,
                          patch_size: int, epochs: int, patches_per_epoch: int,
                          batch_size: int, learning_rate: float, seed: int,
                          training: str = "two_stage", focal_gamma: float = FOCAL_GAMMA,
                          reconstruction_loss: Any = None, augment: bool = False,
                          anomaly_options: dict | None = None, verbose: int = 0,
                          callbacks: Sequence[keras.callbacks.Callback] = (),
                          ) -> dict[str, Any]:
    """Train the head (and, with ``training="joint"``, AE-2) on synthetic anomalies.

    Args:
        reconstructor: a trained AE-2 patch model, (N, p, p, C) -> (N, p, p, C).
        head: from :func:`~anomaly_utils.models.segmentation_head.build_segmentation_head`.
        train_images: defect-free uint8 or float (N, H, W, C) in [0, 1].
        model_dir: folder of the head's run (``model.keras`` holds AE-2 and head together;
            see :func:`~anomaly_utils.training.fit.fit_autoencoder` for the rest).
        patch_size: crop side, pixels (AE-2's patch size).
        epochs, patches_per_epoch, batch_size: the training length.
        learning_rate: Adam's initial rate, dropped by :data:`LR_DROPS`.
        seed: seeds crops, anomalies and the fit.
        training: "two_stage" (AE-2 frozen) or "joint".
        focal_gamma: the focal loss' focusing parameter (0: binary cross-entropy).
        reconstruction_loss: joint training's loss of the reconstruction against the clean
            crop (e.g. :func:`~anomaly_utils.models.losses.make_ae2_loss`); unused otherwise.
        augment: random flips and 90-degree turns of the crops.
        anomaly_options: keyword arguments of
            :func:`~anomaly_utils.data.training_anomalies.make_training_anomalies`.
        verbose: Keras ``fit`` verbosity.
        callbacks: extra Keras callbacks (e.g. a learning curve).

    Returns:
        ``fit_autoencoder``'s result plus ``"head"`` and ``"reconstructor"``: the trained
        head and the AE-2 to score with (joint training changes it).
    """
    epochs = check_int("epochs", epochs)
    joint = training == "joint"
    trainer = build_head_trainer(reconstructor, head, training)
    # What the resume check compares: a changed setting must not continue an old backup.
    trainer.lab_builder = json.dumps({"builder": "build_head_trainer", "kwargs": {
        "training": training, "head": json.loads(getattr(head, "lab_builder", "null")),
        "anomalies": anomaly_options or {}, "patch_size": patch_size,
        "patches_per_epoch": patches_per_epoch, "augment": augment,
        "focal_gamma": focal_gamma}})
    dataset = anomaly_patch_dataset(train_images, patch_size, patches_per_epoch, batch_size,
                                    seed, augment=augment, joint=joint,
                                    anomaly_options=anomaly_options)
    focal = keras.losses.BinaryFocalCrossentropy(gamma=focal_gamma)
    if joint and reconstruction_loss is None:
        reconstruction_loss = default_loss(reconstructor)
    loss = {"mask": focal, "reconstruction": reconstruction_loss} if joint else focal
    schedule = keras.callbacks.LearningRateScheduler(step_schedule(learning_rate, epochs))
    result = fit_autoencoder(trainer, dataset, None, model_dir, epochs=epochs,
                             learning_rate=learning_rate, seed=seed, loss=loss,
                             verbose=verbose, callbacks=[schedule, *callbacks])
    trained = result["model"]
    return {**result, "head": head_of(trained), "reconstructor": reconstructor_of(trained)}
