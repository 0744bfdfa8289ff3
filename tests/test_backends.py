"""The lab on another Keras backend: SSIM map, GMS loss and the AE-2 loss computed on JAX equal
TensorFlow's, the SSIM map matches scikit-image on both, and the compute modules load no
TensorFlow under JAX; training on JAX (the VAE resumed, the joint head, the refused
strategies); the tiny notebook chain run on JAX; runs that cross backends (a run trained on
one is scored, and its notebooks 04-05 run, on the other); the run's ``--backend`` and its
record.

Every JAX start and XLA compilation costs seconds of CPU, so the JAX work is done by as few
processes as possible: one subprocess (CPU, one thread) does the compute and the training
work, writing its results to an .npz and a JSON line while this process computes the same on
TensorFlow; the command line runs the chain (one kernel per notebook); one more subprocess
scores the TensorFlow run on JAX. The JAX processes of one test process share a persistent
XLA compilation cache in a temporary folder, so a computation compiled once (a model's
predict step, a weight shape's initializer) is not compiled again by the next process. The
SSIM fixtures are those of tests/test_scoring.py, whose skimage comparison this extends to
JAX.
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

import nbformat
import numpy as np
import papermill
import pytest
import tensorflow as tf
from scipy import ndimage

from anomaly_utils import process_environment
from anomaly_utils.artifacts import read_json, write_json
from anomaly_utils.errors import ParameterError
from anomaly_utils.models.losses import gms_loss, make_ae2_loss
from anomaly_utils.models.similarity import ssim_map
from anomaly_utils.pipeline import provenance
from anomaly_utils.pipeline.parameters import NOTEBOOK_DIR, NOTEBOOKS
from anomaly_utils.pipeline.runs import create_run, run_pipeline
from anomaly_utils.scoring.candidates import REGISTRY
from anomaly_utils.scoring.image_score import SCALE_ADAPTIVE, read_choice
from anomaly_utils.scoring.stored import CANDIDATES, MODELS, load_scores
from tests.conftest import BACKEND_RUN, TINY, UNTIL, finished, jax_compilation_cache, shell
from tests.test_scoring import TOL, noisy_copy, skimage_ssim_map, structured_pair

ROOT = Path(__file__).resolve().parent.parent
# JAX against TensorFlow, absolute, per pixel or per value, where the images have texture:
# both compute in float32 with kernels that sum in different orders (measured: <= 2e-6 on
# the SSIM maps, <= 6e-7 on the losses). On flat areas far from the plane mean the variance
# is a float32 cancellation on either backend, so there each is held to skimage within
# FLAT_TOL. Its bound: E[x^2] - E[x]^2 is off by a few float32 ulps of (x - centre)^2 <= 1,
# a few 1e-7, and SSIM divides that by C2 = 9e-4 (measured: JAX <= 6e-5 on one CPU and
# 1.2e-4 on another, TensorFlow <= 9.1e-5).
JAX_TOL = 1e-5
FLAT = ("structured", "half", "square")
FLAT_TOL = 5e-4
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


def _jax_installed() -> None:
    if importlib.util.find_spec("jax") is None:
        pytest.skip("jax is not installed (requirements.txt pins it: reinstall the venv)")


@pytest.fixture(scope="session")
def jax_env() -> dict[str, str]:
    """JAX_ENV with the persistent XLA compilation cache that the JAX processes share
    (:func:`tests.conftest.jax_compilation_cache`): a chain's kernels compile a model's predict
    step and its initializers, and a later process that loads the same architecture finds
    them compiled."""
    _jax_installed()
    return {**os.environ, **JAX_ENV, **jax_compilation_cache()}


# The compute work first, before anything loads TensorFlow; then the training work.
LAB_SCRIPT = textwrap.dedent("""
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

    # ----------------------------------------------------------------------- training
    from pathlib import Path

    import tensorflow as tf

    from anomaly_utils.errors import ParameterError
    from anomaly_utils.models.ae1 import build_ae1
    from anomaly_utils.models.ae2 import build_ae2
    from anomaly_utils.models.segmentation_head import build_segmentation_head
    from anomaly_utils.training.fit import fit_autoencoder
    from anomaly_utils.training.head import fit_segmentation_head
    from anomaly_utils.training.strategy import make_strategy

    root = Path(sys.argv[3])
    training = {"backend": keras.backend.backend(), "default": repr(make_strategy("default"))}
    for name in ("mirrored", "multiworker"):
        try:
            training[name] = type(make_strategy(name)).__name__
        except ParameterError as exc:
            training[name] = str(exc)
    x = np.random.default_rng(0).integers(0, 256, (12, 16, 16, 3), dtype=np.uint8)

    def vae():
        return build_ae1(16, latent_dim=8, variant="vae", encoder_filters=(8, 16, 32),
                         decoder_filters=(16, 8), seed=3)

    try:
        fit_autoencoder(vae(), x, x, root / "m", epochs=1, learning_rate=1e-3, seed=0,
                        strategy=tf.distribute.MirroredStrategy(["/cpu:0"]))
    except ParameterError as exc:
        training["fit_mirrored"] = str(exc)

    class Kill(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt

    def fit_vae(folder, callbacks=()):
        return fit_autoencoder(vae(), x[:8], x[8:], root / folder, epochs=4,
                               learning_rate=1e-3, seed=7, batch_size=4, verbose=0,
                               backup_overhead=1.0, callbacks=callbacks)

    training["vae"] = fit_vae("vae")["history"]
    try:
        fit_vae("killed", [Kill()])
    except KeyboardInterrupt:
        training["backup"] = (root / "killed" / "backup").is_dir()
    resumed = fit_vae("killed")
    training["resumed"], training["initial_epoch"] = resumed["history"], resumed["initial_epoch"]
    training["config_backend"] = json.loads((root / "vae" / "config.json").read_text())["backend"]
    images = (x[8:] / 255).astype("float32")
    model = resumed["model"]
    a, b = (model.sample_reconstructions(images, 2, seed=s) for s in (1, 1))
    c = model.sample_reconstructions(images, 2, seed=2)
    training["samples"] = {"shape": list(a.shape), "same_seed": bool(np.array_equal(a, b)),
                           "other_seed": bool(np.array_equal(a, c)),
                           "finite": bool(np.isfinite(a).all())}
    head = fit_segmentation_head(
        build_ae2(32, 3, 4, widths=[4] * 8, bottleneck="spatial"),
        build_segmentation_head(3, (4, 8)), np.repeat(np.repeat(x, 2, 1), 2, 2),
        root / "head", patch_size=32, epochs=1, patches_per_epoch=16, batch_size=8,
        learning_rate=1e-3, seed=0, training="joint")
    training["joint"] = {k: v for k, v in head["history"].items() if k.endswith("loss")}
    print(json.dumps({"compute": report, "training": training}))
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
def jax_lab(tmp_path_factory, jax_env) -> dict:
    """What the JAX subprocess reports: ``compute`` and ``training`` (its JSON line),
    ``inputs`` and ``outputs`` (the compute work's arrays)."""
    folder = tmp_path_factory.mktemp("jax")
    inputs = _inputs()
    np.savez(folder / "inputs.npz", **inputs)
    script = f"MODULES = {COMPUTE_MODULES!r}\nBLENDS = {BLENDS!r}\n" + LAB_SCRIPT
    (folder / "training").mkdir()
    result = subprocess.run([sys.executable, "-c", script, str(folder / "inputs.npz"),
                             str(folder / "outputs.npz"), str(folder / "training")], cwd=ROOT,
                            env=jax_env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    return {**report, "inputs": inputs, "outputs": dict(np.load(folder / "outputs.npz"))}


@pytest.fixture(scope="module")
def jax_run(jax_lab) -> tuple[dict, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(report, inputs, outputs) of the JAX subprocess's compute work."""
    return jax_lab["compute"], jax_lab["inputs"], jax_lab["outputs"]


@pytest.fixture(scope="module")
def jax_training(jax_lab) -> dict:
    """What the JAX subprocess's training work reports."""
    return jax_lab["training"]


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
        tol = FLAT_TOL if name in FLAT else TOL
        np.testing.assert_allclose(on_jax, reference, rtol=0, atol=tol, err_msg=name)
        np.testing.assert_allclose(on_tf, reference, rtol=0, atol=tol, err_msg=name)
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


@pytest.mark.slow
def test_strategies_map_to_keras_distribution_on_jax_and_default_is_one_device(jax_training):
    assert jax_training["backend"] == "jax" and jax_training["default"] == "None"
    # mirrored: DataParallel over the local devices (tests/test_distribute.py trains on two);
    # multiworker needs the processes' coordinates, and says which variables.
    assert jax_training["mirrored"] == "DataParallel"
    assert "KERAS_DISTRIBUTION_JOB_ADDRESSES" in jax_training["multiworker"]
    # A tf.distribute strategy object is TensorFlow's and refused on JAX.
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

# Every model trains one epoch, on half TINY's patches: enough to run every cell.
JAX_CHAIN = {**TINY, "epochs": "1", "ae2.epochs": "1", "head_epochs": "1",
             "patches_per_epoch": "32", "head_patches_per_epoch": "16"}
SPLITS = ("val", "val_pseudo", "test")


@pytest.fixture(scope="module")
def jax_chain(fresh_root: Path, jax_env) -> Path:
    """The README's ``run --backend jax`` in the fresh copy (on its tiny carpet), training
    shortened to JAX_CHAIN, until notebook 03 (``UNTIL``): the run's folder.

    Notebooks 04 and 05 read the score files, not the models; they run for this run on
    TensorFlow, and for the TensorFlow run on JAX, in the cross-backend test below.
    """
    env = {name: value for name, value in jax_env.items()
           if name not in ("KERAS_BACKEND", "PYTHONPATH")}  # --backend alone chooses JAX
    pairs = " ".join(f"-p {name} {value}" for name, value in JAX_CHAIN.items())
    result = shell(f"{BACKEND_RUN} --quiet {pairs}{UNTIL[BACKEND_RUN]}", fresh_root, env=env)
    return finished(result, fresh_root)


def test_the_tiny_chain_runs_on_jax(jax_chain: Path):
    """``run --backend jax`` (TensorFlow installed beside it): the notebooks that train and
    score complete on JAX, and every candidate scores every split."""
    status = read_json(jax_chain / "status.json")
    assert {nb: status[nb]["state"] for nb in status} == dict.fromkeys(NOTEBOOKS[:3],
                                                                          "completed")
    backend = read_json(jax_chain / "env.json")["backend"]
    assert backend["name"] == "jax" and backend["set_by"] == "--backend"
    assert backend["version"] == backend["packages"]["jax"] == metadata.version("jax")
    for model in ("ae1", "ae2", "ae2/head"):  # the kernels trained on JAX
        assert read_json(jax_chain / model / "config.json")["backend"] == "jax", model
    fitted = [c.name for c in REGISTRY if c.notebook in NOTEBOOKS[:3]]  # those 01-03 make
    assert fitted == ["floor", "ae1", "ae2"]
    for candidate in fitted:
        for split in SPLITS:
            scores = load_scores(jax_chain / candidate / f"scores_{split}.npz")["scores"]
            assert len(scores) and np.isfinite(scores).all(), (candidate, split)


# --------------------------------------------------------------------------- across backends

# `score --backend NAME` as the command runs it, in a process on that backend that loads a
# run's models; score_paths is wrapped to keep its results at full precision. Arguments: the
# run, the folder to score, the backend.
SCORE_SCRIPT = textwrap.dedent("""
    import json, sys
    from pathlib import Path

    from anomaly_utils.pipeline import cli

    run, folder, backend = sys.argv[1:4]
    cli.scoring_backend(backend, Path(run))  # before score_images loads Keras
    from anomaly_utils.pipeline import score_images

    kept, score_paths = {}, score_images.score_paths

    def keep(run_dir, model, paths, **kwargs):
        lines = []
        kept[model] = {"results": score_paths(run_dir, model, paths, log=lines.append, **kwargs),
                       "header": lines[0]}
        return kept[model]["results"]

    score_images.score_paths = keep
    for model in MODELS:
        assert cli.main(["score", "--backend", backend, "--run", run, "--model", model,
                         folder]) == 0
    print(json.dumps(kept))
""")
# Notebooks 04 and 05 run with one more cell, which prints what their kernel runs on.
PROBE = ("import json, os, sys\n"
         "print(json.dumps({'KERAS_BACKEND': os.environ.get('KERAS_BACKEND'), 'keras': "
         "sys.modules['keras'].backend.backend() if 'keras' in sys.modules else None}))")


def score_on_tensorflow(run: Path, folder: Path) -> dict:
    """What `score --backend tensorflow` computes for ``run``'s models, in this process
    (TensorFlow's), at full precision."""
    import keras

    from anomaly_utils.pipeline import cli, score_images

    if keras.backend.backend() != "tensorflow":
        pytest.skip("this test process runs Keras on another backend than TensorFlow")
    kept, score_paths = {}, score_images.score_paths

    def keep(run_dir, model, paths, **kwargs):
        lines = []
        kept[model] = {"results": score_paths(run_dir, model, paths, log=lines.append, **kwargs),
                       "header": lines[0]}
        return kept[model]["results"]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(score_images, "score_paths", keep)
        patch.setenv("KERAS_BACKEND", "tensorflow")  # restored afterwards
        for model in MODELS:
            assert cli.main(["score", "--backend", "tensorflow", "--run", str(run),
                             "--model", model, str(folder)]) == 0
    return kept


def _notebooks_04_05_on(run: Path, backend: str, folder: Path) -> list[dict]:
    """Notebooks 04 and 05 of ``run`` executed by papermill in kernels on ``backend``, started
    as ``runs.execute_notebook`` starts them; what each kernel's probe cell printed."""
    effective = read_json(run / "params.json")["notebooks"]
    probes = []
    for notebook in NOTEBOOKS[3:]:
        source = folder / f"{notebook}.ipynb"
        nb = nbformat.read(NOTEBOOK_DIR / f"{notebook}.ipynb", as_version=4)
        nb.cells.append(nbformat.v4.new_code_cell(PROBE))
        nbformat.write(nb, source)
        output = run / f"{notebook}.ipynb"
        papermill.execute_notebook(
            str(source), str(output), parameters={**effective[notebook], "run_dir": str(run)},
            cwd=str(NOTEBOOK_DIR), progress_bar=False,
            config=provenance.kernel_config(run / "logs" / f"{notebook}.stderr.log", backend),
            kernel_manager_class=provenance.kernel_manager_class())
        cell = nbformat.read(output, as_version=4).cells[-1]
        probes.append(json.loads(cell.outputs[-1]["text"]))
    return probes


@pytest.fixture(scope="module")
def crossed(finished_run: Path, jax_chain: Path, jax_env, tmp_path_factory) -> dict:
    """The TensorFlow run (``make run``'s) and the JAX run, each scored by ``score`` on the
    other backend; the JAX run's notebooks 04 and 05 (it has not run them yet) on TensorFlow.

    Notebooks 04 and 05 read score files only and load no Keras (the probe shows it), so the
    TensorFlow run's 04 and 05 are not run again on JAX: that rerun would compute what a
    TensorFlow kernel computes, and tests/test_reliability.py's killed-04 resume checks
    that a rerun of 04 and 05 gives the run's metrics again."""
    folder = tmp_path_factory.mktemp("crossed")
    test_dir = {run: Path(read_json(run / "params.json")["notebooks"]["03_train_ae2"]
                          ["data_dir"]) / "test" for run in (finished_run, jax_chain)}
    result = subprocess.run(
        [sys.executable, "-c", f"MODELS = {MODELS!r}\n" + SCORE_SCRIPT, str(finished_run),
         str(test_dir[finished_run]), "jax"], cwd=ROOT, capture_output=True, text=True,
        timeout=900,
        env={name: value for name, value in jax_env.items() if name != "KERAS_BACKEND"})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    probes = _notebooks_04_05_on(jax_chain, "tensorflow", folder)  # its thresholds
    return {"scores": {
                "tensorflow": json.loads(result.stdout.strip().splitlines()[-1]),
                "jax": score_on_tensorflow(jax_chain, test_dir[jax_chain])},
            "probes": probes, "runs": {"tensorflow": finished_run, "jax": jax_chain}}


# A run's image scores on the other backend against those its training notebook stored,
# relative: the same float32 computation, summed in another order. Measured on the tiny runs,
# both ways: AE-1 at most 9.3e-10 on scores of about 0.013 (7e-8 relative), AE-2 with its
# head at most 6.0e-8 on scores of about 0.5 (1.2e-7, one float32 step); the bound leaves
# room for other seeds and machines and is still float32 rounding, nothing larger.
CROSS_RTOL = 1e-5
OTHER = {"tensorflow": "jax", "jax": "tensorflow"}


def cross_atol(model_dir: Path, want: np.ndarray) -> float:
    """The absolute tolerance for a candidate's scores: 0, or, where its image score is the
    scale-adaptive peak (standardised by the normals' peaks, ``image_score.json``), the same
    relative rounding of the map's peaks expressed in those standard deviations, which a
    nearly flat normal map (a one-epoch head) makes large."""
    choice = read_choice(model_dir)
    if choice.rule != SCALE_ADAPTIVE:
        return 0.0
    peak = choice.peak
    return CROSS_RTOL * float(np.max(np.abs(peak.mean) / np.asarray(peak.std))
                              + np.abs(want).max())


def test_a_run_trained_on_one_backend_scores_the_same_on_the_other(crossed):
    for trained_on, scored in crossed["scores"].items():
        run = crossed["runs"][trained_on]
        for model in MODELS:
            assert f"(trained on {trained_on}, scored on {OTHER[trained_on]})" in \
                scored[model]["header"]
            stored = load_scores(run / model / "scores_test.npz")  # paths below data_dir
            expected = {Path(p).parts[-3:]: s for p, s in zip(stored["paths"], stored["scores"],
                                                              strict=True)}
            results = scored[model]["results"]  # test/<type>/<name> of each image
            assert sorted(Path(r["path"]).parts[-3:] for r in results) == sorted(expected)
            got = np.array([r["score"] for r in results])
            want = np.array([expected[Path(r["path"]).parts[-3:]] for r in results])
            np.testing.assert_allclose(got, want, rtol=CROSS_RTOL,
                                       atol=cross_atol(run / model, want),
                                       err_msg=f"{model} of the {trained_on} run")


def test_notebooks_04_and_05_read_a_run_on_the_other_backend(crossed):
    for probe in crossed["probes"]:  # the JAX run's 04 and 05 ran on TensorFlow
        assert probe["KERAS_BACKEND"] == "tensorflow", probe
        # They load no Keras: what the crossed fixture leaves out rests on this.
        assert probe["keras"] is None, probe
    # The JAX run is evaluated and its gallery drawn on TensorFlow.
    jax_run = crossed["runs"]["jax"]
    metrics = read_json(jax_run / "metrics.json")
    for candidate in CANDIDATES:
        assert 0.0 <= metrics[candidate]["image_auroc"] <= 1.0, candidate
    assert metrics["choice"]["model"] in CANDIDATES
    assert set(read_json(jax_run / "thresholds.json")) == set(CANDIDATES)
    assert list((jax_run / "figures").glob("05_*.png"))


def test_score_takes_its_backend_from_the_flag_the_environment_or_the_run(monkeypatch, tmp_path):
    """``score``: ``--backend``, else ``KERAS_BACKEND`` (or keras.json), else the backend the
    run was trained on; Keras already loaded on another backend is an error, not a silent
    switch."""
    import keras

    from anomaly_utils.pipeline import cli, score_images

    if keras.backend.backend() != "tensorflow":
        pytest.skip("this test process runs Keras on another backend than TensorFlow")
    _clean_backend_environment(monkeypatch, tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    write_json(run / "env.json", {"backend": {"name": "jax"}})
    # Nothing chosen: the run's own backend (refused here only because TensorFlow is loaded).
    with pytest.raises(ParameterError, match=r"already loaded on 'tensorflow'.*scored on 'jax'"):
        cli.scoring_backend(None, run)
    monkeypatch.setenv("KERAS_BACKEND", "tensorflow")
    assert cli.scoring_backend(None, run) == "tensorflow"
    monkeypatch.delenv("KERAS_BACKEND")
    assert cli.scoring_backend("tensorflow", run) == "tensorflow"
    assert os.environ["KERAS_BACKEND"] == "tensorflow"  # what Keras reads when it loads
    seen = []
    monkeypatch.setattr(score_images, "score_paths",
                        lambda *args, **kwargs: seen.append(os.environ["KERAS_BACKEND"]))
    assert cli.main(["score", "--backend", "tensorflow", "--run", str(run), "x.png"]) == 0
    assert seen == ["tensorflow"]
    monkeypatch.delenv("KERAS_BACKEND")
    assert cli.main(["score", "--run", str(run), "x.png"]) == 2 and seen == ["tensorflow"]


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


def test_a_run_records_its_backend_and_accepts_a_strategy_where_it_maps(small_data, tmp_path):
    create_run({"data_dir": str(small_data)}, tmp_path / "run", backend="jax")
    env = read_json(tmp_path / "run" / "env.json")
    assert env["backend"]["name"] == "jax" and env["backend"]["set_by"] == "--backend"
    assert provenance.recorded_backend(tmp_path / "run") == "jax"
    for backend in ("jax", "tensorflow"):  # keras.distribution / tf.distribute
        create_run({"data_dir": str(small_data), "ae2.strategy": "mirrored"},
                   tmp_path / backend, backend=backend)
    # PyTorch has no distribution the lab maps to (torch is not installed here, so the
    # check is asked directly).
    from anomaly_utils.training.strategy import check_backend
    with pytest.raises(ParameterError, match=r"'torch'.*--backend"):
        check_backend("mirrored", "torch")


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


def _kernel_environment(monkeypatch, config, **launch) -> dict:
    """The environment a kernel of ``kernel_manager_class`` would be started with."""
    from jupyter_client.manager import AsyncKernelManager

    seen = {}

    async def launch_kernel(self, kernel_cmd, **kw):
        seen.update(kw)

    monkeypatch.setattr(AsyncKernelManager, "_async_launch_kernel", launch_kernel)
    manager = provenance.kernel_manager_class()(config=config)
    asyncio.run(manager._async_launch_kernel(["python"], **launch))
    return seen["env"]


def test_kernels_run_on_the_backend_they_are_given(monkeypatch):
    env = _kernel_environment(monkeypatch, provenance.kernel_config(keras_backend="jax"),
                              env={"KERAS_BACKEND": "tensorflow", "OTHER": "1"})
    assert env == {"KERAS_BACKEND": "jax", "OTHER": "1", **process_environment.DEFAULTS}


@pytest.mark.parametrize("name", sorted(process_environment.DEFAULTS))
def test_kernels_and_make_get_each_default_unless_the_user_chose(monkeypatch, name):
    value = process_environment.DEFAULTS[name]
    monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KERAS_BACKEND", "tensorflow")
    env = _kernel_environment(monkeypatch, provenance.kernel_config())  # this process's
    assert env[name] == value and env["KERAS_BACKEND"] == "tensorflow"
    own = f"{value}-the-user's"
    assert _kernel_environment(monkeypatch, provenance.kernel_config(),
                               env={name: own})[name] == own
    # make's processes get the same value as the kernels
    assert f"\nexport {name} ?= {value}\n" in (ROOT / "Makefile").read_text()


def test_importing_the_lab_sets_tensorflows_defaults_unless_the_user_chose():
    code = ("import os, sys; import anomaly_utils; "
            "print(sorted((n, os.environ.get(n)) for n in anomaly_utils.process_environment."
            "DEFAULTS), 'tensorflow' in sys.modules)")
    clean = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT)}
    chosen = {**clean, "TF_ENABLE_ONEDNN_OPTS": "0"}
    outputs = [subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                              text=True, check=True, cwd=ROOT).stdout for env in (clean, chosen)]
    expected = sorted((n, process_environment.DEFAULTS[n] if n in
                       process_environment.READ_BY_TENSORFLOW else None)
                      for n in process_environment.DEFAULTS)
    assert outputs[0].strip() == f"{expected} False"
    assert "('TF_ENABLE_ONEDNN_OPTS', '0')" in outputs[1]
