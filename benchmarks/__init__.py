"""Benchmarks (`make bench`): scripts that print tables and write JSON to runs/bench/.

Importing the lab first gives every benchmark TensorFlow's process defaults
(:mod:`anomaly_utils.process_environment`: oneDNN and the BFC allocator) before any of them
loads Keras, as ``make`` and the notebook kernels have them; a value set by the caller, such as
``TF_ENABLE_ONEDNN_OPTS=0`` for a comparison, is kept.
"""

import anomaly_utils  # noqa: F401
