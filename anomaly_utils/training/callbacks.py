"""The training loop's callbacks: the epoch setter of the epoch-keyed datasets, the NaN guard,
the epoch recorder (best checkpoint, ``history.csv``, early stopping) and atomic backups
for resuming a killed run, written with Keras' public callback API only.
"""

from __future__ import annotations

import csv
import io
import math
import os
import shutil
import time
from pathlib import Path

import keras

from anomaly_utils.artifacts import atomic_path, read_json, write_json, write_text
from anomaly_utils.errors import ArtifactError, LabError, ParameterError
from anomaly_utils.models.storage import MODEL_FILE, save_inference_model
from anomaly_utils.training.datasets import set_dataset_epoch

HISTORY_CSV = "history.csv"
BACKUP_DIR = "backup"


class EpochSetter(keras.callbacks.Callback):
    """Tells an epoch-keyed dataset (:class:`~anomaly_utils.training.datasets.EpochDataset`)
    which epoch is starting, before Keras asks it for the epoch's first batch."""

    def __init__(self, dataset):
        super().__init__()
        self.dataset = dataset

    def on_epoch_begin(self, epoch, logs=None):
        set_dataset_epoch(self.dataset, epoch)


class NanGuard(keras.callbacks.Callback):
    """Raises LabError as soon as the training or validation loss stops being finite."""

    def __init__(self, learning_rate: float):
        super().__init__()
        self.learning_rate = learning_rate
        self.epoch = 0
        self.tripped = False

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def _fail(self, what: str) -> None:
        self.tripped = True
        raise LabError(
            f"{what}; training diverged (the backup was removed, the best checkpoint so far "
            "is kept)",
            fix=f"lower learning_rate (now {self.learning_rate:g}, try 10x lower) and check "
                "the input images for NaN/inf values")

    @staticmethod
    def _word(value: float) -> str:
        return "NaN" if math.isnan(value) else "infinite"

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self._fail(f"loss became {self._word(float(loss))} at epoch {self.epoch} batch "
                       f"{batch} (both counted from 0)")

    def on_epoch_end(self, epoch, logs=None):
        for name, value in (logs or {}).items():
            if not math.isfinite(float(value)):
                self._fail(f"{name} became {self._word(float(value))} at the end of epoch "
                           f"{epoch} (counted from 0)")


class EpochRecorder(keras.callbacks.Callback):
    """Best checkpoint, ``history.csv`` and early stopping, all consistent across resumes.

    On the first epoch of a (possibly resumed) fit it drops CSV rows of epochs at or after
    the starting one (written by a run killed before its backup) and recovers the best value
    and the early-stopping count from the rows that remain.
    """

    def __init__(self, model_dir: Path, monitor: str, patience: int | None, verbose: int):
        super().__init__()
        self.model_path = model_dir / MODEL_FILE
        self.csv_path = model_dir / HISTORY_CSV
        self.monitor = monitor
        self.patience = patience
        self.verbose = verbose
        self.rows: list[dict[str, float]] | None = None
        self.initial_epoch = 0
        self.best = math.inf
        self.best_epoch = -1

    def on_epoch_begin(self, epoch, logs=None):
        if self.rows is not None:
            return
        self.initial_epoch = epoch
        self.rows = [row for row in read_history_csv(self.csv_path) if row["epoch"] < epoch]
        if epoch and self.verbose:
            print(f"Resuming training at epoch {epoch} (counted from 0); epochs 0-{epoch - 1} "
                  f"were restored from {self.model_path.parent / BACKUP_DIR}", flush=True)
        for row in self.rows:
            if row.get(self.monitor, math.inf) < self.best:
                self.best, self.best_epoch = row[self.monitor], int(row["epoch"])
        if epoch and not self.model_path.is_file():
            self.best, self.best_epoch = math.inf, -1
        self._write_csv()

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        value = float(logs.get(self.monitor, math.nan))
        if value < self.best:
            self.best, self.best_epoch = value, epoch
            save_inference_model(self.model, self.model_path)
        self.rows.append({"epoch": epoch, **{k: float(v) for k, v in logs.items()}})
        self._write_csv()
        if self.patience is not None and epoch - self.best_epoch >= self.patience:
            self.model.stop_training = True
            if self.verbose:
                print(f"Early stopping after epoch {epoch}: {self.monitor} has not improved "
                      f"for {self.patience} epochs (best {self.best:.6g} at epoch "
                      f"{self.best_epoch})", flush=True)

    def _write_csv(self) -> None:
        keys = ["epoch"] + sorted({k for row in self.rows for k in row} - {"epoch"})
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=keys, lineterminator="\n")
        writer.writeheader()
        for row in self.rows:
            writer.writerow({k: (int(v) if k == "epoch" else repr(float(v)))
                             for k, v in row.items()})
        write_text(self.csv_path, buffer.getvalue())


BACKUP_METADATA = "training_metadata.json"


class EpochBackup(keras.callbacks.Callback):
    """Backs up model and optimizer state after an epoch, atomically and at a bounded cost,
    so that a killed run resumes from its last backed-up epoch (:func:`restore_backup`).

    Each backup's weights (model and Adam state) go atomically to a file of their own, and
    the metadata naming that file is written atomically after it: the metadata is the commit,
    so a kill at any instant leaves the previous backup or the new one, never a mix. (Keras'
    ``BackupAndRestore`` writes its weights in place before its metadata; a kill between the
    two pairs new weights with an old epoch number.)

    Writing is bounded to a share of the training time: an epoch is backed up only when the
    time since the last backup is at least ``(1 - max_overhead) / max_overhead`` times what the
    last backup took to write. Small models (a few ms per backup) are backed up after every
    epoch; AE-1 (70.7 M parameters with Adam's state, ~810 MB, ~2.4 s to write while an epoch
    of the synthetic carpet trains in ~4.3 s) every few epochs. A kill then loses at most about
    ``backup seconds / max_overhead`` of work plus the unfinished epoch; the resumed run still
    equals an uninterrupted one (history rows past the backup are dropped and retrained with
    the same data order). The backup folder is removed when training ends normally.

    Args:
        backup_dir: the backup folder.
        max_overhead: the largest share of wall time spent writing backups, in (0, 1];
            1.0 backs up every epoch whatever it costs.
    """

    def __init__(self, backup_dir: str | os.PathLike, max_overhead: float = 0.1):
        super().__init__()
        if not 0 < max_overhead <= 1:
            raise ParameterError(f"max_overhead must be in (0, 1], got {max_overhead!r}")
        self.backup_dir = Path(backup_dir)
        self.max_overhead = float(max_overhead)
        self.saved_epochs: list[int] = []  # epochs (finished, counted from 1) backed up
        self.clock = time.monotonic
        self._last_save_end = self.clock()
        self._last_save_seconds = 0.0

    def on_train_begin(self, logs=None):
        self._last_save_end = self.clock()

    def on_epoch_end(self, epoch, logs=None):
        since = self.clock() - self._last_save_end
        if since * self.max_overhead >= self._last_save_seconds * (1 - self.max_overhead):
            start = self.clock()
            self.write(epoch + 1)
            self._last_save_end = self.clock()
            self._last_save_seconds = self._last_save_end - start
            self.saved_epochs.append(epoch + 1)

    def on_train_end(self, logs=None):
        shutil.rmtree(self.backup_dir, ignore_errors=True)

    def write(self, finished_epochs: int) -> None:
        """Back up the model after ``finished_epochs`` epochs (the epoch to resume at)."""
        self.backup_dir.mkdir(parents=True, exist_ok=True)
        name = f"epoch-{finished_epochs:05d}.weights.h5"
        # No fsync: the backup guards against a killed process (the page cache survives it),
        # and syncing ~1 GB of AE-1 weights and Adam state every epoch doubles its time.
        with atomic_path(self.backup_dir / name, suffix=".weights.h5", durable=False) as tmp:
            self.model.save_weights(tmp)
        write_json(self.backup_dir / BACKUP_METADATA, {"epoch": finished_epochs, "weights": name})
        for stale in self.backup_dir.glob("epoch-*.weights.h5"):
            if stale.name != name:
                stale.unlink(missing_ok=True)


def restore_backup(model: keras.Model, backup_dir: str | os.PathLike) -> int:
    """Load the last backup of :class:`EpochBackup` into ``model`` (compiled); return the epoch
    to resume at, counted from 0 (0 without a backup).

    Raises:
        ArtifactError: the metadata names a weights file that is missing.
    """
    backup_dir = Path(backup_dir)
    metadata_path = backup_dir / BACKUP_METADATA
    if not metadata_path.is_file():
        return 0
    metadata = read_json(metadata_path)
    weights = backup_dir / metadata.get("weights", "")
    if not weights.is_file():
        raise ArtifactError(f"the training backup '{metadata_path}' names a missing weights "
                            f"file '{weights}'", fix=f"delete '{backup_dir}' to restart training")
    if model.optimizer is not None and not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    model.load_weights(weights)
    return int(metadata["epoch"])


def read_history_csv(path: str | os.PathLike) -> list[dict[str, float]]:
    """Rows of a ``history.csv`` (epoch as int, metrics as float); ``[]`` if it is missing."""
    path = Path(path)
    if not path.is_file():
        return []
    try:
        with open(path, newline="") as handle:
            return [{k: (int(v) if k == "epoch" else float(v)) for k, v in row.items() if v}
                    for row in csv.DictReader(handle)]
    except (ValueError, KeyError) as exc:
        raise ArtifactError(f"'{path}' is not a history written by fit_autoencoder ({exc})",
                            fix="delete it (and the backup folder beside it) and retrain") from exc
