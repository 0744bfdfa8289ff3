"""Experiment lab for visual anomaly detection with convolutional autoencoders.

TensorFlow is imported only by the modules that build, train or run a model, so the command
line answers ``--help``, parameter and data errors without loading it.
"""

import os

from anomaly_utils.process_environment import set_tensorflow_defaults

# TensorFlow's C++ info and warning lines would bury the lab's own messages and make notebook
# outputs differ between machines (nbval compares stderr too); errors are still printed.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# TensorFlow's allocator and kernels, as every process of a run has them (process_environment).
set_tensorflow_defaults(os.environ)

# XLA reads XLA_FLAGS once, when JAX starts its backend, which may happen before the lab seeds
# anything: on JAX the deterministic GPU kernels are asked for at import (as
# seeding.set_global_seed also does, too late when JAX is already running).
if os.environ.get("KERAS_BACKEND") == "jax" and "xla_gpu_deterministic_ops" not in os.environ.get(
        "XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_gpu_deterministic_ops=true").strip()

__version__ = "0.1.0"
