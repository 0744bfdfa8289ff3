"""Stage 4, scoring: from a trained model to reconstructions, anomaly maps and image scores.

- ``map_kinds``: the names of the anomaly maps and their blends (no numpy needed).
- ``maps``: anomaly maps and image scores from an image and its reconstruction.
- ``reconstruction``: whole-image, sliding-window and inpainting reconstruction.
- ``head_maps``: the segmentation head's maps and image scores.
- ``scorer``: :class:`scorer.Scorer`, one way to score images for every caller.
- ``candidates``: the registry of what a run fits, scores and chooses among.
- ``stored``: each split's scores on disk.
"""
