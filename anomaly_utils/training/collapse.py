"""Training that notices when the autoencoder learned nothing, and tries again slower.

On some data an autoencoder collapses: its output becomes nearly flat, and its error map
then shows the texture, not the defects. Measured on the ELPV solar cells with the lab's
AE-2 defaults (Adam 1e-3): the validation reconstruction's L1 error was 1.6x (poly) and 2.0x
(mono) that of painting every crop in its own mean grey, its output's standard deviation
0.006 against the crops' 0.06-0.09; at 3e-4 it learned (docs/experiments.md, "AE-2 that
learned nothing"). The carpet and magnetic_tile learn at 1e-3 (magnetic_tile: 0.32x).

:func:`reconstruction_check` compares a model's validation L1 error with that flat baseline;
:func:`fit_until_learned` trains, checks, and while the model is no better than the baseline
sets the attempt aside (``model_dir/collapsed/lr_<rate>/``, kept for inspection) and trains
again from fresh weights at a third of the learning rate, at most ``retries`` times, when it
trained at least :data:`MIN_EPOCHS` epochs (a few epochs leave any autoencoder near flat, and
a slower retry would not help; a short run is only warned). Each
verdict is recorded in ``model_dir/attempts.json`` before the next attempt starts, so a run
killed during a retry resumes that retry, not the attempt already judged.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import keras
import numpy as np

from anomaly_utils.artifacts import read_json, write_json
from anomaly_utils.training.fit import fit_autoencoder

ATTEMPTS_FILE = "attempts.json"
COLLAPSED_DIR = "collapsed"
RETRY_FACTOR = 3.0  # each retry divides the learning rate by this
MIN_EPOCHS = 10  # shorter trainings are warned about, not retried


def batches(data: Any) -> Iterable:
    """The ``(inputs, targets)`` batches of a dataset, a Keras ``PyDataset`` or a list."""
    if hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        return (data[i] for i in range(len(data)))
    return iter(data)


def reconstruction_check(model: keras.Model, val_data: Any) -> dict[str, float | bool]:
    """Whether ``model`` reconstructs its validation crops better than a flat grey does.

    Args:
        model: maps inputs (B, H, W, C) in [0, 1] to reconstructions of the same shape.
        val_data: ``(inputs, targets)`` batches, float32 (B, H, W, C) in [0, 1].

    Returns:
        ``{"model_l1", "flat_l1", "ratio", "learned"}``: the mean absolute error of the
        reconstructions, that of each target's own mean value (the best flat image under
        L1 is the median; the mean is within a few percent of it here and needs no sort),
        their ratio, and ``ratio < 1``.
    """
    model_error = flat_error = 0.0
    count = 0
    for inputs, targets in batches(val_data):
        targets = np.asarray(targets, np.float32)
        outputs = np.asarray(model.predict(np.asarray(inputs), verbose=0), np.float32)
        model_error += float(np.abs(outputs - targets).sum())
        flat = targets.mean(axis=(1, 2, 3), keepdims=True)
        flat_error += float(np.abs(targets - flat).sum())
        count += targets.size
    model_l1, flat_l1 = model_error / count, flat_error / count
    ratio = model_l1 / flat_l1 if flat_l1 > 0 else float("inf")
    return {"model_l1": model_l1, "flat_l1": flat_l1, "ratio": ratio, "learned": ratio < 1.0}


def _to_stderr(message: str) -> None:
    # A verdict depends on how training went, so it is a warning, not a result: in a notebook
    # it shows in red, and nbval's comparison of outputs leaves it out (pipeline.runs).
    print(message, file=sys.stderr)


def fit_until_learned(build_model: Callable[[], keras.Model], train_data: Any, val_data: Any,
                      model_dir: str | os.PathLike, *, learning_rate: float, retries: int = 2,
                      log: Callable[[str], None] = _to_stderr, **fit_options: Any) -> dict:
    """:func:`~anomaly_utils.training.fit.fit_autoencoder`, retried at a lower learning rate
    while the model reconstructs no better than a flat grey (:func:`reconstruction_check`).

    Args:
        build_model: returns a fresh, seeded model (called once per attempt).
        train_data, val_data: as for ``fit_autoencoder``; ``val_data`` is also what the
            check reconstructs.
        model_dir: the model's folder; a collapsed attempt moves to
            ``model_dir/collapsed/lr_<rate>/``.
        learning_rate: the first attempt's rate; attempt k uses it / 3**k.
        retries: attempts after the first, at most.
        log: where each verdict is reported (default: standard error).
        **fit_options: passed to ``fit_autoencoder`` (epochs, seed, loss, ...); with fewer
            than :data:`MIN_EPOCHS` ``epochs`` a model that learned nothing is not retried.

    Returns:
        ``fit_autoencoder``'s result with ``"check"`` (the last attempt's check),
        ``"learning_rate"`` (its rate) and ``"attempts"`` (the verdicts of the collapsed
        attempts before it, oldest first).
    """
    model_dir = Path(model_dir)
    record_path = model_dir / ATTEMPTS_FILE
    attempts = read_json(record_path)["collapsed"] if record_path.is_file() else []
    while True:
        rate = learning_rate / RETRY_FACTOR ** len(attempts)
        fit = fit_autoencoder(build_model(), train_data, val_data, model_dir,
                              learning_rate=rate, **fit_options)
        check = reconstruction_check(fit["model"], val_data)
        verdict = (f"learning rate {rate:.3g}: validation L1 {check['model_l1']:.4f}, "
                   f"{check['ratio']:.2f}x that of a flat grey")
        short = fit_options.get("epochs", MIN_EPOCHS) < MIN_EPOCHS
        if check["learned"] or short or len(attempts) >= retries:
            if not check["learned"]:
                why = (f"after {fit_options.get('epochs')} epochs (fewer than {MIN_EPOCHS}, "
                       "so not retried)" if short else f"still after {len(attempts)} slower "
                       + ("retry" if len(attempts) == 1 else "retries"))
                log(f"warning: {verdict}, {why}; the model learned nothing from these "
                    "images, so its maps show texture, not defects (notebook 04 ranks it "
                    "on validation like every candidate)")
            elif attempts:
                log(f"{verdict}: learned")
            fit.update(check=check, learning_rate=rate, attempts=attempts)
            return fit
        log(f"{verdict}: learned nothing; training again from fresh weights at "
            f"{rate / RETRY_FACTOR:.3g}")
        aside = model_dir / COLLAPSED_DIR / f"lr_{rate:g}"
        shutil.rmtree(aside, ignore_errors=True)
        aside.mkdir(parents=True)
        for entry in list(model_dir.iterdir()):
            if entry.name not in (COLLAPSED_DIR, ATTEMPTS_FILE):
                shutil.move(str(entry), aside / entry.name)
        attempts.append({"learning_rate": rate, **check})
        write_json(record_path, {"collapsed": attempts})
