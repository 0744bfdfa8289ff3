"""Experiment lab for visual anomaly detection with convolutional autoencoders."""

import os

# TensorFlow's C++ INFO and WARNING lines drown the notebooks' output; errors still show.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
