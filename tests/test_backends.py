"""The lab on another Keras backend: SSIM map, GMS loss and the AE-2 loss computed on JAX equal
TensorFlow's, the SSIM map matches scikit-image on both, and the compute modules load no
TensorFlow under JAX; training on JAX (the VAE resumed, the joint head, the refused
strategies); the tiny notebook chain run on JAX; the run's ``--backend`` and its record.

One JAX subprocess (CPU, one thread) does the compute work on inputs saved to an .npz and
writes its results to another; this process computes the same on TensorFlow. The SSIM
fixtures are those of tests/test_scoring.py, whose skimage comparison this extends to JAX.
A second JAX subprocess trains; a third is the command line running the chain.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import numpy as np
import papermill
import pytest
import tensorflow as tf
from scipy import ndimage

from anomaly_utils.artifacts import read_json, write_json
from anomaly_utils.errors import ParameterError
from anomaly_utils.models.losses import gms_loss, make_ae2_loss
from anomaly_utils.models.similarity import ssim_map
from anomaly_utils.pipeline import provenance
from anomaly_utils.pipeline.parameters import NOTEBOOKS
from anomaly_utils.pipeline.runs import create_run, run_pipeline
from anomaly_utils.scoring.stored import CANDIDATES
from tests.conftest import TINY
from tests.test_scoring import TOL, noisy_copy, skimage_ssim_map, structured_pair

ROOT = Path(__file__).resolve().parent.parent
# JAX against TensorFlow, absolute, per pixel or per value, where the images have texture:
# both compute in float32 with kernels that sum in different orders (measured: <= 2e-6 on
# the SSIM maps, <= 6e-7 on the losses). On flat areas far from the plane mean the variance
# is a float32 cancellation on either backend, so there each is held to skimage within TOL
# (measured: JAX <= 6e-5, TensorFlow <= 9.1e-5; 9.4e-5 apart).
JAX_TOL = 1e-5
FLAT = ("structured", "half", "square")
# Loss gradients, relative to the largest gradient value (measured: <= 1e-6).
GRAD_RTOL = 1e-4
# The AE-2 blends the test compares: the default (SSIM only) and all three terms.
BLENDS = {"default": (1.0, 0.0, 0.0), "blend": (0.6, 0.2, 0.2)}
COMPUTE_MODULES = ("anomaly_utils.models.similarity", "anomaly_utils.models.losses",
                   "anomaly_utils.models.precision", "anomaly_utils.seeding")
# A JAX process on one CPU thread.
JAX_ENV = {"KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
           "OMP_NUM_THREADS": "1", "TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1",
           "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}

JAX_SCRIPT = textwrap.dedent("""
    import json, os, sys
    for name in MODULES:
        __import__(name)
    report = {"tensorflow_after_import": "tensorflow" in sys.modules}

    import jax
    import keras
    import numpy as np
    from anomaly_utils.models.losses import gms_loss, make_ae2_loss
    from anomaly_utils.models.precision import use_mixed_precision_on_gpu
    from anomaly_utils.models.similarity import _blur_matrix, _matmul, ssim_map
    from anomaly_utils.seeding import _deterministic_ops

    report["backend"] = keras.backend.backend()
    report["policy"] = use_mixed_precision_on_gpu()
    _deterministic_ops("jax")
    report["xla_flags"] = os.environ["XLA_FLAGS"]

    inputs = np.load(sys.argv[1])
    out = {}
    for key in inputs.files:
        if key.startswith("x_"):
            name = key[2:]
            out["ssim_" + name] = ssim_map(inputs[key], inputs["y_" + name])  # numpy path
    x, y = inputs["x_loss"], inputs["y_loss"]
    traced = jax.jit(ssim_map)(x, y)  # the tensor path, as a loss under jit sees it
    out["ssim_traced"] = np.asarray(traced)
    out["gms"] = np.asarray(gms_loss(jax.numpy.asarray(x), jax.numpy.asarray(y)))
    for name, weights in BLENDS.items():
        loss = make_ae2_loss(*weights)
        value, grad = jax.value_and_grad(lambda p: loss(x, p))(jax.numpy.asarray(y))
        out["ae2_" + name], out["grad_" + name] = np.asarray(value), np.asarray(grad)
    plane = np.random.default_rng(0).random((64, 64), dtype=np.float32)
    m = _blur_matrix(64, 1.5, 5)
    out["guard_gap"] = np.abs(np.asarray(_matmul(m, plane, True))
                              - np.asarray(_matmul(m, plane, False))).max()
    np.savez(sys.argv[2], **out)
    print(json.dumps(report))
""")


def _inputs() -> dict[str, np.ndarray]:
    """test_scoring's SSIM fixtures, with its seeds, and a loss pair: a smooth texture and a
    blurred, noisy copy, without flat areas (where the GMS gradient, g / |g| at g ~ 0, is
    rounding noise on any backend)."""
    pairs = {}
    for shape in [(3, 37, 50, 3), (2, 64, 64, 1), (1, 11, 16, 3)]:
        rng = np.random.default_rng(sum(shape))
        pairs["random_" + "x".join(map(str, shape))] = (rng.random(shape, dtype=np.float32),
                                                         rng.random(shape, dtype=np.float32))
    pairs["structured"] = structured_pair((1, 128, 128, 3), np.random.default_rng(7))
    rng = np.random.default_rng(3)
    half = np.zeros((2, 40, 48, 3), dtype=np.float32)
    half[:, :, 24:] = 1.0
    square = np.zeros((2, 40, 48, 1), dtype=np.float32)
    square[:, 10:25, 12:30] = 1.0
    pairs["half"] = (half, noisy_copy(half, rng, noise=0.001))
    pairs["square"] = (square, 0.999 * square)
    rng = np.random.default_rng(0)
    texture = ndimage.gaussian_filter(rng.random((2, 32, 32, 3)), sigma=(0, 2, 2, 0))
    texture = ((texture - texture.min()) / np.ptp(texture)).astype(np.float32)
    pairs["loss"] = (texture, noisy_copy(ndimage.gaussian_filter(texture, (0, 1, 1, 0)), rng,
                                         noise=0.05))
    return {f"{side}_{name}": pair[i] for name, pair in pairs.items()
            for i, side in enumerate("xy")}


@pytest.fixture(scope="module")
def jax_run(tmp_path_factory) -> tuple[dict, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(report, inputs, outputs) of the JAX subprocess."""
    if importlib.util.find_spec("jax") is None:
        pytest.skip("jax is not installed (requirements.txt pins it: reinstall the venv)")
    folder = tmp_path_factory.mktemp("jax")
    inputs = _inputs()
    np.savez(folder / "inputs.npz", **inputs)
    script = (f"MODULES = {COMPUTE_MODULES!r}\nBLENDS = {BLENDS!r}\n" + JAX_SCRIPT)
    env = {**os.environ, **JAX_ENV}
    result = subprocess.run([sys.executable, "-c", script, str(folder / "inputs.npz"),
                             str(folder / "outputs.npz")], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    return report, inputs, dict(np.load(folder / "outputs.npz"))


def test_compute_modules_load_no_tensorflow_under_jax(jax_run):
    report, _, outputs = jax_run
    assert report["backend"] == "jax"
    assert not report["tensorflow_after_import"], f"importing {COMPUTE_MODULES} loaded TensorFlow"
    assert report["policy"] == "float32"  # no GPU in the subprocess
    assert "--xla_gpu_deterministic_ops=true" in report["xla_flags"]
    assert outputs["guard_gap"] < 1e-6  # on a CPU the guard's highest precision is float32


def test_ssim_map_matches_skimage_and_tensorflow_under_jax(jax_run):
    _, inputs, outputs = jax_run
    names = [key[2:] for key in inputs if key.startswith("x_")]
    for name in names:
        x, y = inputs[f"x_{name}"], inputs[f"y_{name}"]
        on_jax, on_tf = outputs[f"ssim_{name}"], ssim_map(x, y)
        assert on_jax.dtype == np.float32 and on_jax.shape == x.shape[:3]
        reference = skimage_ssim_map(x, y)
        np.testing.assert_allclose(on_jax, reference, rtol=0, atol=TOL, err_msg=name)
        np.testing.assert_allclose(on_tf, reference, rtol=0, atol=TOL, err_msg=name)
        if name not in FLAT:
            np.testing.assert_allclose(on_jax, on_tf, rtol=0, atol=JAX_TOL, err_msg=name)
    np.testing.assert_allclose(outputs["ssim_traced"], outputs["ssim_loss"], rtol=0, atol=1e-6)


def test_gms_and_ae2_losses_and_gradients_under_jax_equal_tensorflow(jax_run):
    _, inputs, outputs = jax_run
    x, y = tf.constant(inputs["x_loss"]), tf.constant(inputs["y_loss"])
    np.testing.assert_allclose(outputs["gms"], gms_loss(x, y).numpy(), rtol=0, atol=JAX_TOL)
    for name, weights in BLENDS.items():
        y_var = tf.Variable(y)
        with tf.GradientTape() as tape:
            value = make_ae2_loss(*weights)(x, y_var)
        grad = tape.gradient(value, y_var).numpy()
        np.testing.assert_allclose(outputs[f"ae2_{name}"], value.numpy(), rtol=0, atol=JAX_TOL)
        gap = np.abs(outputs[f"grad_{name}"] - grad).max()
        assert gap <= GRAD_RTOL * np.abs(grad).max(), (name, gap, np.abs(grad).max())


@pytest.mark.parametrize(("capability", "policy"), [
    (None, "float32"), ((7, 5), "mixed_float16"), ((0, 0), "mixed_float16"),
    ((8, 0), "mixed_bfloat16"), ((9, 0), "mixed_bfloat16")])
def test_mixed_precision_policy_follows_the_gpu(monkeypatch, capability, policy):
    import keras

    from anomaly_utils.models import precision

    monkeypatch.setattr(precision, "gpu_compute_capability", lambda: capability)
    try:
        assert precision.use_mixed_precision_on_gpu() == policy
        assert keras.mixed_precision.global_policy().name == policy
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert precision._parse_capability("8.6") == (8, 6)
    assert precision._parse_capability((7, 5)) == (7, 5)
    assert precision._parse_capability("rocm") is None


# --------------------------------------------------------------------------- training on JAX

TRAINING_SCRIPT = textwrap.dedent("""
    import json, sys, tempfile
    from pathlib import Path

    import keras
    import numpy as np
    import tensorflow as tf

    from anomaly_utils.errors import ParameterError
    from anomaly_utils.models.ae1 import build_ae1
    from anomaly_utils.models.ae2 import build_ae2
    from anomaly_utils.models.segmentation_head import build_segmentation_head
    from anomaly_utils.training.fit import fit_autoencoder
    from anomaly_utils.training.head import fit_segmentation_head
    from anomaly_utils.training.strategy import make_strategy

    root = Path(sys.argv[1])
    report = {"backend": keras.backend.backend(), "default": repr(make_strategy("default"))}
    for name in ("mirrored", "multiworker"):
        try:
            make_strategy(name)
        except ParameterError as exc:
            report[name] = str(exc)
    x = np.random.default_rng(0).integers(0, 256, (12, 16, 16, 3), dtype=np.uint8)

    def vae():
        return build_ae1(16, latent_dim=8, variant="vae", encoder_filters=(8, 16, 32),
                         decoder_filters=(16, 8), seed=3)

    try:
        fit_autoencoder(vae(), x, x, root / "m", epochs=1, learning_rate=1e-3, seed=0,
                        strategy=tf.distribute.MirroredStrategy(["/cpu:0"]))
    except ParameterError as exc:
        report["fit_mirrored"] = str(exc)

    class Kill(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt

    def fit_vae(folder, callbacks=()):
        return fit_autoencoder(vae(), x[:8], x[8:], root / folder, epochs=4,
                               learning_rate=1e-3, seed=7, batch_size=4, verbose=0,
                               backup_overhead=1.0, callbacks=callbacks)

    report["vae"] = fit_vae("vae")["history"]
    try:
        fit_vae("killed", [Kill()])
    except KeyboardInterrupt:
        report["backup"] = (root / "killed" / "backup").is_dir()
    resumed = fit_vae("killed")
    report["resumed"], report["initial_epoch"] = resumed["history"], resumed["initial_epoch"]
    report["config_backend"] = json.loads((root / "vae" / "config.json").read_text())["backend"]
    images = (x[8:] / 255).astype("float32")
    model = resumed["model"]
    a, b = (model.sample_reconstructions(images, 2, seed=s) for s in (1, 1))
    c = model.sample_reconstructions(images, 2, seed=2)
    report["samples"] = {"shape": list(a.shape), "same_seed": bool(np.array_equal(a, b)),
                         "other_seed": bool(np.array_equal(a, c)),
                         "finite": bool(np.isfinite(a).all())}
    head = fit_segmentation_head(
        build_ae2(32, 3, 4, widths=[4] * 8, bottleneck="spatial"),
        build_segmentation_head(3, (4, 8)), np.repeat(np.repeat(x, 2, 1), 2, 2),
        root / "head", patch_size=32, epochs=1, patches_per_epoch=16, batch_size=8,
        learning_rate=1e-3, seed=0, training="joint")
    report["joint"] = {k: v for k, v in head["history"].items() if k.endswith("loss")}
    print(json.dumps(report))
""")


@pytest.fixture(scope="module")
def jax_training(tmp_path_factory) -> dict:
    """What the training subprocess on JAX reports."""
    if importlib.util.find_spec("jax") is None:
        pytest.skip("jax is not installed (requirements.txt pins it: reinstall the venv)")
    folder = tmp_path_factory.mktemp("jax_training")
    result = subprocess.run([sys.executable, "-c", TRAINING_SCRIPT, str(folder)], cwd=ROOT,
                            env={**os.environ, **JAX_ENV}, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_tf_distribute_strategies_are_refused_on_jax_and_default_is_one_device(jax_training):
    assert jax_training["backend"] == "jax" and jax_training["default"] == "None"
    for name in ("mirrored", "multiworker"):
        message = jax_training[name]
        assert f"strategy '{name}'" in message and "'jax'" in message
        assert "-p ae1.strategy default" in message and "--backend tensorflow" in message
    assert "strategy 'MirroredStrategy'" in jax_training["fit_mirrored"]


@pytest.mark.slow
def test_the_vae_trains_resumes_and_samples_on_jax(jax_training):
    vae, resumed = jax_training["vae"], jax_training["resumed"]
    assert jax_training["config_backend"] == "jax"
    assert jax_training["backup"] and jax_training["initial_epoch"] == 2
    # The noise of each step is keyed on (seed, step): the resumed run draws what the
    # uninterrupted one drew, so the losses agree to the bit.
    for key in ("loss", "val_loss", "kl_loss"):
        assert resumed[key] == vae[key], key
    assert all(np.isfinite(vae["loss"])) and vae["loss"][-1] < vae["loss"][0]
    assert jax_training["samples"] == {"shape": [2, 4, 16, 16, 3], "same_seed": True,
                                       "other_seed": False, "finite": True}


@pytest.mark.slow
def test_the_joint_head_trains_on_jax(jax_training):
    joint = jax_training["joint"]
    assert {"loss", "mask_loss", "reconstruction_loss"} <= set(joint)
    assert all(np.isfinite(v).all() for v in joint.values())


# --------------------------------------------------------------------------- the chain on JAX

# Every model trains one epoch: enough to run every cell of every notebook.
JAX_CHAIN = {**TINY, "epochs": "1", "ae2.epochs": "1", "head_epochs": "1"}


@pytest.mark.chain
def test_the_tiny_chain_runs_under_keras_backend_jax(tiny_data, tmp_path):
    """``python -m anomaly_utils run`` with ``KERAS_BACKEND=jax`` (TensorFlow installed, its
    tf.data pipelines feeding JAX): every notebook completes, every candidate is scored."""
    if importlib.util.find_spec("jax") is None:
        pytest.skip("jax is not installed (requirements.txt pins it: reinstall the venv)")
    pairs = [a for name, value in JAX_CHAIN.items() for a in ("-p", name, value)]
    result = subprocess.run(
        [sys.executable, "-m", "anomaly_utils", "run", "--data-dir", str(tiny_data),
         "--runs-dir", str(tmp_path), "--run-id", "jax", "--quiet", *pairs],
        cwd=ROOT, env={**os.environ, **JAX_ENV}, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    run = tmp_path / "jax"
    status = read_json(run / "status.json")
    assert {nb: status[nb]["state"] for nb in status} == dict.fromkeys(NOTEBOOKS, "completed")
    metrics = read_json(run / "metrics.json")
    assert CANDIDATES == ("floor", "ae1", "ae2")
    for candidate in CANDIDATES:
        assert 0.0 <= metrics[candidate]["image_auroc"] <= 1.0, candidate
    backend = read_json(run / "env.json")["backend"]
    assert backend["name"] == "jax" and backend["set_by"] == "KERAS_BACKEND"
    assert backend["version"] == backend["packages"]["jax"] == metadata.version("jax")
    for model in ("ae1", "ae2", "ae2/head"):  # the kernels trained on JAX
        assert read_json(run / model / "config.json")["backend"] == "jax", model


# --------------------------------------------------------------------------- --backend


@pytest.fixture
def small_data(tmp_path):
    from tests.test_data import make_dataset

    return make_dataset(tmp_path / "data")


def _clean_backend_environment(monkeypatch, tmp_path, keras_json=None):
    """No KERAS_BACKEND, and a Keras home holding ``keras_json`` (or nothing)."""
    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    home = tmp_path / "keras_home"
    home.mkdir()
    if keras_json is not None:
        (home / "keras.json").write_text(json.dumps(keras_json))
    monkeypatch.setenv("KERAS_HOME", str(home))


@pytest.mark.parametrize(("requested", "environment", "keras_json", "expected"), [
    ("jax", "tensorflow", {"backend": "tensorflow"}, ("jax", "--backend")),
    (None, "jax", {"backend": "tensorflow"}, ("jax", "KERAS_BACKEND")),
    (None, None, {"backend": "jax"}, ("jax", "keras.json")),
    (None, "", {"floatx": "float32"}, ("tensorflow", "default")),
    (None, None, None, ("tensorflow", "default")),
])
def test_the_backend_is_found_as_keras_finds_it(monkeypatch, tmp_path, requested, environment,
                                                keras_json, expected):
    _clean_backend_environment(monkeypatch, tmp_path, keras_json)
    if environment is not None:
        monkeypatch.setenv("KERAS_BACKEND", environment)
    record = provenance.keras_backend(requested)
    assert (record["name"], record["set_by"]) == expected
    assert record["packages"]["keras"] == metadata.version("keras")
    assert set(record["packages"]) == set(provenance.BACKEND_PACKAGES)


def test_unknown_and_missing_backends_are_refused(monkeypatch, tmp_path):
    _clean_backend_environment(monkeypatch, tmp_path, {"backend": "numpy"})
    with pytest.raises(ParameterError, match=r"'numpy' \(from keras.json\).*--backend"):
        provenance.keras_backend()
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ParameterError, match=r"'torch' \(from --backend\) needs the package"):
        provenance.keras_backend("torch")


def test_a_run_records_its_backend_and_refuses_tf_distribute_on_another(small_data, tmp_path):
    create_run({"data_dir": str(small_data)}, tmp_path / "run", backend="jax")
    env = read_json(tmp_path / "run" / "env.json")
    assert env["backend"]["name"] == "jax" and env["backend"]["set_by"] == "--backend"
    assert provenance.recorded_backend(tmp_path / "run") == "jax"
    with pytest.raises(ParameterError, match=r"strategy 'mirrored'.*'jax'.*--backend tensorflow"):
        create_run({"data_dir": str(small_data), "ae2.strategy": "mirrored"},
                   tmp_path / "mirrored", backend="jax")
    assert not (tmp_path / "mirrored").exists()  # refused before the folder was made
    create_run({"data_dir": str(small_data), "ae2.strategy": "mirrored"},
               tmp_path / "tensorflow", backend="tensorflow")


def test_a_resumed_run_keeps_its_backend(small_data, tmp_path, monkeypatch):
    create_run({"data_dir": str(small_data)}, tmp_path / "run", backend="jax")
    with pytest.raises(ParameterError, match=r"started on the Keras backend 'jax'.*"
                                             r"--backend tensorflow cannot apply"):
        run_pipeline({}, run_id="run", runs_dir=tmp_path, resume=True, backend="tensorflow")
    # The kernels of a resume run on the run's backend, whatever KERAS_BACKEND says.
    ran = []

    def fake_papermill(input_path, output_path, config=None, **kwargs):
        ran.append((Path(output_path).stem, config["LoggedKernelManager"].get("keras_backend")))

    monkeypatch.setattr(papermill, "execute_notebook", fake_papermill)
    monkeypatch.setenv("KERAS_BACKEND", "tensorflow")
    log = []
    run_pipeline({}, run_id="run", runs_dir=tmp_path, resume=True, until="01", log=log.append)
    assert ran == [(NOTEBOOKS[0], "jax")]
    assert any("continues on it (KERAS_BACKEND=tensorflow applies to new runs only)" in line
               for line in log)
    assert not any(line.startswith("warning") for line in log)  # same packages
    # The backends' packages are compared on resume like the others.
    env = read_json(tmp_path / "run" / "env.json")
    env["backend"]["packages"]["jax"] = "0.0.1"
    write_json(tmp_path / "run" / "env.json", env)
    log.clear()
    run_pipeline({}, run_id="run", runs_dir=tmp_path, resume=True, until="01", log=log.append)
    warning = next(line for line in log if line.startswith("warning"))
    assert f"jax 0.0.1 -> {metadata.version('jax')}" in warning
    assert set(read_json(tmp_path / "run" / "env.json")["resumes"][-1]["differences"]) == {
        "packages"}
    # A run from before backends were recorded takes --backend (else the environment's).
    env = read_json(tmp_path / "run" / "env.json")
    del env["backend"]
    write_json(tmp_path / "run" / "env.json", env)
    ran.clear()
    run_pipeline({}, run_id="run", runs_dir=tmp_path, resume=True, backend="jax",
                 log=lambda *_: None)
    assert ran == [(notebook, "jax") for notebook in NOTEBOOKS[1:]]


def test_kernels_run_on_the_backend_they_are_given(monkeypatch):
    from jupyter_client.manager import AsyncKernelManager

    seen = {}

    async def launch(self, kernel_cmd, **kw):
        seen.update(kw)

    monkeypatch.setattr(AsyncKernelManager, "_async_launch_kernel", launch)
    manager = provenance.kernel_manager_class()(
        config=provenance.kernel_config(keras_backend="jax"))
    asyncio.run(manager._async_launch_kernel(["python"], env={"KERAS_BACKEND": "tensorflow",
                                                               "OTHER": "1"}))
    assert seen["env"] == {"KERAS_BACKEND": "jax", "OTHER": "1"}
