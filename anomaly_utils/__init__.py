"""Experiment lab for visual anomaly detection with convolutional autoencoders.

TensorFlow is imported only by the modules that build, train or run a model, so the command
line answers ``--help``, parameter and data errors without loading it.
"""

import os

# TensorFlow's C++ info and warning lines would bury the lab's own messages and make notebook
# outputs differ between machines (nbval compares stderr too); errors are still printed.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
