"""``run --preset auto``: one run per preset, the candidate validation prefers among them."""

from __future__ import annotations

import json

import pytest

from anomaly_utils.errors import ParameterError
from anomaly_utils.pipeline import auto
from anomaly_utils.pipeline.parameters import preset_overrides


def _fake_runs(monkeypatch, scores: dict[str, tuple[str, float]]):
    """run_pipeline replaced: each run writes params.json and a metrics.json whose choice
    is ``scores[label]``; the calls are returned for inspection."""
    calls = []

    def fake(overrides, run_id=None, runs_dir="runs", resume=False, **kwargs):
        calls.append({"overrides": overrides, "run_id": run_id, "resume": resume})
        run_dir = runs_dir / run_id
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "params.json").write_text("{}")
        model, score = scores[run_id.rsplit("-", 1)[1]]
        (run_dir / "metrics.json").write_text(json.dumps(
            {"choice": {"model": model, "score": score, "by": "mean of validation ..."}}))
        return run_dir

    monkeypatch.setattr(auto, "run_pipeline", fake)
    return calls


def test_each_preset_runs_and_the_best_validation_score_wins(tmp_path, monkeypatch):
    calls = _fake_runs(monkeypatch, {"defaults": ("floor", 0.729), "real": ("ae2", 0.886)})
    log = []
    chosen = auto.run_auto({"data_dir": "d", "seed": "1"}, run_id="x", runs_dir=tmp_path,
                           log=log.append)
    assert chosen == tmp_path / "x-real"
    assert [c["run_id"] for c in calls] == ["x-defaults", "x-real"]
    # The preset's values under the user's: data_dir and -p pairs win.
    assert calls[0]["overrides"] == {"data_dir": "d", "seed": "1"}
    assert calls[1]["overrides"] == {**preset_overrides("real"), "data_dir": "d", "seed": "1"}
    record = json.loads((tmp_path / "x-auto.json").read_text())
    assert record["chosen"] == {"preset": "real", "run": "x-real", "model": "ae2",
                                "score": 0.886, "by": "mean of validation ..."}
    assert "defaults: floor 0.729" in record["reason"] and record["reason"] in log[-1]


def test_rerunning_resumes_the_runs_that_exist_and_ties_go_to_the_defaults(tmp_path,
                                                                           monkeypatch):
    calls = _fake_runs(monkeypatch, {"defaults": ("ae2", 0.8), "real": ("ae2", 0.8)})
    (tmp_path / "y-defaults").mkdir()
    (tmp_path / "y-defaults" / "params.json").write_text("{}")
    chosen = auto.run_auto({"data_dir": "d"}, run_id="y", runs_dir=tmp_path, log=lambda m: 0)
    assert [c["resume"] for c in calls] == [True, False] and calls[0]["overrides"] == {}
    assert chosen == tmp_path / "y-defaults"


def test_auto_needs_a_data_dir_and_a_run_must_recommend(tmp_path, monkeypatch):
    with pytest.raises(ParameterError, match="--data-dir"):
        auto.run_auto({}, runs_dir=tmp_path)
    monkeypatch.setattr(auto, "run_pipeline",
                        lambda o, run_id=None, runs_dir="runs", **k: runs_dir)
    from anomaly_utils.errors import ArtifactError
    with pytest.raises(ArtifactError, match="metrics.json"):
        auto.run_auto({"data_dir": "d"}, run_id="z", runs_dir=tmp_path, log=lambda m: 0)
