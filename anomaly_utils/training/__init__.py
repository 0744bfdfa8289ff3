"""Stage 3, training: input pipelines, input corruptions, callbacks and the resumable fit.

- ``masks``: corruption names and the grid masks shared with inpainting inference.
- ``datasets``: numpy ``keras.utils.PyDataset`` pipelines (the same on every backend) of images,
  patches and patches with synthetic anomalies; each batch a pure function of (seed, epoch, batch).
- ``tensorflow_feed``: those datasets as TensorFlow's ``fit`` takes them, without tf.data's
  autotuning thread (whose teardown stalled epochs for seconds).
- ``patches``: numpy crops, flips and turns, and the input corruptions of a batch of patches.
- ``callbacks``: NaN guard, checkpoint and history recorder, atomic resume backups.
- ``head``: training the segmentation head on synthetic anomalies.
- ``fit``: :func:`fit.fit_autoencoder`, the training loop every notebook uses.
"""
