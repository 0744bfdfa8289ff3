"""The lab on Keras' PyTorch backend: the tiny chain of all five notebooks, the same metrics
from the same parameters, the VAE, and compute that equals TensorFlow's without loading it.

Marked ``backends``: ``make test`` leaves these out (PyTorch is not in requirements.txt),
and ``make test-backends`` installs requirements-torch.txt and runs them; ``.ci/run`` runs
both.
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

from anomaly_utils.artifacts import read_json
from anomaly_utils.pipeline.parameters import NOTEBOOKS
from anomaly_utils.scoring.candidates import CANDIDATES
from anomaly_utils.scoring.stored import load_scores
from tests.conftest import ROOT, tiny_pairs

pytestmark = pytest.mark.backends
if importlib.util.find_spec("torch") is None:
    pytest.skip("torch is not installed: `make test-backends` installs requirements-torch.txt "
                "and runs these tests", allow_module_level=True)

TORCH_ENV = {"OMP_NUM_THREADS": "2", "TF_CPP_MIN_LOG_LEVEL": "3",
             "PYTHONPATH": os.pathsep.join(filter(None, (str(ROOT),
                                                         os.environ.get("PYTHONPATH"))))}
SPLITS = ("val", "val_pseudo", "test")


def _run(data: Path, runs: Path, run_id: str, *extra: str,
         backend: str = "torch") -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}  # --backend alone
    return subprocess.run(
        [sys.executable, "-m", "anomaly_utils", "run", "--backend", backend, "--data-dir",
         str(data), "--preset", "defaults", "--run-id", run_id, "--runs-dir", str(runs),
         "--quiet", *tiny_pairs(), *extra], cwd=ROOT, env={**env, **TORCH_ENV},
        capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def torch_runs(tiny_data: Path, tmp_path_factory) -> Path:
    """Three runs on PyTorch: the whole tiny chain (``chain``), the same parameters again
    until AE-1 (``again``), and AE-1 as the VAE (``vae``); and one on TensorFlow until its
    thresholds (``tensorflow``), for scoring across."""
    runs = tmp_path_factory.mktemp("torch_runs")
    for run_id, extra in (("chain", ()), ("again", ("--until", "02")),
                          ("vae", ("-p", "ae1.variant", "vae", "--until", "02"))):
        result = _run(tiny_data, runs, run_id, *extra)
        assert result.returncode == 0, result.stderr[-3000:]
    result = _run(tiny_data, runs, "tensorflow", "--until", "04", backend="tensorflow")
    assert result.returncode == 0, result.stderr[-3000:]
    return runs


def test_the_tiny_chain_runs_on_torch(torch_runs: Path):
    run = torch_runs / "chain"
    assert {nb: s["state"] for nb, s in read_json(run / "status.json").items()} == dict.fromkeys(
        NOTEBOOKS, "completed")
    backend = read_json(run / "env.json")["backend"]
    assert backend["name"] == "torch" and backend["set_by"] == "--backend"
    for model in ("ae1", "ae2", "ae2/head"):
        assert read_json(run / model / "config.json")["backend"] == "torch", model
    for candidate in CANDIDATES:
        for split in SPLITS:
            scores = load_scores(run / candidate / f"scores_{split}.npz")["scores"]
            assert len(scores) and np.isfinite(scores).all(), (candidate, split)
    metrics = read_json(run / "metrics.json")
    assert metrics["choice"]["model"] in CANDIDATES
    assert all(0.0 <= metrics[c]["image_auroc"] <= 1.0 for c in CANDIDATES)


def test_the_same_parameters_give_the_same_scores_on_torch(torch_runs: Path):
    for split in SPLITS:
        first, again = (load_scores(torch_runs / run / "ae1" / f"scores_{split}.npz")
                        for run in ("chain", "again"))
        np.testing.assert_array_equal(first["scores"], again["scores"])
        np.testing.assert_array_equal(first["maps"], again["maps"])


def test_the_vae_trains_on_torch(torch_runs: Path):
    history = (torch_runs / "vae" / "ae1" / "history.csv").read_text().splitlines()
    header, rows = history[0].split(","), [list(map(float, r.split(","))) for r in history[1:]]
    assert {"loss", "kl_loss", "val_loss"} <= set(header) and len(rows) == 3
    losses = [row[header.index("loss")] for row in rows]
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
    assert read_json(torch_runs / "vae" / "ae1" / "config.json")["backend"] == "torch"


# The compute, imported and run under PyTorch: SSIM, the AE-2 loss and an anomaly map.
COMPUTE = textwrap.dedent("""
    import json, sys
    import numpy as np
    from anomaly_utils.models.losses import make_ae2_loss
    from anomaly_utils.models.similarity import ssim_map
    from anomaly_utils.scoring.maps import anomaly_map
    import keras

    x, y = np.load(sys.argv[1])["x"], np.load(sys.argv[1])["y"]
    loss = make_ae2_loss(ssim_weight=0.6, l1_weight=0.2, gms_weight=0.2)
    np.savez(sys.argv[2], ssim=ssim_map(x, y),
             loss=np.asarray(keras.ops.convert_to_numpy(loss(x, y))),
             map=anomaly_map(x, y, "0.5*ssim+0.5*gms"))
    print(json.dumps({"backend": keras.backend.backend(),
                      "tensorflow": "tensorflow" in sys.modules}))
""")


def test_compute_on_torch_equals_tensorflow_and_loads_no_tensorflow(tmp_path: Path):
    from anomaly_utils.models.losses import make_ae2_loss
    from anomaly_utils.models.similarity import ssim_map
    from anomaly_utils.scoring.maps import anomaly_map

    rng = np.random.default_rng(0)
    x = rng.random((2, 48, 40, 3), dtype=np.float32)
    y = np.clip(x + rng.normal(0, 0.05, x.shape), 0, 1).astype(np.float32)
    np.savez(tmp_path / "in.npz", x=x, y=y)
    result = subprocess.run([sys.executable, "-c", COMPUTE, str(tmp_path / "in.npz"),
                             str(tmp_path / "out.npz")], cwd=ROOT, capture_output=True,
                            text=True, timeout=300,
                            env={**os.environ, **TORCH_ENV, "KERAS_BACKEND": "torch"})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"backend": "torch", "tensorflow": False}
    out = np.load(tmp_path / "out.npz")
    # float32 on both, other kernels: equal to rounding (the tolerance of test_backends.py).
    np.testing.assert_allclose(out["ssim"], ssim_map(x, y), atol=1e-5)
    loss = make_ae2_loss(ssim_weight=0.6, l1_weight=0.2, gms_weight=0.2)
    np.testing.assert_allclose(out["loss"], np.asarray(loss(x, y)), atol=1e-5)
    np.testing.assert_allclose(out["map"], anomaly_map(x, y, "0.5*ssim+0.5*gms"), atol=1e-4)


def _stored_scores(run: Path, model: str) -> dict[tuple[str, ...], float]:
    """The test scores ``run``'s training notebook stored, by test/<type>/<name>."""
    stored = load_scores(run / model / "scores_test.npz")
    return {Path(p).parts[-3:]: s for p, s in zip(stored["paths"], stored["scores"], strict=True)}


def test_a_run_trained_on_torch_or_tensorflow_scores_the_same_on_the_other(torch_runs: Path,
                                                                            tiny_data: Path):
    """`score` loads a run's saved models on the other backend (safe mode) and gives the
    scores the training notebook stored, to float32 rounding (CROSS_RTOL and cross_atol of
    test_backends.py, whose JAX-TensorFlow measurement it rests on)."""
    from tests.test_backends import (
        CROSS_RTOL,
        MODELS,
        SCORE_SCRIPT,
        cross_atol,
        score_on_tensorflow,
    )

    folder = tiny_data / "test"
    result = subprocess.run(
        [sys.executable, "-c", f"MODELS = {MODELS!r}\n" + SCORE_SCRIPT,
         str(torch_runs / "tensorflow"), str(folder), "torch"], cwd=ROOT, capture_output=True,
        text=True, timeout=900, env={**os.environ, **TORCH_ENV, "KERAS_BACKEND": "torch"})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    scored = {"tensorflow": json.loads(result.stdout.strip().splitlines()[-1]),
              "torch": score_on_tensorflow(torch_runs / "chain", folder)}
    for trained_on, other in (("tensorflow", "torch"), ("torch", "tensorflow")):
        run = torch_runs / ("chain" if trained_on == "torch" else "tensorflow")
        for model in MODELS:
            assert f"(trained on {trained_on}, scored on {other})" in \
                scored[trained_on][model]["header"]
            expected = _stored_scores(run, model)
            results = scored[trained_on][model]["results"]
            assert sorted(Path(r["path"]).parts[-3:] for r in results) == sorted(expected)
            got = np.array([r["score"] for r in results])
            want = np.array([expected[Path(r["path"]).parts[-3:]] for r in results])
            np.testing.assert_allclose(got, want, rtol=CROSS_RTOL,
                                       atol=cross_atol(run / model, want),
                                       err_msg=f"{model} trained on {trained_on}")
