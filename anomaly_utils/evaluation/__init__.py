"""Stage 5, evaluation: metrics and thresholds, pure numpy (no model, no TensorFlow).

- ``metrics``: image and pixel AUROC, AUPRO, F1, bootstrap intervals, per-defect tables.
- ``thresholds``: threshold strategies chosen on validation scores, and segmentation.
"""
