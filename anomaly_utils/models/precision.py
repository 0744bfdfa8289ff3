"""Mixed precision where it pays: float16 compute on a GPU, float32 everywhere on a CPU.

The lab's models keep their output layers in float32 (``dtype="float32"``), so the losses,
the anomaly maps and the stored reconstructions are float32 under either policy.
"""

from __future__ import annotations

import keras
import tensorflow as tf

MIXED = "mixed_float16"
FULL = "float32"


def use_mixed_precision_on_gpu() -> str:
    """Set Keras' global dtype policy: ``mixed_float16`` when TensorFlow sees a GPU, else
    ``float32`` (a CPU gains nothing from float16 and rounds differently). Call it before
    building a model; returns the policy's name."""
    policy = MIXED if tf.config.list_physical_devices("GPU") else FULL
    keras.mixed_precision.set_global_policy(policy)
    return policy
