"""Stage 7, pipeline: the notebook chain run headless, sweeps and the command line.

- ``parameters``: what the notebooks declare, allowed ranges, resolving overrides.
- ``provenance``: what a run records about where it ran.
- ``runs``: running the notebook chain with papermill, resuming, the run summary.
- ``sharing``: what a run takes from another where both would run a notebook alike.
- ``sweep``: grids of runs that share the work they have in common.
- ``auto``: ``--preset auto``, one run per preset and the candidate validation prefers.
- ``elongated``: ``--parts``, a run on elongated images made on their near-square parts.
- ``cluster``: a sweep's notebook executions on a Dask scheduler.
- ``score_images``: the ``score`` command on new images.
- ``cli``: ``python -m anomaly_utils``.
"""
