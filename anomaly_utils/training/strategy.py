"""Distribution strategies for training: one device, all local devices, or several machines.

:func:`make_strategy` names how training is distributed. On TensorFlow (Keras' default
backend) it is a ``tf.distribute`` strategy, on JAX a ``keras.distribution.DataParallel``;
on PyTorch only ``"default"`` exists (``None``, one device):

- ``"default"``: one device, what training always did (TensorFlow's default strategy; ``None``
  on JAX and PyTorch);
- ``"mirrored"``: one replica per device of ``devices`` (default: every local GPU; on a
  machine without one, the CPU), gradients all-reduced every step. TensorFlow:
  ``MirroredStrategy``; JAX: ``DataParallel`` over the local devices (``devices`` names
  such as ``"/gpu:1"`` map to JAX's ``"gpu:1"``);
- ``"multiworker"``: several machines, each running the same program. TensorFlow:
  ``MultiWorkerMirroredStrategy`` across the machines that ``TF_CONFIG`` describes (every
  worker with its own ``task``). JAX: ``keras.distribution.initialize()`` (which starts
  ``jax.distributed``) from ``KERAS_DISTRIBUTION_JOB_ADDRESSES`` (the coordinator's
  ``host:port`` first, or all processes' addresses comma-separated),
  ``KERAS_DISTRIBUTION_NUM_PROCESSES`` and ``KERAS_DISTRIBUTION_PROCESS_ID`` (0 on the
  coordinator), then ``DataParallel`` over the devices of every process. On both, create
  it before any other TensorFlow or JAX work of the process.

:func:`anomaly_utils.training.fit.fit_autoencoder` takes the strategy as ``strategy=``. The
batch size stays the global one: each step's batch is split across the replicas, so a run
on N replicas takes the same steps on the same data as on one device. A model that was
built outside the strategy (``strategy.scope()``, the same call on both backends) is rebuilt
inside it by ``fit_autoencoder`` (same builder, same weights), so callers may build as
usual. On JAX the distribution is never set globally: only ``fit_autoencoder`` trains under
it, and what comes after (a head, scoring) runs on one device, as on TensorFlow. JAX shards
every batch evenly, so each batch (the last one too) must divide by the number of devices.

The JAX multi-process path is untested here (one machine): with it, every process reads the
same batches, each process's batch becomes its share of the global one (the global batch is
the processes' batches side by side, so the gradient equals that of one batch), process 0
writes ``model_dir`` and every other process its own folder beside it.

Example:
    >>> strategy = make_strategy("default")
    >>> replicas(strategy)
    1
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from anomaly_utils.errors import ParameterError

# The names, importable without TensorFlow (pipeline.parameters checks them before a run).
STRATEGIES = ("default", "mirrored", "multiworker")
# The Keras backends that distribute; on the others only "default" (one device).
DISTRIBUTING_BACKENDS = ("tensorflow", "jax")
# What keras.distribution.initialize() reads on JAX (``"multiworker"``).
JAX_CLUSTER_VARIABLES = ("KERAS_DISTRIBUTION_JOB_ADDRESSES", "KERAS_DISTRIBUTION_NUM_PROCESSES",
                         "KERAS_DISTRIBUTION_PROCESS_ID")
_MULTIWORKER: dict[str, Any] = {}


def make_strategy(name: str = "default", devices: Sequence[str] | None = None) -> Any:
    """The distribution called ``name`` (one of :data:`STRATEGIES`) on Keras' backend.

    Args:
        name: ``"default"``, ``"mirrored"`` or ``"multiworker"``.
        devices: for ``"mirrored"`` only, device names such as ``["/gpu:0", "/gpu:1"]``
            (``None``: every local GPU, or the CPU where there is none).

    Returns:
        TensorFlow: the ``tf.distribute`` strategy. JAX: ``None`` for ``"default"``, else a
        ``keras.distribution.DataParallel`` (not set globally: pass it to
        ``fit_autoencoder``). PyTorch: ``None`` (``"default"`` only). ``"multiworker"`` is
        made once per process (neither TensorFlow nor JAX allows a second one) and returned
        again on later calls.

    Raises:
        ParameterError: an unknown name, ``devices`` with another strategy than
            ``"mirrored"``, an unknown device, ``"multiworker"`` without its cluster
            description (``TF_CONFIG`` on TensorFlow, :data:`JAX_CLUSTER_VARIABLES` on JAX),
            or ``"mirrored"``/``"multiworker"`` on PyTorch.
    """
    if name not in STRATEGIES:
        raise ParameterError(f"unknown distribution strategy {name!r}",
                             fix=f"use one of {STRATEGIES}")
    if devices is not None and name != "mirrored":
        raise ParameterError(f"devices={list(devices)!r} is only for the mirrored strategy, "
                             f"not {name!r}", fix="drop devices, or use strategy 'mirrored'")
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        return _jax_distribution(name, devices)
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
    """Refuse a distribution (any strategy but ``"default"``) on a Keras backend that does
    not distribute (PyTorch: the lab trains on one device there).

    Raises:
        ParameterError: naming the strategy, the backend and the two ways out.
    """
    if name != "default" and backend not in DISTRIBUTING_BACKENDS:
        raise ParameterError(
            f"strategy {name!r} distributes training on TensorFlow or JAX, but Keras runs on "
            f"{backend!r}, where the lab trains on one device",
            fix=f"use -p ae1.strategy default -p ae2.strategy default (the defaults) on "
                f"{backend}, or run with --backend tensorflow (or --backend jax) to train "
                f"with strategy {name!r}")


def check_strategy(strategy: Any, backend: str) -> None:
    """Refuse a strategy object of another backend than Keras' (a ``tf.distribute`` strategy
    on JAX, a ``keras.distribution`` on TensorFlow, anything on PyTorch).

    Raises:
        ParameterError: naming the strategy's type, the backend and :func:`make_strategy`.
    """
    fits = {"tensorflow": _is_tf_strategy, "jax": _is_keras_distribution}.get(backend)
    if fits is not None and fits(strategy):
        return
    kind = type(strategy).__name__
    check_backend(kind, backend)  # PyTorch: the backend's own message
    raise ParameterError(f"strategy {kind!r} is not a distribution of Keras' {backend!r} "
                         "backend", fix=f"make it with make_strategy(name) under {backend}, "
                                        "which gives the backend's own")


def _is_tf_strategy(strategy: Any) -> bool:
    import sys

    tf = sys.modules.get("tensorflow")
    return tf is not None and isinstance(strategy, tf.distribute.Strategy)


def _is_keras_distribution(strategy: Any) -> bool:
    import keras

    return isinstance(strategy, keras.distribution.DataParallel)


def _jax_distribution(name: str, devices: Sequence[str] | None) -> Any:
    """``None`` (one device) or a ``keras.distribution.DataParallel``."""
    import keras

    if name == "default":
        return None
    if name == "mirrored":
        import jax

        names = _check_jax_devices(devices) if devices is not None else \
            [f"{d.platform}:{d.id}" for d in jax.local_devices()]
        return keras.distribution.DataParallel(devices=names)
    if name not in _MULTIWORKER:
        missing = [v for v in JAX_CLUSTER_VARIABLES if not os.environ.get(v)]
        if missing:
            raise ParameterError(
                f"the multiworker strategy on JAX reads its cluster from "
                f"{', '.join(JAX_CLUSTER_VARIABLES)}; {', '.join(missing)} not set",
                fix="set on every process KERAS_DISTRIBUTION_JOB_ADDRESSES=host0:port "
                    "(the coordinator, process 0), KERAS_DISTRIBUTION_NUM_PROCESSES=N and "
                    "KERAS_DISTRIBUTION_PROCESS_ID=0..N-1 (differs per process)")
        keras.distribution.initialize()
        _MULTIWORKER[name] = keras.distribution.DataParallel(
            devices=keras.distribution.list_devices())
    return _MULTIWORKER[name]


def _check_jax_devices(devices: Sequence[str]) -> list[str]:
    """``devices`` as JAX names (``"/gpu:0"``, ``"/device:GPU:0"`` -> ``"gpu:0"``)."""
    if isinstance(devices, str) or not devices or \
            not all(isinstance(d, str) and d for d in devices):
        raise ParameterError(f"devices must be a non-empty list of device names, got "
                             f"{devices!r}", fix="pass e.g. ['/gpu:0', '/gpu:1']")
    import jax

    known = set()
    for platform in ("cpu", "gpu", "tpu"):
        try:
            known.update(f"{d.platform}:{d.id}" for d in jax.local_devices(backend=platform))
        except RuntimeError:  # no such platform on this machine
            continue
    names = [d.lower().rsplit("device:", 1)[-1].lstrip("/") for d in devices]
    for device, short in zip(devices, names, strict=True):
        if short not in known:
            raise ParameterError(f"device {device!r} is not on this machine "
                                 f"(devices: {sorted(known)})",
                                 fix="pick from the list, or pass devices=None for every GPU")
    return names


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


# What fit_autoencoder asks of a strategy, answered for tf.distribute and keras.distribution.


def replicas(strategy: Any) -> int:
    """Replicas that each step's batch is split across (1 without a strategy; on JAX the
    devices of the distribution, on every process)."""
    if strategy is None:
        return 1
    if _is_keras_distribution(strategy):
        return int(strategy.device_mesh.devices.size)
    return int(strategy.num_replicas_in_sync)


def local_replicas(strategy: Any) -> int:
    """Replicas that this process's batches are split across: :func:`replicas` on one
    machine, its share of them on each process of a JAX multi-process run."""
    if strategy is not None and _is_keras_distribution(strategy):
        import jax

        return replicas(strategy) // jax.process_count()
    return replicas(strategy)


def is_multiworker(strategy: Any) -> bool:
    """Whether several processes train together (each with its own ``model_dir`` files)."""
    if strategy is None:
        return False
    if _is_keras_distribution(strategy):
        import jax

        return jax.process_count() > 1
    return getattr(strategy, "cluster_resolver", None) is not None


def is_chief(strategy: Any) -> bool:
    """Whether this process writes the shared training files: always, except for the
    workers of a multi-worker strategy other than the chief (``chief``, or worker 0 in a
    cluster without one; process 0 on JAX)."""
    if strategy is not None and _is_keras_distribution(strategy):
        import jax

        return jax.process_index() == 0
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True
    spec = resolver.cluster_spec().as_dict()
    if "chief" in spec:
        return resolver.task_type == "chief"
    return resolver.task_type == "worker" and int(resolver.task_id) == 0


def worker_name(strategy: Any) -> str:
    """``worker-1`` (TensorFlow), ``process-1`` (JAX) and the like: where a non-chief worker
    keeps its own training files."""
    if _is_keras_distribution(strategy):
        import jax

        return f"process-{jax.process_index()}"
    resolver = strategy.cluster_resolver
    return f"{resolver.task_type}-{resolver.task_id}"


def built_in(model: Any, strategy: Any) -> bool:
    """Whether ``model``'s variables were made under ``strategy`` (inside its ``scope()``),
    as training under it needs."""
    if _is_keras_distribution(strategy):
        mesh = set(strategy.device_mesh.backend_mesh.devices.flat)
        return all(set(v.value.sharding.device_set) == mesh for v in model.variables)
    return model.distribute_strategy is strategy
