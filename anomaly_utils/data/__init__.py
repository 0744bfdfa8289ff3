"""Stage 1, data: datasets in the MVTec AD layout, images, the synthetic carpet, pseudo-anomalies
and the MVTec download. Knows no model.

- ``images``: reading and checking image and mask files.
- ``layout``: scanning a folder in the MVTec layout, the train/validation split, fingerprints.
- ``loading``: decoding and resizing a dataset into arrays.
- ``parts``: elongated images and their masks cut into near-square parts (``cut-parts``).
- ``synthetic``: the procedural synthetic carpet.
- ``pseudo_anomalies``: anomalies pasted into defect-free images (labelled validation sets).
- ``training_anomalies``: Perlin-shaped synthetic anomalies for training AE-2's segmentation head.
- ``download``: MVTec AD categories, downloaded, verified and extracted.
"""
