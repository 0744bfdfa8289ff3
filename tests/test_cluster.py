"""Sweeps on a Dask cluster: the same sharing as the waves, faults retried or recorded.

The first tests run the scheduling on an in-process cluster with the notebook execution
replaced by a stand-in that writes the files a run's comparison reads (seconds). The last one
runs a real tiny sweep on two worker processes and kills the one that is training AE-2; its
dataset has no defect masks, so the same runs also show that ``allow_missing_masks`` reaches
every notebook (a whole chain costs about a minute and a half of CPU, so one run checks both).
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from anomaly_utils.artifacts import read_json, write_json
from anomaly_utils.errors import LabError, ParameterError
from anomaly_utils.pipeline import cluster as cluster_module
from anomaly_utils.pipeline.cluster import parse_cluster
from anomaly_utils.pipeline.parameters import NOTEBOOKS, declared_parameters
from anomaly_utils.pipeline.sweep import run_sweep
from anomaly_utils.scoring.stored import CANDIDATES, ScoreResult, save_scores
from tests.conftest import TINY

distributed = pytest.importorskip("distributed", reason="dask.distributed is not installed")


def test_parse_cluster_reads_both_forms_and_refuses_others():
    assert parse_cluster("local:3") == ("local", 3)
    assert parse_cluster("tcp://10.0.0.5:8786") == ("remote", "tcp://10.0.0.5:8786")
    for bad in ("local:0", "local:x", "local", "10.0.0.5:8786", ""):
        with pytest.raises(ParameterError, match="cluster") as info:
            parse_cluster(bad)
        assert "local:N" in info.value.fix


def test_malformed_cluster_address_fails_before_any_folder(tmp_path: Path):
    with pytest.raises(ParameterError, match="local:N"):
        run_sweep({"ae2.epochs": ["1", "2"]}, {}, sweep_id="s", runs_dir=tmp_path,
                  cluster="local:0")
    assert not (tmp_path / "s").exists()


def _fake_outputs(notebook: str, run_dir: Path, parameters: dict) -> None:
    """What each notebook writes that the comparison reads, scores apart by AE-2's epochs."""
    models = {"01_data_exploration": "floor", "02_train_ae1": "ae1", "03_train_ae2": "ae2",
              "04_threshold_selection": "blend"}
    if notebook in models:
        model = models[notebook]
        rng = np.random.default_rng(parameters.get("epochs", 0))
        labels = np.array([0, 0, 0, 1, 1, 1])
        masks = np.zeros((6, 4, 4), bool)
        masks[3:, :2] = True
        maps = (rng.normal(0, 1, (6, 4, 4)) + 2 * masks).astype(np.float32)
        (run_dir / model).mkdir(exist_ok=True)
        save_scores(run_dir / model / "scores_val_pseudo.npz",
                    ScoreResult(maps.mean((1, 2)), maps, np.zeros(6)), labels=labels,
                    types=np.where(labels, "pseudo", "good"), masks=masks,
                    has_mask=labels.astype(bool), paths=[], fingerprint="f", model=model)
    if notebook == "04_threshold_selection":
        write_json(run_dir / "metrics.json", {m: {"image_auroc": 0.7, "pixel_auroc": 0.6,
                                                  "aupro": 0.3, "f1_max": 0.5}
                                              for m in CANDIDATES})
    (run_dir / f"{notebook}.ipynb").write_text("{}")


def test_cluster_sweep_shares_work_retries_transient_errors_and_fails_bad_configs_once(
        tiny_data: Path, tmp_path: Path, monkeypatch):
    for name in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS"):
        monkeypatch.setenv(name, "1")  # the tasks set them in this process; restored after
    calls: Counter = Counter()
    lock = threading.Lock()

    class CellError(Exception):
        def __init__(self, ename):
            super().__init__(ename)
            self.ename = ename

    def fake_execute(notebook, run_dir, parameters, progress=True):
        config = run_dir.name
        with lock:
            calls[notebook, config] += 1
            attempt = calls[notebook, config]
        if notebook == "01_data_exploration" and attempt == 1:  # a passing file-system fault
            raise LabError("notebook 01 failed: OSError: stale handle") from CellError("OSError")
        if notebook == "03_train_ae2" and parameters["epochs"] == 2:
            raise LabError("notebook 03_train_ae2 failed in cell [7]: ValueError: bad epochs") \
                from CellError("ValueError")
        _fake_outputs(notebook, run_dir, parameters)
        return 0.01

    monkeypatch.setattr(cluster_module, "execute_notebook", fake_execute)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as local, \
            distributed.Client(local) as client:
        sweep = run_sweep({"ae2.epochs": ["1", "2"]}, {"data_dir": str(tiny_data)},
                          sweep_id="s", runs_dir=tmp_path, cluster=client, log=lambda m: None)
    good, bad = "ae2-epochs=1", "ae2-epochs=2"
    # AE-1 and the exploration depend on no swept value: one execution each, shared.
    assert calls["02_train_ae1", good] + calls["02_train_ae1", bad] == 1
    assert calls["01_data_exploration", good] + calls["01_data_exploration", bad] == 2  # retried
    assert calls["03_train_ae2", good] == 1 and calls["03_train_ae2", bad] == 1  # failed once
    assert calls["04_threshold_selection", bad] == 0 and calls["05_results_gallery", bad] == 0
    status = read_json(sweep / bad / "status.json")
    assert status["03_train_ae2"]["state"] == "failed"
    assert "bad epochs" in status["03_train_ae2"]["error"]
    assert status["05_results_gallery"]["error"].startswith("not run:")
    shared = [read_json(sweep / c / "status.json")["02_train_ae1"] for c in (good, bad)]
    assert sum("reused_from" in entry for entry in shared) == 1
    assert all(entry["state"] == "completed" for entry in shared)
    table = pd.read_csv(sweep / "comparison.csv")
    row = table.set_index("config")
    assert "bad epochs" in row.loc[bad, "error"] and pd.isna(row.loc[good, "error"])
    assert pd.isna(row.loc[bad, "ae2_val_image_auroc"])
    assert row.loc[good, "ae2_val_image_auroc"] > 0.5
    assert (sweep / "comparison.ipynb").is_file()


def _executing(client) -> dict[str, list[str]]:
    """Worker address -> the keys of the tasks it is executing right now."""
    return client.run(lambda dask_worker: [str(ts.key) for ts in dask_worker.state.executing])


@pytest.mark.chain
@pytest.mark.slow
def test_two_worker_sweep_survives_a_killed_worker(tiny_data: Path, tmp_path: Path):
    """Sweeping a gallery parameter shares notebooks 01-04; the worker training AE-2 is
    killed after two of its six epochs. The task runs again on a worker, resumes from the
    run's backup, and both configurations and the comparison come out.

    The dataset is image-labelled (defect images, no masks, as industry often has), run with
    ``-p allow_missing_masks true``: every notebook runs, image metrics are reported, pixel
    metrics are null and the gallery is drawn."""
    image_only = tmp_path / "image_only"
    shutil.copytree(tiny_data, image_only, ignore=shutil.ignore_patterns("ground_truth"))
    # Six AE-2 epochs, so that the kill after two of them leaves training to resume.
    fixed = {**TINY, "ae2.epochs": "6", "data_dir": str(image_only),
             "allow_missing_masks": "true"}
    if "head" in declared_parameters("03_train_ae2"):
        fixed["ae2.head"] = "none"  # the scheduling is under test here, not AE-2's head
    grid = {"05.per_defect": ["1", "2"]}
    outcome: dict = {}
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as local, \
            distributed.Client(local) as client:
        sweep_dir = tmp_path / "s"

        def sweep():
            try:
                outcome["dir"] = run_sweep(grid, fixed, sweep_id="s", runs_dir=tmp_path,
                                           cluster=client, log=lambda m: None)
            except BaseException as error:  # noqa: BLE001 - reported by the assertion below
                outcome["error"] = error

        thread = threading.Thread(target=sweep)
        thread.start()
        killed_at, deadline = None, time.monotonic() + 600
        while killed_at is None and thread.is_alive() and time.monotonic() < deadline:
            histories = list(sweep_dir.glob("*/ae2/history.csv"))
            if histories and len(histories[0].read_text().splitlines()) >= 3:  # 2 epochs done
                pids = client.run(os.getpid)
                for address, keys in _executing(client).items():
                    if any(k.endswith("/03_train_ae2") for k in keys):
                        killed_at = len(histories[0].read_text().splitlines()) - 1
                        os.kill(pids[address], signal.SIGKILL)
            time.sleep(0.1)
        thread.join(timeout=900)
    assert "error" not in outcome, outcome.get("error")
    assert killed_at is not None, "AE-2 finished before the test could kill its worker"
    table = pd.read_csv(outcome["dir"] / "comparison.csv")
    assert sorted(table["config"]) == ["05-per_defect=1", "05-per_defect=2"]
    assert "error" not in table and table["ae2_image_auroc"].notna().all()
    leader = next(c for c in table["config"] if "reused_from" not in
                  read_json(sweep_dir / c / "status.json")["03_train_ae2"])
    entry = read_json(sweep_dir / leader / "status.json")["03_train_ae2"]
    if killed_at < int(fixed["ae2.epochs"]):  # killed while training: resumed from its backup
        assert entry.get("resumed_from_backup", {}).get("ae2", 0) >= 1, entry
    history = pd.read_csv(sweep_dir / leader / "ae2" / "history.csv")
    assert list(history["epoch"]) == list(range(int(fixed["ae2.epochs"])))  # each epoch once
    for config in table["config"]:
        assert (sweep_dir / config / "metrics.json").is_file()
        assert_image_only_run(sweep_dir / config)


def assert_image_only_run(run: Path) -> None:
    """A finished run on the image-labelled dataset, made with ``allow_missing_masks``."""
    assert all(v["state"] == "completed" for v in read_json(run / "status.json").values())
    params = read_json(run / "params.json")["notebooks"]
    for notebook in NOTEBOOKS[:3]:
        assert params[notebook]["allow_missing_masks"] is True, notebook
    metrics = read_json(run / "metrics.json")
    for model in ("ae1", "ae2"):
        assert 0.0 <= metrics[model]["image_auroc"] <= 1.0
        assert metrics[model]["pixel_auroc"] is None and metrics[model]["aupro"] is None
    assert read_json(run / "data_summary.json")["masks_missing"] > 0
    assert list((run / "figures").glob("05_*.png"))
