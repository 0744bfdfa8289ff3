"""What every model builder shares: argument checks, seeded initialisers, and the record of
which builder made a model (kept in ``config.json`` so a run can rebuild it).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import keras
import numpy as np

from anomaly_utils.errors import ParameterError

PACKAGE = "anomaly_utils"
AE1_BUILDER = "build_ae1"
AE2_BUILDER = "build_ae2"


def check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ParameterError(f"{name} must be a positive integer, got {value!r}",
                             fix=f"pass {name} as an int >= 1")
    return int(value)


def check_widths(name: str, values: object, length: int | None = None) -> tuple[int, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ParameterError(f"{name} must be a sequence of positive ints, got {values!r}")
    widths = tuple(check_positive_int(f"{name}[{i}]", v) for i, v in enumerate(values))
    if not widths or (length is not None and len(widths) != length):
        expected = f"{length}" if length is not None else "at least one"
        raise ParameterError(f"{name} must hold {expected} values, got {len(widths)}")
    return widths


def seeded_initializer(seed: int, index: int) -> keras.initializers.Initializer:
    """A seeded Glorot initializer, distinct per layer, so builds never depend on global state."""
    return keras.initializers.GlorotUniform(seed=seed * 1000 + index)


def remember_builder(model: keras.Model, builder: str, kwargs: dict) -> keras.Model:
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
