"""The resumable, reproducible training loop of the lab's autoencoders.

:func:`fit_autoencoder` compiles with Adam and fits with: the best checkpoint on ``val_loss``
written atomically to ``model_dir/model.keras``; atomic resume backups in
``model_dir/backup`` (:class:`~anomaly_utils.training.callbacks.EpochBackup`: a killed run
resumes from its last backed-up epoch, backed up every epoch unless that would cost more
than 10 % of the training time); a NaN guard raising :class:`LabError`; optional early
stopping; ``history.csv`` (one row per epoch, exactly once across resumes),
``history.json`` and ``config.json``. It returns the best checkpoint loaded back in safe
mode.

The loop runs on TensorFlow, JAX and PyTorch: the input pipelines are numpy
``keras.utils.PyDataset`` s (:mod:`anomaly_utils.training.datasets`), the same on every backend,
and this module imports no TensorFlow (``strategy`` is TensorFlow's, imported only under it;
on TensorFlow the datasets reach ``fit`` through
:mod:`~anomaly_utils.training.tensorflow_feed`, which saves a wait of seconds per epoch).
With ``strategy`` (:func:`anomaly_utils.training.strategy.make_strategy`: ``tf.distribute`` on
TensorFlow, ``keras.distribution.DataParallel`` on JAX) the same loop runs distributed: the
model is compiled (and, when it was built outside ``strategy.scope()``, rebuilt with the same
builder and weights) inside the scope, and each global batch is split across the replicas
(on JAX the whole fit runs inside the scope; checkpoints and backups gather the replicated
weights to the host, and the returned best model is loaded on one device). Under a
multi-worker strategy the chief writes ``model_dir``; every other worker writes the same
files to ``model_dir/.workers/<task>-<index>/`` (JAX: ``process-<index>``) and resumes from
the chief's backup where it can read it, and every epoch is backed up so that all workers
resume at the same epoch.

Two runs with the same seed and parameters give bit-identical losses on the same machine
(``set_global_seed`` turns on TensorFlow's deterministic ops; the model builders seed
their initializers).

Example:
    >>> import numpy as np, tempfile
    >>> from anomaly_utils.models.ae1 import build_ae1
    >>> x = np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
    >>> result = fit_autoencoder(build_ae1(16, latent_dim=8), x, x, tempfile.mkdtemp(),
    ...                          epochs=2, learning_rate=1e-3, seed=0, verbose=0)
    >>> len(result["history"]["val_loss"])
    2
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np

from anomaly_utils.artifacts import read_json, write_json
from anomaly_utils.errors import ArtifactError, LabError, ParameterError
from anomaly_utils.models.ae1 import VariationalAutoencoder, build_ae1
from anomaly_utils.models.ae2 import build_ae2
from anomaly_utils.models.building import AE1_BUILDER, AE2_BUILDER, builder_config
from anomaly_utils.models.losses import default_loss
from anomaly_utils.models.storage import MODEL_FILE, load_model
from anomaly_utils.seeding import set_global_seed
from anomaly_utils.training.callbacks import (
    BACKUP_DIR,
    BACKUP_METADATA,
    HISTORY_CSV,
    EpochBackup,
    EpochRecorder,
    EpochSetter,
    NanGuard,
    read_history_csv,
    restore_backup,
)
from anomaly_utils.training.datasets import check_int, image_dataset, is_ready_dataset
from anomaly_utils.training.strategy import (
    built_in,
    check_strategy,
    is_chief,
    is_multiworker,
    local_replicas,
    replicas,
    worker_name,
)
from anomaly_utils.training.tensorflow_feed import feed_for_tensorflow

HISTORY_JSON = "history.json"
CONFIG_FILE = "config.json"
WORKERS_DIR = ".workers"
BUILDERS = {AE1_BUILDER: build_ae1, AE2_BUILDER: build_ae2}


def _describe(data: Any) -> Any:
    if isinstance(data, np.ndarray):
        return {"array_shape": list(data.shape), "dtype": str(data.dtype)}
    if callable(getattr(data, "describe", None)):
        return data.describe()  # the lab's datasets: their settings
    if is_ready_dataset(data) and hasattr(data, "element_spec"):
        return {"dataset": str(data.element_spec)}  # a tf.data.Dataset
    return None if data is None else type(data).__name__


def _describe_loss(loss: Any) -> Any:
    if loss is None or isinstance(loss, str):
        return loss
    return keras.saving.serialize_keras_object(loss)


def fit_autoencoder(model: keras.Model, train_data: np.ndarray | keras.utils.PyDataset,
                    val_data: np.ndarray | keras.utils.PyDataset | None,
                    model_dir: str | os.PathLike, *, epochs: int, learning_rate: float,
                    seed: int, loss: Any = None, early_stopping_patience: int | None = None,
                    verbose: int = 2, batch_size: int = 32, jit_compile: bool | str = "auto",
                    backup_overhead: float = 0.1,
                    callbacks: Sequence[keras.callbacks.Callback] = (),
                    strategy: Any = None) -> dict[str, Any]:
    """Train an autoencoder with atomic checkpoints, resume after a kill, and a NaN guard.

    Rerunning with the same ``model_dir`` and settings after the process died continues from
    the last backed-up epoch (``model_dir/backup``); the result equals an uninterrupted run.

    Args:
        model: a model from :mod:`anomaly_utils.models` (or any Keras autoencoder), built.
        train_data: a dataset of ``(x, x)`` batches (e.g. :func:`patch_dataset`; any
            ``keras.utils.PyDataset``, or a ``tf.data.Dataset`` on TensorFlow) or an image
            array (uint8 or float in [0, 1], shuffled per epoch via :func:`image_dataset`).
            An :class:`~anomaly_utils.training.datasets.EpochDataset` is told each epoch
            before it starts, so a resumed run sees the same batches.
        val_data: the same for validation (arrays are not shuffled), or ``None`` to select the
            checkpoint on the training loss.
        model_dir: folder for ``model.keras`` (best epoch), ``history.csv`` (epoch counted
            from 0, one row per finished epoch), ``history.json``, ``config.json`` (model,
            training settings, Keras backend) and, while running, ``backup/``.
        epochs: total epochs (including those finished before a resume).
        learning_rate: Adam's learning rate (> 0).
        seed: seeds Python, numpy, TF and Keras and turns on deterministic TF ops.
        loss: a Keras loss; ``None`` picks the model's own (:func:`anomaly_utils.models.losses.default_loss`:
            MSE for AE-1, the SSIM loss for AE-2, the built-in ELBO for the VAE).
        early_stopping_patience: stop after this many epochs without a better monitored
            loss; ``None`` trains all epochs.
        verbose: Keras ``fit`` verbosity (0 silent, 2 one line per epoch).
        batch_size: batch size used when ``train_data``/``val_data`` are arrays.
        jit_compile: passed to ``compile`` (``"auto"``: XLA on a GPU, not on a CPU).
        backup_overhead: the largest share of the time spent writing resume backups
            (:class:`EpochBackup`); 1.0 backs up after every epoch.
        callbacks: extra Keras callbacks, run after the lab's own.
        strategy: what :func:`~anomaly_utils.training.strategy.make_strategy` gives: a
            ``tf.distribute`` strategy on TensorFlow, a ``keras.distribution.DataParallel``
            on JAX; ``None`` or TensorFlow's default strategy train on one device exactly as
            before. ``batch_size`` (and the batches of a dataset) are global: split across
            the replicas. On JAX every batch, the last one too, must divide by the number of
            devices. On PyTorch only ``None``.

    Returns:
        ``{"model": best model (loaded back from model.keras, uncompiled), "history": {column:
        list per epoch} including "epoch", "best_epoch": int, "best_value": float,
        "monitor": "val_loss" or "loss", "initial_epoch": first epoch this call ran,
        "model_path": str}``.

    Raises:
        ParameterError: a bad argument, a strategy of another backend than Keras' (or any
            but the default one on PyTorch), batches that do not divide across the devices
            of a JAX distribution, the VAE on more than one replica, or the VAE on a backend
            its noise does not support. LabError: the loss became NaN/inf.
        ArtifactError: ``model_dir`` holds an unfinished run with other settings.
    """
    epochs = check_int("epochs", epochs)
    batch_size = check_int("batch_size", batch_size)
    if isinstance(learning_rate, bool) or not isinstance(learning_rate, (int, float)) \
            or not math.isfinite(learning_rate) or learning_rate <= 0:
        raise ParameterError(f"learning_rate must be a finite number > 0, got {learning_rate!r}")
    seed = check_int("seed", seed, minimum=0)
    if early_stopping_patience is not None:
        early_stopping_patience = check_int("early_stopping_patience", early_stopping_patience)
    if isinstance(model, VariationalAutoencoder):
        if loss is not None:
            raise ParameterError("loss must be None for the VAE (it trains on its own ELBO)")
    elif loss is None:
        loss = default_loss(model)
    if strategy is not None and _is_default_strategy(strategy):
        strategy = None  # the default strategy: today's single-device path
    if strategy is not None:
        check_strategy(strategy, keras.backend.backend())
        if isinstance(model, VariationalAutoencoder) and replicas(strategy) > 1:
            raise ParameterError(
                "the VAE's own training step does not divide its loss across replicas, so "
                f"it cannot train on {replicas(strategy)} replicas",
                fix="train the VAE with strategy 'default', or use variant 'ae'")
        if keras.backend.backend() == "jax" and local_replicas(strategy) > 1:
            _check_divisible(local_replicas(strategy), batch_size,
                             train=image_dataset(train_data, batch_size, shuffle=False),
                             val=None if val_data is None else
                             image_dataset(val_data, batch_size, shuffle=False))
        model = _in_scope(model, strategy)
    model_dir = Path(model_dir)
    chief_backup_dir = model_dir / BACKUP_DIR
    if strategy is not None and not is_chief(strategy):
        model_dir = model_dir / WORKERS_DIR / worker_name(strategy)
    if is_multiworker(strategy):
        backup_overhead = 1.0  # every worker backs up every epoch, so all resume alike
    model_dir.mkdir(parents=True, exist_ok=True)
    backup_dir = model_dir / BACKUP_DIR

    config = {
        "model": builder_config(model) or {"builder": None, "name": model.name},
        "training": {"epochs": epochs, "learning_rate": float(learning_rate), "seed": seed,
                     "loss": _describe_loss(loss),
                     "early_stopping_patience": early_stopping_patience,
                     "batch_size": batch_size, "jit_compile": jit_compile,
                     "train_data": _describe(train_data), "val_data": _describe(val_data)},
    }
    _check_resumable(model_dir, config)
    config["backend"] = keras.backend.backend()  # the Keras backend that trained it
    if strategy is not None:  # beside "training", so a resume may change the strategy
        config["distribution"] = {"strategy": type(strategy).__name__,
                                  "replicas": replicas(strategy)}
    write_json(model_dir / CONFIG_FILE, config)

    set_global_seed(seed)
    train_ds = image_dataset(train_data, batch_size, shuffle=True, seed=seed)
    val_ds = None if val_data is None else image_dataset(val_data, batch_size, shuffle=False)
    monitor = "loss" if val_ds is None else "val_loss"

    with _scope(strategy):
        model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=loss,
                      jit_compile=jit_compile)
        guard = NanGuard(float(learning_rate))
        recorder = EpochRecorder(model_dir, monitor, early_stopping_patience, verbose)
        # Order matters at epoch end: checkpoint and CSV row first, the backup (the commit)
        # last.
        lab_callbacks = [EpochSetter(train_ds), guard, recorder,
                         EpochBackup(backup_dir, backup_overhead)]
        resume_from = backup_dir
        if (chief_backup_dir / BACKUP_METADATA).is_file():  # a worker reading the chief's
            resume_from = chief_backup_dir
        initial_epoch = restore_backup(model, resume_from)
    try:
        # JAX distributes a fit only while its distribution is set: the fit runs in the scope.
        with _scope(strategy) if keras.backend.backend() == "jax" else contextlib.nullcontext():
            model.fit(_fed(train_ds), validation_data=_fed(val_ds), epochs=epochs,
                      initial_epoch=initial_epoch, verbose=verbose, shuffle=False,
                      callbacks=lab_callbacks + list(callbacks))
    except LabError:
        if guard.tripped:
            shutil.rmtree(backup_dir, ignore_errors=True)
        raise

    rows = recorder.rows or read_history_csv(model_dir / HISTORY_CSV)
    history = {key: [row.get(key, math.nan) for row in rows]
               for key in dict.fromkeys(k for row in rows for k in row)}
    write_json(model_dir / HISTORY_JSON, history)
    best_model = load_model(model_dir / MODEL_FILE)
    return {"model": best_model, "history": history, "best_epoch": recorder.best_epoch,
            "best_value": recorder.best, "monitor": monitor,
            "initial_epoch": recorder.initial_epoch, "model_path": str(model_dir / MODEL_FILE)}


def _fed(dataset: Any) -> Any:
    """What ``model.fit`` gets for ``dataset``: on TensorFlow a ``PyDataset`` goes through
    :func:`~anomaly_utils.training.tensorflow_feed.feed_for_tensorflow` (no autotuning thread
    to wait for at every epoch); anything else, and every dataset on JAX and PyTorch, as is."""
    if keras.backend.backend() != "tensorflow" or not isinstance(dataset, keras.utils.PyDataset):
        return dataset
    return feed_for_tensorflow(dataset)


def _is_default_strategy(strategy: Any) -> bool:
    """Whether ``strategy`` is TensorFlow's default (one-device) strategy; TensorFlow is
    looked at only when it is already imported (a strategy object implies it is)."""
    tf = sys.modules.get("tensorflow")
    return tf is not None and strategy is tf.distribute.get_strategy() \
        and not tf.distribute.has_strategy()


def _scope(strategy: Any) -> contextlib.AbstractContextManager:
    """``strategy.scope()`` (tf.distribute and keras.distribution alike), or no scope."""
    return strategy.scope() if strategy is not None else contextlib.nullcontext()


def _check_divisible(devices: int, batch_size: int, **datasets: Any) -> None:
    """Refuse batches that a JAX distribution cannot split evenly across ``devices`` (it
    shards every batch, the last one of an epoch too, into equal parts): ``batch_size`` and
    the first and last batch of each dataset."""
    if batch_size % devices:
        raise ParameterError(
            f"batch_size {batch_size} does not divide across the {devices} devices of the "
            "distribution (JAX splits every batch into equal parts)",
            fix=f"use a batch_size that is a multiple of {devices}, e.g. "
                f"{max(devices, batch_size // devices * devices)}")
    for name, dataset in datasets.items():
        if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__") \
                or not len(dataset):
            continue  # not a PyDataset (nothing to look at before the fit), or empty
        for index in dict.fromkeys((0, len(dataset) - 1)):
            size = int(keras.tree.flatten(dataset[index])[0].shape[0])
            if size % devices:
                raise ParameterError(
                    f"batch {index} of the {name} data has {size} samples, which do not "
                    f"divide across the {devices} devices of the distribution (JAX splits "
                    "every batch into equal parts)",
                    fix=f"make batch_size and the number of {name} samples (images, or "
                        f"patches_per_epoch) multiples of {devices}, or use strategy "
                        "'default'")


def _in_scope(model: keras.Model, strategy: Any) -> keras.Model:
    """``model`` if it was built inside ``strategy.scope()``, else a copy built there (by its
    builder, or ``keras.models.clone_model``) holding the same weights."""
    if built_in(model, strategy):
        return model
    config = builder_config(model)
    with strategy.scope():
        if config and config.get("builder") in BUILDERS:
            copy = BUILDERS[config["builder"]](**config["kwargs"])
        else:
            copy = keras.models.clone_model(model)
        copy.set_weights(model.get_weights())
    return copy


def _check_resumable(model_dir: Path, config: dict) -> None:
    """Refuse to resume a backup written with other settings (``epochs`` may grow)."""
    backup_dir = model_dir / BACKUP_DIR
    config_path = model_dir / CONFIG_FILE
    if not backup_dir.is_dir() or not config_path.is_file():
        return
    previous = read_json(config_path)

    def comparable(c):
        training = {k: v for k, v in c.get("training", {}).items() if k != "epochs"}
        return {"model": c.get("model"), "training": training}

    if comparable(previous) != comparable(config):
        raise ArtifactError(
            f"'{model_dir}' holds an unfinished run ('{backup_dir}') with other settings than "
            f"this one (see '{config_path}')",
            fix=f"rerun with the same settings to resume, or delete '{backup_dir}' to start over")
