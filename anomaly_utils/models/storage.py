"""Model files: ``model.keras`` written atomically and loaded back in safe mode, naming the
file and the fix when it is missing, corrupt or holds code.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import keras

from anomaly_utils.artifacts import atomic_path
from anomaly_utils.errors import ArtifactError

# The lab's own Keras classes register themselves when their modules are imported; a model file
# names them, so loading one needs them registered first.
from anomaly_utils.models import ae1, losses  # noqa: F401

MODEL_FILE = "model.keras"


def save_inference_model(model: keras.Model, path: str | os.PathLike) -> None:
    """Save ``model`` as ``.keras`` atomically, without the optimizer's state.

    The best checkpoint is for scoring, not for resuming (the backup holds the optimizer
    state), so leaving Adam's moments out makes it a third of the size (AE-1: ~280 MB
    instead of ~850 MB).
    """
    optimizer = getattr(model, "optimizer", None)
    model.optimizer = None
    try:
        with atomic_path(path) as tmp:
            model.save(tmp)
    finally:
        model.optimizer = optimizer


def load_model(path: str | os.PathLike) -> keras.Model:
    """Load a ``.keras`` model in safe mode, uncompiled.

    Raises:
        ArtifactError: the file is missing, corrupt, or refused by safe mode (e.g. it holds a
            Lambda layer with code, which this lab never writes).

    Example:
        >>> load_model("runs/missing/model.keras")  # doctest: +SKIP
        anomaly_utils.errors.ArtifactError: 'runs/missing/model.keras' is missing. ...
    """
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"model file '{path}' is missing",
                            fix="train the model first (or check the run directory)")
    try:
        return keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as exc:  # noqa: BLE001 - any failure to load is a bad artifact
        text = str(exc)
        if "safe_mode" in text or "lambda" in text.lower():
            raise ArtifactError(
                f"model file '{path}' was refused by safe mode: it contains code (e.g. a "
                "Lambda layer) that would run on loading",
                fix="use a model written by this lab; only load such files from a source "
                    "you trust, and never through this lab") from exc
        corrupt = isinstance(exc, (OSError, zipfile.BadZipFile, EOFError, ValueError))
        raise ArtifactError(
            f"model file '{path}' could not be loaded ({'corrupt or truncated: ' if corrupt else ''}"
            f"{type(exc).__name__}: {text[:300]})",
            fix="delete it and retrain, or check that anomaly_utils is importable") from exc
