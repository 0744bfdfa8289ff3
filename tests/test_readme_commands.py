"""Every shell command in the README's code blocks, run as written in a fresh copy of the root.

Each command is typed as the README shows it; the only additions are the tiny configuration
(``TINY`` in conftest.py) that shortens training, and, where the README writes a placeholder
(``<id>``, ``path/to/images/``, a run id), the value from the run made before it. A README
command that no test here runs fails ``test_every_readme_command_is_run``; the few that cannot
run here are listed in ``NOT_RUN`` with the reason, which the test prints when it skips them.
The long runs start in threads when the session starts (``Background`` in conftest.py) and
run beside the other tests; the tests here wait for their results.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from anomaly_utils.artifacts import read_json
from anomaly_utils.pipeline.parameters import NOTEBOOKS
from anomaly_utils.scoring.stored import load_scores
from tests.conftest import (
    BACKEND_RUN,
    CHECK_DATA,
    MAKE_RUN,
    OWN_DATA,
    PRESET,
    RERUN,
    RESUME,
    ROOT,
    SWEEP,
    TINY,
    Background,
    finished,
    shell,
)

MAKE_TEST = "make test"
DOWNLOAD = "python -m anomaly_utils download --category carpet --dest data/"
PAPERMILL = (".venv/bin/papermill notebooks/03_train_ae2.ipynb out.ipynb -p epochs 100 "
             "--cwd notebooks")
SCORE = (".venv/bin/python -m anomaly_utils score --run runs/<id> path/to/images/ "
         "--out heatmaps/")
MAKE_LAB = "make lab"

WHEELHOUSE = ("make wheelhouse WHEELHOUSE=wheels PLATFORM=manylinux_2_28_x86_64 "
              "PYTHON_VERSION=3.11 REQUIREMENTS=requirements-gpu.txt")

RUN_HERE = (MAKE_RUN, CHECK_DATA, OWN_DATA, PRESET, RERUN, RESUME, SWEEP, PAPERMILL, SCORE,
            MAKE_LAB, BACKEND_RUN)  # BACKEND_RUN: in tests/test_backends.py
NOT_RUN = {
    MAKE_TEST: "it is the command that runs this suite",
    ".venv/bin/python -m pip install elpv-dataset==1.0.0.post1": "downloads 90 MB; "
        "tests/test_elpv.py runs the dataset command on a generated stand-in instead",
    ".venv/bin/python -m anomaly_utils make-elpv data/elpv": "needs the elpv-dataset package; "
        "tests/test_elpv.py runs it on a generated stand-in (--source)",
    "make bench-quality": "runs the user's command on four datasets, both presets' runs on "
                          "the three real ones (hours on 2 cores); "
        "its parts are tested in tests/test_elpv.py and tests/test_selection.py",
    DOWNLOAD: "needs the network (the downloader is tested against archives served on "
              "loopback in test_download.py); data/carpet here is the tiny carpet instead",
    WHEELHOUSE: "downloads JAX's CUDA libraries (gigabytes); tests/test_environment.py checks "
                "its pip commands with make -n",
    "make run WHEELHOUSE=wheels": "needs the wheelhouse above; tests/test_environment.py "
                                  "checks that every install then reads it alone (--no-index)",
    "make test-backends": "CI runs it after make test (.ci/run): the tests marked backends, "
                       "and tests/test_environment.py checks what it installs",
    "make run REUSE_BACKEND=1 KERAS_BACKEND=jax": "would rebuild the shared .venv around the "
        "machine's own Python; tests/test_environment.py checks what it leaves out",
    ".venv/bin/python -m anomaly_utils run --preset auto --data-dir "
    "../shared/datasets/magnetic_tile --run-id mt": "two full runs of magnetic_tile (about 45 "
        "minutes on 2 cores); test_preset_real_on_magnetic_tile runs the real preset's chain "
        "and tests/test_auto.py the choice between the runs",
}


@pytest.fixture(scope="module")
def readme_runs(background: Background) -> Background:
    """The README's runs, started by conftest's ``background`` when the session started."""
    return background


def readme_commands(text: str) -> list[str]:
    """The commands of the README's ``bash`` blocks, comments stripped, in order."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            command = line.split("  #")[0].split(" # ")[0].strip()
            if command and not command.startswith("#"):
                commands.append(command)
    return commands


def test_every_readme_command_is_run():
    commands = set(readme_commands((ROOT / "README.md").read_text()))
    known = set(RUN_HERE) | set(NOT_RUN)
    assert commands - known == set(), "README commands that no test runs"
    assert known - commands == set(), "commands tested here that the README no longer shows"


@pytest.mark.parametrize("command", sorted(NOT_RUN))
def test_commands_that_cannot_run_here_say_why(command: str):
    pytest.skip(f"README command not run: {command!r}: {NOT_RUN[command]}")


def _ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]


def test_make_run_writes_a_complete_run(finished_run: Path):
    """``make run`` (the ``finished_run`` fixture) found the carpet and ran all five notebooks."""
    assert list(read_json(finished_run / "status.json")) == list(NOTEBOOKS)
    params = read_json(finished_run / "params.json")["notebooks"]
    assert Path(params["02_train_ae1"]["data_dir"]).parts[-2:] == ("data", "synthetic_carpet")


def test_own_data_check_run_kill_and_resume(readme_runs: Background, finished_run: Path):
    """check-data, a run on data/carpet killed while AE-2 trains, then ``--resume`` of it: the
    resumed run equals the uninterrupted ``make run`` on the same images."""
    flow = readme_runs.result(OWN_DATA)
    _ok(flow["checked"])
    assert '"fingerprint"' in flow["checked"].stdout  # the dataset summary, as JSON
    assert flow["killed"], "the run ended before it could be killed"
    assert flow["done_at_kill"] >= 2
    _ok(flow["resumed"])
    assert "02_train_ae1: completed earlier, reused" in flow["resumed"].stdout
    history = flow["run"] / "ae2" / "history.csv"
    rows = history.read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == list(range(int(TINY["ae2.epochs"])))
    reference = (finished_run / "ae2" / "history.csv").read_text().splitlines()[1:]
    losses, ref = (np.array([[float(v) for v in r.split(",")[1:]] for r in rs])
                   for rs in (rows, reference))
    # Other processes, so equal to rounding only (oneDNN splits reductions by thread).
    np.testing.assert_allclose(losses, ref, rtol=1e-5)


def test_preset_real_on_magnetic_tile(fresh_root: Path, readme_runs):
    if PRESET not in readme_runs.jobs:
        pytest.skip("../shared/datasets/magnetic_tile is absent on this machine")
    run = finished(readme_runs.result(PRESET), fresh_root)
    params = read_json(run / "params.json")["notebooks"]
    assert params["03_train_ae2"]["color_mode"] == "auto"  # detected: one channel below
    assert read_json(run / "ae2" / "scoring.json")["color_mode"] == "grayscale"
    assert params["03_train_ae2"]["gms_weight"] == 1.0  # the preset's, kept under TINY
    assert params["03_train_ae2"]["head"] == "segmentation"
    assert (run / "ae2" / "head" / "model.keras").is_file()
    stored = load_scores(run / "ae2" / "scores_test.npz")
    assert stored["error_maps"].shape == stored["maps"].shape  # both maps, for the gallery
    assert set(read_json(run / "data_summary.json")["modes"]) <= {"L", "I;16", "I"}
    assert '"test/blowhole": 4' in (run / "data_summary.json").read_text()  # the sample
    assert len(list((run / "figures").glob("01_*.png"))) == 5  # notebook 01's figures
    metrics = read_json(run / "metrics.json")
    assert 0.0 <= metrics["ae2"]["pixel_auroc"] <= 1.0


def test_rerun_with_other_settings(fresh_root: Path, readme_runs):
    run = finished(readme_runs.result(RERUN), fresh_root)
    params = read_json(run / "params.json")["notebooks"]
    assert params["02_train_ae1"]["variant"] == "vae"
    assert read_json(run / "ae1" / "scoring.json")["vae_samples"] > 0


def test_sweep_reuses_work_and_compares(fresh_root: Path, readme_runs: Background):
    """The README's sweep over AE-2's head: AE-1 trained once and shared, AE-2 with and
    without its segmentation head, each configuration until notebook 04 (``--until 04``: the
    comparison reads its metrics; the galleries of a sweep are drawn in test_cluster.py)."""
    result = readme_runs.result(SWEEP)
    _ok(result)
    sweep = fresh_root / "runs" / "s"
    assert "02_train_ae1: 1 execution(s) for 2 configuration(s)" in result.stdout
    assert "03_train_ae2: 2 execution(s) for 2 configuration(s)" in result.stdout
    status = read_json(sweep / "ae2-head=segmentation" / "status.json")
    assert status["02_train_ae1"].get("reused_from") == "ae2-head=none"
    table = pd.read_csv(sweep / "comparison.csv")
    assert sorted(table["ae2.head"].tolist()) == ["none", "segmentation"]
    assert table["ae1_image_auroc"].nunique() == 1  # AE-1 trained once, shared
    assert table["ae2_val_image_auroc"].notna().all()  # the column the best is chosen by
    assert (sweep / "comparison.ipynb").is_file() and (sweep / "comparison.png").is_file()
    learned = sweep / "ae2-head=segmentation" / "ae2"
    assert read_json(learned / "scoring.json")["head"] == "segmentation"
    assert (learned / "head" / "model.keras").is_file()
    assert read_json(sweep / "ae2-head=none" / "ae2" / "scoring.json")["head"] == "none"
    scores = np.load(learned / "scores_test.npz")
    assert np.isfinite(scores["scores"]).all() and scores["maps"].shape[1:] == (32, 32)
    assert scores["maps"].min() >= 0 and scores["maps"].max() <= 1  # probabilities
    assert "error_maps" not in np.load(sweep / "ae2-head=none" / "ae2" / "scores_test.npz")


def test_papermill_runs_one_notebook(fresh_root: Path):
    shortened = ("-p epochs 1 -p image_size 64 -p patch_size 32 -p stride 16 "
                 "-p patches_per_epoch 64 -p eval_size 32 -p batch_size 16 -p smooth_sigma 1.0 "
                 "-p head_epochs 1 -p head_patches_per_epoch 32")
    result = shell(f"{PAPERMILL} {shortened} --no-progress-bar", fresh_root)
    _ok(result)
    assert (fresh_root / "out.ipynb").is_file()
    assert (fresh_root / "runs" / "notebooks" / "ae2" / "scores_test.npz").is_file()


def test_score_new_images(fresh_root: Path, finished_run: Path):
    command = SCORE.replace("runs/<id>", f"runs/{finished_run.name}").replace(
        "path/to/images/", "data/carpet/test/hole/")
    result = shell(command, fresh_root)
    _ok(result)
    images = list((fresh_root / "data" / "carpet" / "test" / "hole").iterdir())
    lines = [line for line in result.stdout.splitlines() if ".png" in line]
    assert len(lines) == len(images)
    assert len(list((fresh_root / "heatmaps").glob("*_heatmap.png"))) == len(images)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_make_lab_serves_the_notebooks(fresh_root: Path, tmp_path: Path):
    port, token = _free_port(), uuid.uuid4().hex
    args = (f"--no-browser --port={port} --ip=127.0.0.1 --IdentityProvider.token={token} "
            "--ServerApp.allow_root=True")
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"), "PYTHONPATH": str(fresh_root)}
    process = subprocess.Popen(["bash", "-c", f'{MAKE_LAB} LAB_ARGS="{args}"'], cwd=fresh_root,
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    try:
        deadline, listing = time.monotonic() + 90, None
        while listing is None:
            request = urllib.request.Request(f"http://127.0.0.1:{port}/api/contents",
                                             headers={"Authorization": f"token {token}"})
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    listing = response.read().decode()
            except OSError:
                assert process.poll() is None, "make lab exited"
                assert time.monotonic() < deadline, "make lab did not answer within 90 s"
                time.sleep(0.5)
        for notebook in NOTEBOOKS:
            assert f"{notebook}.ipynb" in listing
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
