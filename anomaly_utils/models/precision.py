"""Mixed precision where it pays: 16-bit compute on a GPU, float32 everywhere on a CPU.

1. :func:`gpu_compute_capability` asks the Keras backend (TensorFlow, JAX or PyTorch) for its
   first GPU and that GPU's CUDA compute capability.
2. :func:`use_mixed_precision_on_gpu` sets Keras' global dtype policy from it: bfloat16 where
   the GPU computes in it (compute capability 8.0 and up: Ampere, Hopper and later), float16
   on older or unidentified GPUs, float32 without a GPU.

The lab's models keep their output layers in float32 (``dtype="float32"``), so the losses,
the anomaly maps and the stored reconstructions are float32 under every policy. TensorFlow is
imported only when it is the backend.
"""

from __future__ import annotations

import keras

MIXED = "mixed_float16"
MIXED_BF16 = "mixed_bfloat16"
FULL = "float32"
# bfloat16 tensor cores arrived with Ampere (compute capability 8.0).
BF16_CAPABILITY = (8, 0)


def _parse_capability(value: object) -> tuple[int, int] | None:
    """(major, minor) from "8.6", (8, 6) or 8.6; None when it cannot be read."""
    try:
        if isinstance(value, (tuple, list)):
            return int(value[0]), int(value[1])
        major, _, minor = str(value).partition(".")
        return int(major), int(minor or 0)
    except (TypeError, ValueError, IndexError):
        return None


def gpu_compute_capability() -> tuple[int, int] | None:
    """The CUDA compute capability of the backend's first GPU, ``(0, 0)`` for a GPU whose
    capability is unknown (e.g. ROCm), ``None`` without a GPU.

    Asks only the backend Keras runs on: TensorFlow's physical GPU devices, JAX's devices of
    platform ``gpu``, or ``torch.cuda``.

    Example:
        >>> gpu_compute_capability() is None or len(gpu_compute_capability()) == 2
        True
    """
    backend = keras.backend.backend()
    capability: object = None
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if not gpus:
            return None
        try:
            capability = tf.config.experimental.get_device_details(gpus[0]).get(
                "compute_capability")
        except (AttributeError, TypeError, ValueError):  # details of an unusual device
            capability = None
    elif backend == "jax":
        import jax

        try:
            gpus = [device for device in jax.devices() if device.platform == "gpu"]
        except RuntimeError:  # no backend could start
            gpus = []
        if not gpus:
            return None
        capability = getattr(gpus[0], "compute_capability", None)
    elif backend == "torch":
        import torch

        if not torch.cuda.is_available():
            return None
        capability = torch.cuda.get_device_capability(0)
    else:
        return None
    return _parse_capability(capability) or (0, 0)


def use_mixed_precision_on_gpu() -> str:
    """Set Keras' global dtype policy: ``mixed_bfloat16`` on a GPU of compute capability 8.0
    or more, ``mixed_float16`` on another GPU, ``float32`` without one (a CPU gains nothing
    from 16-bit floats and rounds differently). Call it before building a model; returns the
    policy's name.

    Example:
        >>> policy = use_mixed_precision_on_gpu()  # "float32" on a CPU
        >>> keras.mixed_precision.global_policy().name == policy
        True
    """
    capability = gpu_compute_capability()
    if capability is None:
        policy = FULL
    elif capability >= BF16_CAPABILITY:
        policy = MIXED_BF16
    else:
        policy = MIXED
    keras.mixed_precision.set_global_policy(policy)
    return policy
