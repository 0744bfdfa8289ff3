"""Stage 3, training: input pipelines, input corruptions, callbacks and the resumable fit.

- ``masks``: corruption names and the grid masks shared with inpainting inference.
- ``datasets``: tf.data pipelines of images, patches and patches with synthetic anomalies, stateless per epoch.
- ``callbacks``: NaN guard, checkpoint and history recorder, atomic resume backups.
- ``head``: training the segmentation head on synthetic anomalies.
- ``fit``: :func:`fit.fit_autoencoder`, the training loop every notebook uses.
"""
