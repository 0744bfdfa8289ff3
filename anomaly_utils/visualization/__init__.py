"""Stage 6, visualization: figures of data, training and results.

- ``plots``: matplotlib figures (saved atomically).
- ``gallery``: choosing and assembling the results gallery's rows.
- ``readme_figures``: the README's figures, refreshed from a run.
"""
