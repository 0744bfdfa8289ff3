"""The environment variables the lab's processes start with, unless the user set them.

Each is read by a library once, when a process starts or when TensorFlow loads, so the lab
sets it in three places with the same value: the Makefile exports it for every process make
starts (``export NAME ?= VALUE``), every notebook kernel of a run gets it
(:func:`anomaly_utils.pipeline.provenance.kernel_environment`), and importing the package sets
the ones TensorFlow reads (:data:`READ_BY_TENSORFLOW`) before any of its modules loads
TensorFlow, so that ``score`` computes with the kernels' settings. A user's own value is
always kept. ``tests/test_backends.py`` checks the Makefile against :data:`DEFAULTS`; the
measurements are in ``docs/performance.md`` (2-core AMD EPYC with AVX2, no AVX-512).

Example:
    >>> with_defaults({"TF_ENABLE_ONEDNN_OPTS": "0"})["TF_ENABLE_ONEDNN_OPTS"]
    '0'
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping

DEFAULTS: dict[str, str] = {
    # glibc's malloc maps each large array (a training step's activations and gradients)
    # afresh and faults it in 4 KiB pages; hugetlb=1 asks for transparent huge pages on those
    # maps (glibc 2.35 and later; other C libraries ignore it). AE-1's training: 7.2 M page
    # faults -> 1.6 M, 79 -> 63 s. Read when a process starts, so never set in-process.
    "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1",
    # TensorFlow's CPU tensors come from malloc by default, and a step fed by a
    # keras.utils.PyDataset (every lab model's input) gets fresh, unfaulted memory for its
    # activations at every step; the BFC allocator keeps and reuses it. AE-2 from the lab's
    # patch_dataset: 82-120 -> 168-171 crops/s; AE-1's peak RSS 2.60 -> 2.88 GB.
    "TF_CPU_ALLOCATOR_USE_BFC": "true",
    # TensorFlow turns its oneDNN kernels on by default only on CPUs with AVX-512 VNNI, BF16 or
    # AMX; elsewhere it uses Eigen's, which are slower for every lab model. On AVX2: training
    # AE-1 22 -> 32 img/s, AE-2 163 -> 220, the segmentation head 36 -> 51; AE-2 + head full
    # maps 3.3 -> 5.8 img/s; make run 973 -> 652 s. The same kernels on every x86 CPU, so the
    # same kind of rounding as the AVX-512 machines that made the committed notebooks.
    "TF_ENABLE_ONEDNN_OPTS": "1",
}
"""Variable -> value set for every process the lab starts, unless already set."""

READ_BY_TENSORFLOW: tuple[str, ...] = ("TF_CPU_ALLOCATOR_USE_BFC", "TF_ENABLE_ONEDNN_OPTS")
"""The variables of :data:`DEFAULTS` that TensorFlow reads when it loads (or allocates first),
so that setting them in a process before that still takes effect."""


def with_defaults(environment: Mapping[str, str]) -> dict[str, str]:
    """``environment`` with every variable of :data:`DEFAULTS` it lacks added."""
    return {**DEFAULTS, **environment}


def set_tensorflow_defaults(environment: MutableMapping[str, str]) -> None:
    """Set the variables of :data:`READ_BY_TENSORFLOW` in ``environment`` (``os.environ``)
    where they are not set yet."""
    for name in READ_BY_TENSORFLOW:
        environment.setdefault(name, DEFAULTS[name])
