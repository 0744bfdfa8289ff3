"""One place that seeds every random source the lab uses."""

from __future__ import annotations

import os
import random

import numpy as np


def set_global_seed(seed: int, deterministic_ops: bool = True) -> None:
    """Seed Python, numpy, TensorFlow and Keras; optionally make TF ops deterministic.

    With ``deterministic_ops`` the same parameters on the same machine give bit-identical
    losses (TensorFlow picks deterministic kernels; slightly slower on a GPU).
    """
    os.environ["PYTHONHASHSEED"] = str(seed)
    random.seed(seed)
    np.random.seed(seed)
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    if deterministic_ops:
        tf.config.experimental.enable_op_determinism()
