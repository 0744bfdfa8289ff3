"""Experiment lab for visual anomaly detection with convolutional autoencoders."""

import os
import sys

# TensorFlow's C++ log lines would otherwise bury the lab's own messages and make notebook
# outputs differ between runs (nbval compares stderr too); real errors still arrive as
# Python exceptions.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _import_tensorflow_quietly() -> None:
    """Import TensorFlow with file descriptor 2 on /dev/null for the import only.

    TensorFlow prints start-up lines to stderr before its logging is configured, whatever
    TF_CPP_MIN_LOG_LEVEL says. Everything printed after the import is shown as usual.
    """
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to protect
        import tensorflow  # noqa: F401
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)


if "tensorflow" not in sys.modules:
    _import_tensorflow_quietly()

__version__ = "0.1.0"
