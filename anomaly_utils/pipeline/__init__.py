"""Stage 7, pipeline: the notebook chain run headless, sweeps and the command line.

- ``parameters``: what the notebooks declare, allowed ranges, resolving overrides.
- ``provenance``: what a run records about where it ran.
- ``runs``: running the notebook chain with papermill, resuming, the run summary.
- ``sweep``: grids of runs that share the work they have in common.
- ``score_images``: the ``score`` command on new images.
- ``cli``: ``python -m anomaly_utils``.
"""
