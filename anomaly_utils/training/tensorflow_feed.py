"""How a ``PyDataset`` reaches TensorFlow's ``fit``: without tf.data's autotuning thread.

Keras' TensorFlow trainer wraps a ``PyDataset`` in ``tf.data.Dataset.from_generator(...)
.prefetch(AUTOTUNE)`` and makes a new iterator every epoch. Autotuning starts a model
thread per iterator, and destroying an iterator waits for that thread: with TensorFlow's
oneDNN kernels busy on both cores, the wait was 0.6-5 s at the start of an epoch, in about
half the epochs (AE-1 on the synthetic carpet, 2-core AMD EPYC: 7 training steps take 5.5 s,
the wait added 4.6-5.0 s to three epochs of five). With autotuning off there was no wait in
16 epochs. :func:`feed_for_tensorflow` builds the same generator pipeline with autotuning off
(as Keras itself does for a ``PyDataset`` that has worker threads of its own) and one batch
prefetched.

The batches are the dataset's own, made lazily by the iterator of each epoch, so an
:class:`~anomaly_utils.training.datasets.EpochDataset` told its epoch at ``on_epoch_begin``
yields exactly what Keras' own wrapping would.

TensorFlow is imported only by :func:`feed_for_tensorflow`, which ``fit_autoencoder`` calls
only on the TensorFlow backend.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np


def _standardized(batch: Any) -> Any:
    """A batch as Keras' ``fit`` takes it: lists become tuples, one array becomes ``(x,)``."""
    if isinstance(batch, np.ndarray):
        return (batch,)
    if isinstance(batch, list):
        return tuple(batch)
    return batch


def feed_for_tensorflow(dataset: keras.utils.PyDataset) -> Any:
    """``dataset`` as a ``tf.data.Dataset`` of the same batches, without autotuning.

    Args:
        dataset: a ``keras.utils.PyDataset`` of ``len(dataset)`` batches, each an array, a
            tuple/list ``(x, y[, sample_weight])`` or a dict of arrays whose first axis is the
            batch (it may be shorter in the last batch).

    Returns:
        A ``tf.data.Dataset`` with cardinality ``len(dataset)`` that calls ``dataset[i]`` for
        ``i`` in ``range(len(dataset))`` on every new iterator, one batch ahead.

    Raises:
        ValueError: ``dataset`` has no batches (Keras' own message for the same case).
    """
    import tensorflow as tf

    steps = len(dataset)
    if steps == 0:
        raise ValueError("The PyDataset has length 0")
    first = _standardized(dataset[0])
    signature = keras.tree.map_structure(
        lambda a: tf.TensorSpec((None, *np.shape(a)[1:]), tf.as_dtype(np.asarray(a).dtype)),
        first)

    def batches():
        for index in range(steps):
            yield _standardized(dataset[index])

    options = tf.data.Options()
    options.autotune.enabled = False
    feed = tf.data.Dataset.from_generator(batches, output_signature=signature)
    return (feed.apply(tf.data.experimental.assert_cardinality(steps))
            .prefetch(1).with_options(options))
