"""Distribution strategies for training: one device, all local GPUs, or several machines.

:func:`make_strategy` names a ``tf.distribute`` strategy (on TensorFlow, Keras' default
backend; on another backend only ``"default"`` exists, as ``None``, one device):

- ``"default"``: TensorFlow's default strategy (one device, what training always did);
- ``"mirrored"``: ``MirroredStrategy``, one replica per device of ``devices`` (default: every
  local GPU; on a machine without one, the CPU), gradients all-reduced every step;
- ``"multiworker"``: ``MultiWorkerMirroredStrategy`` across the machines that the
  ``TF_CONFIG`` environment variable describes (every worker runs the same program with its
  own ``task``); create it before any other TensorFlow work of the process.

:func:`anomaly_utils.training.fit.fit_autoencoder` takes the strategy as ``strategy=``. The
batch size stays the global one: each step's batch is split across the replicas, so a run
on N replicas takes the same steps on the same data as on one device. A model that was
built outside ``strategy.scope()`` is rebuilt inside it by ``fit_autoencoder`` (same builder,
same weights), so callers may build as usual.

Example:
    >>> strategy = make_strategy("default")
    >>> replicas(strategy)
    1
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from anomaly_utils.errors import ParameterError

if TYPE_CHECKING:
    import tensorflow as tf

# The names, importable without TensorFlow (pipeline.parameters checks them before a run).
STRATEGIES = ("default", "mirrored", "multiworker")
_MULTIWORKER: dict[str, tf.distribute.Strategy] = {}


def make_strategy(name: str = "default",
                  devices: Sequence[str] | None = None) -> tf.distribute.Strategy:
    """The ``tf.distribute`` strategy called ``name`` (one of :data:`STRATEGIES`).

    Args:
        name: ``"default"``, ``"mirrored"`` or ``"multiworker"``.
        devices: for ``"mirrored"`` only, device names such as ``["/gpu:0", "/gpu:1"]``
            (``None``: every local GPU, or the CPU where there is none).

    Returns:
        The strategy. ``"multiworker"`` is made once per process (TensorFlow allows no
        second one) and returned again on later calls. On a Keras backend other than
        TensorFlow, ``"default"`` gives ``None`` (``fit_autoencoder`` then trains on one
        device).

    Raises:
        ParameterError: an unknown name, ``devices`` with another strategy than
            ``"mirrored"``, an unknown device, ``"multiworker"`` without a valid
            ``TF_CONFIG``, or ``"mirrored"``/``"multiworker"`` on another Keras backend than
            TensorFlow.
    """
    if name not in STRATEGIES:
        raise ParameterError(f"unknown distribution strategy {name!r}",
                             fix=f"use one of {STRATEGIES}")
    if devices is not None and name != "mirrored":
        raise ParameterError(f"devices={list(devices)!r} is only for the mirrored strategy, "
                             f"not {name!r}", fix="drop devices, or use strategy 'mirrored'")
    import keras

    backend = keras.backend.backend()
    if backend != "tensorflow":
        check_backend(name, backend)
        return None
    import tensorflow as tf

    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        if devices is not None:
            devices = _check_devices(devices)
        return tf.distribute.MirroredStrategy(devices=devices)
    if name not in _MULTIWORKER:
        _check_tf_config()
        _MULTIWORKER[name] = _multiworker_class()()
    return _MULTIWORKER[name]


def check_backend(name: str, backend: str) -> None:
    """Refuse a ``tf.distribute`` strategy (any but ``"default"``) on another Keras backend
    than TensorFlow.

    Raises:
        ParameterError: naming the strategy, the backend and the two ways out.
    """
    if name != "default" and backend != "tensorflow":
        raise ParameterError(
            f"strategy {name!r} is TensorFlow's tf.distribute, but Keras runs on {backend!r}, "
            "where the lab trains on one device",
            fix=f"use -p ae1.strategy default -p ae2.strategy default (the defaults) on "
                f"{backend}, or run with --backend tensorflow to train with strategy {name!r}")


def _multiworker_class() -> type:
    """TensorFlow's ``MultiWorkerMirroredStrategy`` with a ``reduce`` that Keras' ``fit`` can use.

    Two of Keras' calls fail on the collective strategy as TensorFlow ships it: ``fit``
    reduces a whole ``(x, y)`` batch in one call to build the metrics (the mirrored strategy
    maps over the structure, the collective one tries to make the tuple a tensor), and it
    averages the per-replica scalar logs along ``axis=0``, which a scalar does not have.
    Here each part of a structure is reduced on its own (the same reduction, in the same
    order on every worker), and a scalar is reduced across replicas only (``axis=None``).
    """
    import tensorflow as tf

    class MultiWorkerMirroredStrategy(tf.distribute.MultiWorkerMirroredStrategy):
        def reduce(self, reduce_op, value, axis):
            parent = super()

            def one(part):
                scalar = all(getattr(t, "shape", None) is not None and t.shape.rank == 0
                             for t in self.experimental_local_results(part))
                return parent.reduce(reduce_op, part, None if scalar else axis)

            return tf.nest.map_structure(one, value)

    return MultiWorkerMirroredStrategy


def _check_devices(devices: Sequence[str]) -> list[str]:
    if isinstance(devices, str) or not devices or \
            not all(isinstance(d, str) and d for d in devices):
        raise ParameterError(f"devices must be a non-empty list of device names, got "
                             f"{devices!r}", fix="pass e.g. ['/gpu:0', '/gpu:1']")
    import tensorflow as tf

    known = {d.name.lower().rsplit("device:", 1)[-1] for d in tf.config.list_logical_devices()}
    for device in devices:
        short = device.lower().rsplit("device:", 1)[-1].lstrip("/")
        if short not in known:
            raise ParameterError(f"device {device!r} is not on this machine "
                                 f"(devices: {sorted(known)})",
                                 fix="pick from the list, or pass devices=None for every GPU")
    return list(devices)


def _check_tf_config() -> dict:
    """The parsed ``TF_CONFIG``, checked enough that the strategy will not hang on a typo."""
    text = os.environ.get("TF_CONFIG")
    fix = ('set TF_CONFIG on every worker, e.g. {"cluster": {"worker": ["host1:12345", '
           '"host2:12345"]}, "task": {"type": "worker", "index": 0}} (index differs per worker)')
    if not text:
        raise ParameterError("the multiworker strategy reads its cluster from TF_CONFIG, "
                             "which is not set", fix=fix)
    try:
        config = json.loads(text)
        workers = config["cluster"]["worker"]
        task = config["task"]
        index = int(task["index"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ParameterError(f"TF_CONFIG is not a cluster description ({exc})", fix=fix) from exc
    members = config["cluster"].get(task["type"], [])
    if not workers or not 0 <= index < len(members):
        raise ParameterError(f"TF_CONFIG's task {task} is not in its cluster "
                             f"{config['cluster']}", fix=fix)
    return config


def replicas(strategy: tf.distribute.Strategy | None) -> int:
    """Replicas that each step's batch is split across (1 without a strategy)."""
    return 1 if strategy is None else int(strategy.num_replicas_in_sync)


def is_chief(strategy: tf.distribute.Strategy | None) -> bool:
    """Whether this process writes the shared training files: always, except for the
    workers of a multi-worker strategy other than the chief (``chief``, or worker 0 in a
    cluster without one)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True
    spec = resolver.cluster_spec().as_dict()
    if "chief" in spec:
        return resolver.task_type == "chief"
    return resolver.task_type == "worker" and int(resolver.task_id) == 0


def worker_name(strategy: tf.distribute.Strategy | None) -> str:
    """``worker-1`` and the like: where a non-chief worker keeps its own training files."""
    resolver = strategy.cluster_resolver
    return f"{resolver.task_type}-{resolver.task_id}"
