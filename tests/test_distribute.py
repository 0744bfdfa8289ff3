"""Distributed training. tf.distribute: MirroredStrategy on two logical CPUs matches one
device, a resumed mirrored fit matches an uninterrupted one, and two
MultiWorkerMirroredStrategy workers on 127.0.0.1 end with the same weights. JAX:
keras.distribution.DataParallel over two host CPU devices matches one device and resumes,
and batches that do not divide across the devices are refused. PyTorch: only "default".

Each scenario runs in a fresh Python process: logical devices (TensorFlow's, or XLA's
``--xla_force_host_platform_device_count``) and the multi-worker collectives must be
configured before the framework initialises its devices. The JAX multi-process path
(``keras.distribution.initialize``) is not tested: it needs a JAX coordinator and processes
that this one-machine suite does not start.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from anomaly_utils.errors import ParameterError
from anomaly_utils.pipeline.parameters import resolve_parameters, validate
from anomaly_utils.training.strategy import (
    check_backend,
    check_strategy,
    make_strategy,
    replicas,
)
from tests.conftest import jax_compilation_cache

ROOT = Path(__file__).resolve().parent.parent
# Mirrored vs one device: the same images, split 4 + 4 instead of 8, summed in another
# order; float32 rounding over six Adam steps stays far below this.
LOSS_RTOL = 1e-4


def _env(**extra: str) -> dict:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT),
            "PYTHONHASHSEED": "0", **extra}


def _python(code: str, timeout: int = 300, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=_env(**env),
                          capture_output=True, text=True, timeout=timeout)


MIRRORED = """
    import json, sys
    import numpy as np, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from anomaly_utils.models.ae1 import build_ae1
    from anomaly_utils.training.fit import fit_autoencoder
    from anomaly_utils.training.strategy import make_strategy

    out = {out!r}
    rng = np.random.default_rng(0)
    # Flat colours with a ramp: images an autoencoder learns quickly, so the curve moves.
    ramp = np.linspace(0, 0.5, 16, dtype=np.float32)[None, :, None, None]
    images = ((rng.random((24, 1, 1, 3)) * 0.5 + ramp) * 255).astype(np.uint8)
    images = np.broadcast_to(images, (24, 16, 16, 3)).copy()
    train, val = images[:16], images[16:]

    class Kill(Exception):
        pass

    class KillAfter(keras.callbacks.Callback):  # as if the process died after epoch 2
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise Kill()

    def fit(folder, strategy, **kw):
        model = build_ae1(16, latent_dim=8, encoder_filters=(8, 16), decoder_filters=(8,),
                          seed=0)  # built outside any scope
        return fit_autoencoder(model, train, val, f"{{out}}/{{folder}}", epochs=3,
                               learning_rate=2e-2, seed=0, batch_size=8, verbose=0,
                               strategy=strategy, **kw)

    mirrored = make_strategy("mirrored", ["/cpu:0", "/cpu:1"])
    single = fit("single", None)
    two = fit("mirrored", mirrored)
    try:  # a backup after every epoch, whatever the load on the machine makes it cost
        fit("resumed", mirrored, callbacks=[KillAfter()], backup_overhead=1.0)
    except Kill:
        pass
    backup = json.load(open(f"{{out}}/resumed/backup/training_metadata.json"))
    resumed = fit("resumed", mirrored)
    print(json.dumps({{"single": single["history"], "mirrored": two["history"],
                      "resumed": resumed["history"], "backup_epoch": backup["epoch"],
                      "resumed_initial_epoch": resumed["initial_epoch"],
                      "replicas": mirrored.num_replicas_in_sync,
                      "config": json.load(open(f"{{out}}/mirrored/config.json"))}}))
"""


@pytest.mark.slow
def test_mirrored_on_two_cpus_matches_one_device_and_resumes(tmp_path: Path):
    result = _python(MIRRORED.format(out=str(tmp_path)))
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(result.stdout.strip().splitlines()[-1])
    assert data["replicas"] == 2
    assert data["config"]["distribution"] == {"strategy": "MirroredStrategy", "replicas": 2}
    single, mirrored, resumed = data["single"], data["mirrored"], data["resumed"]
    for key in ("loss", "val_loss"):
        assert len(mirrored[key]) == 3
        np.testing.assert_allclose(mirrored[key], single[key], rtol=LOSS_RTOL)
        # The curve moves: a loss that did not change would pass the comparison trivially.
        assert abs(single[key][0] - single[key][-1]) > 10 * LOSS_RTOL * single[key][0]
    # Killed after epoch 2 (epoch 1 counted from 0), resumed from the backup at epoch 2.
    assert data["backup_epoch"] == 2 and data["resumed_initial_epoch"] == 2
    assert resumed["epoch"] == [0, 1, 2]
    np.testing.assert_allclose(resumed["loss"], mirrored["loss"], rtol=LOSS_RTOL)
    assert (tmp_path / "mirrored" / "model.keras").is_file()
    assert (tmp_path / "mirrored" / "history.csv").read_text().count("\n") == 4
    assert not (tmp_path / "mirrored" / "backup").exists()


MULTIWORKER = """
    import json, sys
    import numpy as np
    from anomaly_utils.training.strategy import make_strategy
    strategy = make_strategy("multiworker")  # before any other TensorFlow work
    from anomaly_utils.models.ae2 import build_ae2
    from anomaly_utils.training.datasets import patch_dataset
    from anomaly_utils.training.fit import fit_autoencoder

    images = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 1), dtype=np.uint8)
    train = patch_dataset(images, 16, 32, batch_size=8, seed=0)
    with strategy.scope():
        model = build_ae2(patch_size=16, channels=1, latent_dim=4, widths=[4] * 8, seed=0)
    fit = fit_autoencoder(model, train, None, {model_dir!r}, epochs=1, learning_rate=1e-3,
                          seed=0, verbose=0, strategy=strategy)
    np.savez({out!r} + f"/weights-{{sys.argv[1]}}.npz", *model.get_weights())
    print(json.dumps({{"loss": fit["history"]["loss"], "replicas": strategy.num_replicas_in_sync,
                      "model_path": fit["model_path"]}}))
"""


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.slow
def test_two_multiworker_processes_train_ae2_to_the_same_weights(tmp_path: Path):
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    code = MULTIWORKER.format(model_dir=str(tmp_path / "ae2"), out=str(tmp_path))
    processes = []
    for index in range(2):
        config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        processes.append(subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code), str(index)],
            env=_env(TF_CONFIG=json.dumps(config)), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True))
    outputs = []
    try:
        for process in processes:
            out, err = process.communicate(timeout=240)
            assert process.returncode == 0, err[:2500] + err[-1500:]
            outputs.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    assert [o["replicas"] for o in outputs] == [2, 2]
    assert outputs[0]["loss"] == pytest.approx(outputs[1]["loss"], rel=1e-6)
    chief = np.load(tmp_path / "weights-0.npz")
    other = np.load(tmp_path / "weights-1.npz")
    assert len(chief.files) == len(other.files) > 0
    for name in chief.files:
        np.testing.assert_allclose(chief[name], other[name], rtol=0, atol=1e-6)
    # The chief wrote the run's files, the other worker a folder of its own beside them.
    assert Path(outputs[0]["model_path"]) == tmp_path / "ae2" / "model.keras"
    assert Path(outputs[1]["model_path"]).parent == tmp_path / "ae2" / ".workers" / "worker-1"
    assert (tmp_path / "ae2" / "history.csv").is_file()


def test_make_strategy_refuses_bad_names_devices_and_a_missing_tf_config(monkeypatch):
    assert replicas(make_strategy("default")) == 1 and replicas(None) == 1
    with pytest.raises(ParameterError, match="unknown distribution strategy") as info:
        make_strategy("mirror")
    assert "mirrored" in info.value.fix
    with pytest.raises(ParameterError, match="only for the mirrored"):
        make_strategy("default", ["/gpu:0"])
    with pytest.raises(ParameterError, match="not on this machine"):
        make_strategy("mirrored", ["/gpu:7"])
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ParameterError, match="TF_CONFIG") as info:
        make_strategy("multiworker")
    assert "cluster" in info.value.fix
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1"]},
                                                "task": {"type": "worker", "index": 3}}))
    with pytest.raises(ParameterError, match="not in its cluster"):
        make_strategy("multiworker")


def _validated(overrides: dict) -> dict:
    effective = resolve_parameters(overrides)
    for notebook, params in effective.items():
        validate(notebook, params)
    return effective


def test_strategy_is_scoped_per_notebook_and_an_unscoped_one_names_the_scoped_form():
    effective = _validated({"ae1.strategy": "mirrored", "ae1.devices": "['/gpu:0', '/gpu:1']",
                            "04.strategy": "f1_optimal"})
    assert effective["02_train_ae1"]["strategy"] == "mirrored"
    assert effective["02_train_ae1"]["devices"] == ["/gpu:0", "/gpu:1"]
    assert effective["04_threshold_selection"]["strategy"] == "f1_optimal"
    # "strategy" alone reaches the training notebooks and notebook 04 alike.
    with pytest.raises(ParameterError, match=r"threshold strategy.*-p ae1\.strategy mirrored"):
        _validated({"strategy": "mirrored"})
    with pytest.raises(ParameterError, match=r"training distribution.*-p 04\.strategy f1_opt"):
        _validated({"strategy": "f1_optimal"})
    with pytest.raises(ParameterError, match="device names"):
        _validated({"ae1.devices": "[]"})


# DataParallel vs one device on JAX: the same 8 patches per step, each device's 4 reduced on
# its own and the two halves summed (the loss and the gradients), another order of float32
# sums than one device's. Measured: at most 4.5e-7 relative over three epochs (AE-2 below);
# the bound leaves room for other CPUs' kernels, and is still far below the curve's steps.
JAX_LOSS_RTOL = 1e-5

JAX_DATA_PARALLEL = """
    import json, os
    import numpy as np, keras
    from anomaly_utils.errors import ParameterError
    from anomaly_utils.models.ae1 import build_ae1
    from anomaly_utils.models.ae2 import build_ae2
    from anomaly_utils.training.datasets import patch_dataset, val_patch_dataset
    from anomaly_utils.training.fit import fit_autoencoder
    from anomaly_utils.training.strategy import make_strategy, replicas

    out = {out!r}
    refused = {{}}

    def refusal(key, call):
        try:
            call()
        except ParameterError as exc:
            refused[key] = [str(exc), exc.fix]

    # Flat grey levels with a ramp: patches AE-2 learns quickly, so the curve moves.
    ramp = np.linspace(0, 0.5, 32, dtype=np.float32)[None, :, None, None]
    images = ((np.random.default_rng(0).random((6, 1, 1, 1)) * 0.5 + ramp) * 255)
    images = np.broadcast_to(images.astype(np.uint8), (6, 32, 32, 1)).copy()

    class Kill(Exception):
        pass

    class KillAfter(keras.callbacks.Callback):  # as if the process died after epoch 2
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise Kill()

    def ae2():  # built outside any distribution: fit_autoencoder rebuilds it inside
        return build_ae2(16, channels=1, latent_dim=4, widths=[4] * 8, seed=0)

    def fit(folder, strategy, **kw):
        train = patch_dataset(images[:4], 16, 32, batch_size=8, seed=0, augment=False)
        val = val_patch_dataset(images[4:], 16, 4, batch_size=8)
        return fit_autoencoder(ae2(), train, val, f"{{out}}/{{folder}}", epochs=3,
                               learning_rate=2e-2, seed=0, verbose=0, strategy=strategy, **kw)

    mirrored = make_strategy("mirrored")  # every local device: the two forced host CPUs
    refusal("device", lambda: make_strategy("mirrored", ["/gpu:7"]))
    refusal("multiworker", lambda: make_strategy("multiworker"))
    refusal("batch_size", lambda: fit_autoencoder(
        ae2(), images[:4], None, f"{{out}}/odd", epochs=1, learning_rate=1e-3, seed=0,
        batch_size=3, strategy=mirrored))
    refusal("last_batch", lambda: fit_autoencoder(
        ae2(), patch_dataset(images, 16, 13, batch_size=4), None, f"{{out}}/last", epochs=1,
        learning_rate=1e-3, seed=0, strategy=mirrored))
    refusal("vae", lambda: fit_autoencoder(
        build_ae1(16, latent_dim=4, variant="vae", encoder_filters=(4, 8),
                  decoder_filters=(4,), seed=0), images[:4], None, f"{{out}}/vae", epochs=1,
        learning_rate=1e-3, seed=0, strategy=mirrored))
    single = fit("single", make_strategy("default"))
    two = fit("mirrored", mirrored)
    try:  # a backup after every epoch, whatever the load on the machine makes it cost
        fit("resumed", mirrored, callbacks=[KillAfter()], backup_overhead=1.0)
    except Kill:
        pass
    backup = json.load(open(f"{{out}}/resumed/backup/training_metadata.json"))
    resumed = fit("resumed", mirrored)
    best = two["model"]  # model.keras written under DataParallel, loaded back on one device
    patches = patch_dataset(images, 16, 5, batch_size=5, seed=1)[0][0]
    reloaded = keras.saving.load_model(two["model_path"], compile=False)
    print(json.dumps({{
        "single": single["history"], "mirrored": two["history"],
        "resumed": resumed["history"], "backup_epoch": backup["epoch"],
        "resumed_initial_epoch": resumed["initial_epoch"], "replicas": replicas(mirrored),
        "one_device": len(best.weights[0].value.sharding.device_set) == 1,
        "reload_equal": bool(np.allclose(best.predict(patches, verbose=0),
                                         reloaded.predict(patches, verbose=0))),
        "one_cpu": replicas(make_strategy("mirrored", ["/cpu:1"])),
        "refused": refused, "left": [f for f in ("odd", "last", "vae")
                                     if os.path.exists(f"{{out}}/{{f}}")],
        "config": json.load(open(f"{{out}}/mirrored/config.json"))}}))
"""


@pytest.mark.slow
def test_jax_data_parallel_on_two_cpus_matches_one_device_and_resumes(tmp_path: Path):
    if importlib.util.find_spec("jax") is None:
        pytest.skip("jax is not installed (requirements.txt pins it: reinstall the venv)")
    result = _python(JAX_DATA_PARALLEL.format(out=str(tmp_path)), KERAS_BACKEND="jax",
                     JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2",
                     **jax_compilation_cache())
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(result.stdout.strip().splitlines()[-1])
    assert data["replicas"] == 2 and data["one_cpu"] == 1
    assert data["config"]["distribution"] == {"strategy": "DataParallel", "replicas": 2}
    single, mirrored, resumed = data["single"], data["mirrored"], data["resumed"]
    for key in ("loss", "val_loss"):
        assert len(mirrored[key]) == 3
        np.testing.assert_allclose(mirrored[key], single[key], rtol=JAX_LOSS_RTOL)
        # The curve moves: a loss that did not change would pass the comparison trivially.
        assert abs(single[key][0] - single[key][-1]) > 100 * JAX_LOSS_RTOL * single[key][0]
    # Killed after epoch 2 (epoch 1 counted from 0), resumed from the backup at epoch 2.
    assert data["backup_epoch"] == 2 and data["resumed_initial_epoch"] == 2
    assert resumed["epoch"] == [0, 1, 2]
    np.testing.assert_allclose(resumed["loss"], mirrored["loss"], rtol=JAX_LOSS_RTOL)
    # The checkpoint, written from replicated weights, reloads on one device and predicts
    # a batch that two devices could not split (5 patches).
    assert data["one_device"] and data["reload_equal"]
    assert (tmp_path / "mirrored" / "model.keras").is_file()
    assert not (tmp_path / "mirrored" / "backup").exists()
    refused = data["refused"]
    assert "not on this machine" in refused["device"][0]
    assert "KERAS_DISTRIBUTION_JOB_ADDRESSES" in refused["multiworker"][0]
    assert "batch_size 3" in refused["batch_size"][0] and "multiple of 2" in refused["batch_size"][1]
    assert "1 samples" in refused["last_batch"][0] and "patches_per_epoch" in refused["last_batch"][1]
    assert "2 replicas" in refused["vae"][0]
    assert data["left"] == []  # refused before the model folder was made


def test_torch_refuses_every_strategy_but_default():
    check_backend("default", "torch")
    check_backend("mirrored", "jax")
    for name in ("mirrored", "multiworker"):
        with pytest.raises(ParameterError, match=f"strategy '{name}'.*'torch'") as info:
            check_backend(name, "torch")
        assert "strategy default" in info.value.fix and "--backend jax" in info.value.fix
    with pytest.raises(ParameterError, match="'torch'"):
        check_strategy(object(), "torch")
    with pytest.raises(ParameterError, match=r"'object' is not a distribution of Keras' 'jax'"):
        check_strategy(object(), "jax")
