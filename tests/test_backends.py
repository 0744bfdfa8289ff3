"""The lab's compute on another Keras backend: SSIM map, GMS loss and the AE-2 loss computed on
JAX equal TensorFlow's, the SSIM map matches scikit-image on both, and the compute modules load
no TensorFlow under JAX.

One JAX subprocess (CPU, one thread) does all the JAX work on inputs saved to an .npz and
writes its results to another; this process computes the same on TensorFlow. The SSIM
fixtures are those of tests/test_scoring.py, whose skimage comparison this extends to JAX.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage

from anomaly_utils.models.losses import gms_loss, make_ae2_loss
from anomaly_utils.models.similarity import ssim_map
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
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
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
