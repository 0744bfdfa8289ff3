"""Experiment lab for visual anomaly detection with convolutional autoencoders."""

import contextlib
import importlib.abc
import importlib.machinery
import os
import sys

# TensorFlow's C++ log lines would otherwise bury the lab's own messages and make notebook
# outputs differ between runs (nbval compares stderr too); real errors still arrive as
# Python exceptions.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@contextlib.contextmanager
def _stderr_to_devnull():
    """Point file descriptor 2 at /dev/null inside the block (a no-op without a stderr)."""
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to protect
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class _QuietLoader(importlib.abc.Loader):
    """Runs the wrapped loader's module code with stderr silenced."""

    def __init__(self, loader: importlib.abc.Loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        with _stderr_to_devnull():
            self.loader.exec_module(module)

    def __getattr__(self, name: str):  # get_resource_reader, is_package, ... as the original
        return getattr(self.loader, name)


class _QuietTensorFlowFinder(importlib.abc.MetaPathFinder):
    """Makes the first ``import tensorflow`` (direct or through keras) a quiet one.

    TensorFlow prints start-up lines to stderr before its logging is configured, whatever
    TF_CPP_MIN_LOG_LEVEL says; everything it prints after the import is shown as usual.
    Importing TensorFlow only when a module needs it keeps the command line quick (``--help``,
    parameter and data errors in well under a second) and the pipeline's own process small.
    """

    def find_spec(self, fullname, path, target=None):
        if fullname != "tensorflow":
            return None
        sys.meta_path.remove(self)  # once is enough; it also stops the lookup below recursing
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


if "tensorflow" not in sys.modules and not any(
        isinstance(finder, _QuietTensorFlowFinder) for finder in sys.meta_path):
    sys.meta_path.insert(0, _QuietTensorFlowFinder())

__version__ = "0.1.0"
