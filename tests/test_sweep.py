"""A sweep's comparison: validation columns beside test columns, the best chosen on validation.

The sweep folders here are written by hand (score files and metrics, no training), so the
validation and test rankings can be made to disagree on purpose.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from anomaly_utils.artifacts import write_json
from anomaly_utils.errors import ParameterError
from anomaly_utils.pipeline.sweep import best_configuration, comparison_table
from anomaly_utils.scoring.stored import CANDIDATES, ScoreResult, save_scores


def _validation(folder: Path, model: str, separation: float) -> None:
    """A pseudo-labelled validation score file: 4 normals, 4 anomalies ``separation`` apart."""
    rng = np.random.default_rng(0)
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    scores = (rng.normal(0, 1, 8) + separation * labels).astype(np.float32)
    masks = np.zeros((8, 4, 4), bool)
    masks[4:, :2, :2] = True
    maps = (rng.normal(0, 1, (8, 4, 4)) + separation * masks).astype(np.float32)
    folder.mkdir(parents=True)
    save_scores(folder / "scores_val_pseudo.npz", ScoreResult(scores, maps, np.zeros(8)),
                labels=labels, types=np.where(labels, "pseudo", "good"), masks=masks,
                has_mask=labels.astype(bool), paths=[], fingerprint="f", model=model)


def _sweep(tmp_path: Path, runs: dict[str, tuple[float, float]]) -> Path:
    """``{config: (validation separation, test image AUROC)}`` as a finished sweep folder."""
    configs = {}
    for name, (separation, test_auroc) in runs.items():
        for model in CANDIDATES:
            _validation(tmp_path / name / model, model, separation)
        write_json(tmp_path / name / "metrics.json",
                   {m: {"image_auroc": test_auroc, "pixel_auroc": 0.5, "aupro": 0.3,
                        "f1_max": 0.6} for m in CANDIDATES})
        configs[name] = {"ae2.epochs": name}
    write_json(tmp_path / "sweep.json", {"grid": {"ae2.epochs": list(runs)}, "fixed": {},
                                         "configs": configs})
    return tmp_path


def test_best_configuration_is_chosen_on_validation_where_test_disagrees(tmp_path: Path):
    # "5" separates validation anomalies well and does worse on test; "50" the other way.
    table = comparison_table(_sweep(tmp_path, {"5": (4.0, 0.60), "50": (0.2, 0.90)}))
    assert table.loc[table["config"] == "5", "ae2_val_image_auroc"].item() == 1.0
    assert table.loc[table["config"] == "50", "ae2_val_image_auroc"].item() < 1.0
    assert table["ae2_val_pixel_auroc"].notna().all()
    best = best_configuration(table)
    assert best["config"] == "5"  # by validation
    assert table.loc[table["ae2_image_auroc"].idxmax(), "config"] == "50"  # test would say 50


def test_best_configuration_refuses_a_test_column(tmp_path: Path):
    table = comparison_table(_sweep(tmp_path, {"5": (4.0, 0.6), "50": (0.2, 0.9)}))
    with pytest.raises(ParameterError, match="validation column"):
        best_configuration(table, by="ae2_image_auroc")


def test_a_sweep_until_04_draws_no_gallery_and_still_compares(tiny_data: Path, tmp_path: Path,
                                                              monkeypatch):
    """``sweep --until 04``: each configuration stops after the metrics notebook; the
    comparison is written from them (the notebooks are stand-ins writing what it reads)."""
    from anomaly_utils.pipeline import sweep as sweep_module
    from anomaly_utils.pipeline.runs import read_status

    executed = []

    def fake_execute(notebook, run_dir, parameters, progress=True):
        executed.append(notebook)
        (run_dir / f"{notebook}.ipynb").write_text("{}")  # what sharing copies
        if notebook == "04_threshold_selection":
            for model in CANDIDATES:
                _validation(run_dir / model, model, separation=float(parameters["percentile"]))
            write_json(run_dir / "metrics.json", {m: {"image_auroc": 0.7} for m in CANDIDATES})
        return 0.01

    for name in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS"):
        monkeypatch.setenv(name, "1")  # the sweep sets them in this process; restored after
    monkeypatch.setattr(sweep_module, "execute_notebook", fake_execute)
    monkeypatch.setattr(sweep_module, "write_comparison_notebook", lambda sweep_dir: None)
    sweep = sweep_module.run_sweep({"04.percentile": ["95", "99"]},
                                   {"data_dir": str(tiny_data)}, sweep_id="s",
                                   runs_dir=tmp_path, until="04", log=lambda m: None)
    assert "05_results_gallery" not in executed
    assert executed.count("04_threshold_selection") == 2  # one per configuration
    assert "05_results_gallery" not in read_status(sweep / "04-percentile=99")  # never started
    table = comparison_table(sweep).set_index("config")
    assert table.loc["04-percentile=99", "ae2_val_image_auroc"] == 1.0  # 99 apart: separated


def test_a_sweep_until_before_04_is_refused_before_any_folder(tmp_path: Path):
    from anomaly_utils.pipeline.sweep import run_sweep

    with pytest.raises(ParameterError, match="before 04_threshold_selection") as info:
        run_sweep({"ae2.epochs": ["1", "2"]}, {}, sweep_id="s", runs_dir=tmp_path, until="03")
    assert "--until 04" in info.value.fix
    assert not (tmp_path / "s").exists()


def test_sweeps_started_in_the_same_second_get_their_own_folders_and_a_bad_one_leaves_none(
        tmp_path: Path, tiny_data: Path, monkeypatch):
    from anomaly_utils.pipeline import run_ids
    from anomaly_utils.pipeline import sweep as sweep_module

    monkeypatch.setattr(run_ids, "new_run_id", lambda prefix="": f"{prefix}20261207-120000")
    first = sweep_module._make_sweep_dir(tmp_path, None)
    second = sweep_module._make_sweep_dir(tmp_path, None)
    assert (first.name, second.name) == ("sweep-20261207-120000", "sweep-20261207-120000-2")
    with pytest.raises(ParameterError, match="already exists"):
        sweep_module._make_sweep_dir(tmp_path, first.name)
    # The second configuration is refused after the first one's run folder was made.
    with pytest.raises(ParameterError, match="epochs"):
        sweep_module.run_sweep({"ae2.epochs": ["1", "-3"]}, {"data_dir": str(tiny_data)},
                               runs_dir=tmp_path, log=lambda m: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == [first.name, second.name]
