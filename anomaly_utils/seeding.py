"""One place that seeds every random source the lab uses, on any Keras backend."""

from __future__ import annotations

import os
import random

import numpy as np

# XLA's switch to deterministic GPU kernels (scatter, reductions, autotuning) for JAX.
XLA_DETERMINISM_FLAG = "--xla_gpu_deterministic_ops=true"


def _deterministic_ops(backend: str) -> None:
    """Make the backend's ops deterministic (same inputs, same machine: same bits)."""
    if backend == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    elif backend == "jax":
        # On a CPU, XLA's kernels are deterministic already. On a GPU, XLA reads XLA_FLAGS
        # once, when JAX starts its backend (the first op or device query, not `import jax`):
        # set it in the environment before the process starts to be sure.
        flags = os.environ.get("XLA_FLAGS", "")
        if "xla_gpu_deterministic_ops" not in flags:
            os.environ["XLA_FLAGS"] = f"{flags} {XLA_DETERMINISM_FLAG}".strip()
    elif backend == "torch":
        # cuBLAS needs a fixed workspace to be deterministic; read when CUDA starts.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        import torch

        torch.use_deterministic_algorithms(True)


def set_global_seed(seed: int, deterministic_ops: bool = True) -> None:
    """Seed Python, numpy, Keras and its backend; optionally make the backend's ops deterministic.

    ``keras.utils.set_random_seed`` seeds Python, numpy, Keras' global seed generator, PyTorch
    when it is the backend, and TensorFlow whenever it is installed (so under JAX it imports
    TensorFlow if present; the lab's own modules do not need it there). With ``deterministic_ops`` the same
    parameters on the same machine give bit-identical losses: TensorFlow's op determinism,
    ``torch.use_deterministic_algorithms``, or XLA's deterministic GPU ops for JAX (through
    ``XLA_FLAGS``, which takes effect only if JAX has not started its backend yet; nothing is
    needed on a CPU). Deterministic kernels are slightly slower on a GPU.

    Example:
        >>> set_global_seed(0)
        >>> int(np.random.randint(1000))
        684
    """
    os.environ["PYTHONHASHSEED"] = str(seed)
    random.seed(seed)
    np.random.seed(seed)
    import keras

    keras.utils.set_random_seed(seed)
    if deterministic_ops:
        _deterministic_ops(keras.backend.backend())
