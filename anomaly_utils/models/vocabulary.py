"""Names of the models' choices, importable without Keras, so that notebook parameters are
checked (``pipeline.parameters``) before anything heavy loads."""

from __future__ import annotations

# How AE-2's segmentation head is trained: on a frozen AE-2, or with it.
HEAD_TRAININGS: tuple[str, ...] = ("two_stage", "joint")
