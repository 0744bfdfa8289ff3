"""``run --preset auto``: one run per preset, the candidate validation prefers among them."""

from __future__ import annotations

import json

import pytest

from anomaly_utils.errors import ParameterError
from anomaly_utils.pipeline import auto
from anomaly_utils.pipeline.parameters import preset_overrides


def _fake_runs(monkeypatch, scores: dict[str, tuple[str, float]]):
    """create_run and run_pipeline replaced: a created run has a params.json, and running it
    writes a metrics.json whose choice is ``scores[label]``; the calls are returned."""
    calls = []

    def create(overrides, run_dir, backend=None):
        calls.append({"create": run_dir.name, "overrides": overrides})
        run_dir.mkdir(parents=True)
        (run_dir / "params.json").write_text(json.dumps({"notebooks": {}}))

    def run(overrides, run_id=None, runs_dir="runs", resume=False, **kwargs):
        calls.append({"run_id": run_id, "resume": resume, "overrides": overrides})
        run_dir = runs_dir / run_id
        model, score = scores[run_id.rsplit("-", 1)[1]]
        (run_dir / "metrics.json").write_text(json.dumps(
            {"choice": {"model": model, "score": score, "by": "mean of validation ..."}}))
        return run_dir

    monkeypatch.setattr(auto, "create_run", create)
    monkeypatch.setattr(auto, "run_pipeline", run)
    return calls


def _runs(calls):
    return [c["run_id"] for c in calls if "run_id" in c]


def _created(calls):
    return {c["create"]: c["overrides"] for c in calls if "create" in c}


def test_each_preset_runs_and_the_best_validation_score_wins(tmp_path, monkeypatch):
    calls = _fake_runs(monkeypatch, {"defaults": ("floor", 0.729), "real": ("ae2", 0.886)})
    log = []
    chosen = auto.run_auto({"data_dir": "d", "seed": "1"}, run_id="x", runs_dir=tmp_path,
                           log=log.append)
    assert chosen == tmp_path / "x-real"
    assert _runs(calls) == ["x-defaults", "x-real"]
    # The preset's values under the user's: data_dir and -p pairs win.
    assert _created(calls) == {
        "x-defaults": {"data_dir": "d", "seed": "1"},
        "x-real": {**preset_overrides("real"), "data_dir": "d", "seed": "1"}}
    record = json.loads((tmp_path / "x-auto.json").read_text())
    assert record["chosen"] == {"preset": "real", "run": "x-real", "model": "ae2",
                                "score": 0.886, "by": "mean of validation ..."}
    assert "defaults: floor 0.729" in record["reason"] and record["reason"] in log[-1]
    # These fake runs stored no validation scores: said, not dropped silently.
    assert record["confidence"] is None
    assert "no bootstrap of the choice" in record["reason"] and "is missing" in record["reason"]


def test_the_auto_choice_says_how_sure_the_shared_validation_set_is(tmp_path, monkeypatch):
    import numpy as np

    from anomaly_utils.artifacts import save_npz

    _fake_runs(monkeypatch, {"defaults": ("floor", 0.70), "real": ("ae2", 0.90)})
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(20, int), np.ones(40, int)]
    masks = np.zeros((60, 16, 16), bool)
    masks[20:, 4:9, 4:9] = True
    for label, model, strength in (("defaults", "floor", 0.2), ("real", "ae2", 2.0)):
        maps = (rng.normal(0, 1, masks.shape) + strength * masks).astype(np.float16)
        (tmp_path / f"s-{label}" / model).mkdir(parents=True)
        (tmp_path / f"s-{label}" / "params.json").write_text(json.dumps({"notebooks": {}}))
        save_npz(tmp_path / f"s-{label}" / model / "scores_val_pseudo.npz",
                 scores=maps.reshape(60, -1).max(axis=1), labels=labels,
                 types=np.where(labels == 1, "stain", "good"), maps=maps, masks=masks,
                 has_mask=np.ones(60, bool), fingerprint=np.asarray("f"), model=np.asarray(model))
    auto.run_auto({"data_dir": "d"}, run_id="s", runs_dir=tmp_path, log=lambda m: 0)
    record = json.loads((tmp_path / "s-auto.json").read_text())
    confidence = record["confidence"]
    assert confidence["first"] == "real: ae2" and confidence["runner_up"] == "defaults: floor"
    assert confidence["first_share"]["real: ae2"] > 0.95 and confidence["lead"]["low"] > 0
    assert "real: ae2 first in" in record["reason"]


def test_rerunning_resumes_the_runs_that_exist_and_ties_go_to_the_defaults(tmp_path,
                                                                           monkeypatch):
    calls = _fake_runs(monkeypatch, {"defaults": ("ae2", 0.8), "real": ("ae2", 0.8)})
    (tmp_path / "y-defaults").mkdir()
    (tmp_path / "y-defaults" / "params.json").write_text(json.dumps({"notebooks": {}}))
    chosen = auto.run_auto({"data_dir": "d"}, run_id="y", runs_dir=tmp_path, log=lambda m: 0)
    assert list(_created(calls)) == ["y-real"]  # y-defaults is resumed, not made again
    assert _runs(calls) == ["y-defaults", "y-real"]
    assert all(c["resume"] and c["overrides"] == {} for c in calls if "run_id" in c)
    assert chosen == tmp_path / "y-defaults"


def test_auto_needs_a_data_dir_and_a_run_must_recommend(tmp_path, monkeypatch):
    with pytest.raises(ParameterError, match="--data-dir"):
        auto.run_auto({}, runs_dir=tmp_path)
    monkeypatch.setattr(auto, "create_run", lambda o, run_dir, backend=None: run_dir.mkdir())
    monkeypatch.setattr(auto, "run_pipeline",
                        lambda o, run_id=None, runs_dir="runs", **k: runs_dir / run_id)
    from anomaly_utils.errors import ArtifactError
    with pytest.raises(ArtifactError, match="metrics.json"):
        auto.run_auto({"data_dir": "d"}, run_id="z", runs_dir=tmp_path, log=lambda m: 0)


def test_own_data_runs_auto_and_the_synthetic_carpet_the_defaults(tmp_path):
    from anomaly_utils.pipeline.parameters import NOTEBOOKS, resolve_parameters

    carpet = resolve_parameters({})[NOTEBOOKS[0]]["data_dir"]
    assert auto.default_preset(None, None)[0] is None
    assert auto.default_preset(carpet, None)[0] is None
    preset, why = auto.default_preset(str(tmp_path), None)
    assert preset == "auto" and "--preset defaults" in why
    preset, why = auto.default_preset(str(tmp_path), "03")
    assert preset is None and "--until 03" in why
    assert preset_overrides("defaults") == {}


def test_the_run_command_says_which_preset_it_chose(tmp_path, monkeypatch, capsys):
    from anomaly_utils.pipeline import cli

    calls = _fake_runs(monkeypatch, {"defaults": ("floor", 0.7), "real": ("ae2", 0.6)})
    monkeypatch.setattr(cli, "summary", lambda run_dir: f"summary of {run_dir.name}")
    code = cli.main(["run", "--data-dir", str(tmp_path / "mine"), "--run-id", "m",
                     "--runs-dir", str(tmp_path / "runs"), "--quiet"])
    out = capsys.readouterr().out
    assert code == 0 and "preset: auto, the default for a dataset other than" in out
    assert _runs(calls) == ["m-defaults", "m-real"]
    assert "summary of m-defaults" in out  # the floor of the defaults' run won


def test_a_clash_with_the_real_preset_fails_before_any_run(tmp_path, monkeypatch):
    calls = _fake_runs(monkeypatch, {"defaults": ("floor", 0.7), "real": ("ae2", 0.6)})
    # A 128 px patch fits the defaults' 128 px images, not the real preset's 64 px ones.
    with pytest.raises(ParameterError, match="with --preset real.*'patch_size' \\(128\\)"):
        auto.run_auto({"data_dir": "d", "ae2.patch_size": "128"}, run_id="c",
                      runs_dir=tmp_path, log=lambda m: 0)
    assert calls == [] and not any(tmp_path.iterdir())


def test_the_quality_benchmark_reports_both_runs_of_an_auto_command(tmp_path):
    from benchmarks.bench_quality import DevelopmentSet, command_rows

    for label, model in (("defaults", "floor"), ("real", "ae2")):
        (tmp_path / f"q-{label}").mkdir()
        (tmp_path / f"q-{label}" / "metrics.json").write_text(json.dumps({
            "choice": {"model": model, "scores": {"floor": 0.7, "ae2": 0.8},
                       "confidence": {"first_share": {"floor": 0.25, "ae2": 0.75}}},
            "floor": {"image_auroc": 0.6, "validation": {"image_auroc": 0.7}},
            "ae2": {"image_auroc": 0.9, "validation": {"image_auroc": 0.8}}}))
    (tmp_path / "q-auto.json").write_text(json.dumps({
        "runs": {"defaults": {"run": "q-defaults"}, "real": {"run": "q-real"}},
        "chosen": {"preset": "real"}}))
    rows = command_rows(DevelopmentSet("s", tmp_path), tmp_path, "q", 10.0, 1.0)
    assert [(r["candidate"], r["chosen"]) for r in rows] == [
        ("floor (defaults)", False), ("ae2 (defaults)", False),
        ("floor (real)", False), ("ae2 (real)", True)]
    assert [r["val_first_in"] for r in rows] == [0.25, 0.75, 0.25, 0.75]
    from benchmarks.bench_quality import markdown

    table = markdown(rows, {"s": "cmd"})
    assert "whole images" not in table and table.splitlines()[1].count("|") == 14
    from benchmarks.bench_quality import rows_of

    [parts] = rows_of(DevelopmentSet("s", tmp_path), {"ae2": {
        "image_auroc": 0.9, "whole_images": {"image_auroc": 0.95}}}, 10.0, 1.0)
    assert parts["test_whole_image_auroc"] == 0.95 and rows[3]["test_whole_image_auroc"] is None
    rows[3] = {**rows[3], "test_whole_image_auroc": 0.95}  # a run on parts
    table = markdown(rows, {"s": "cmd"})
    assert "test image AUROC, whole images | s | GiB |" in table
    assert table.splitlines()[5].split("|")[12].strip() == "0.950"


def test_auto_runs_started_in_the_same_second_get_their_own_runs(tmp_path, monkeypatch):
    """Without --run-id the first preset's run claims the base id, so a second auto run
    started in the same second takes ``-2`` instead of resuming the first's runs."""
    from anomaly_utils.pipeline import run_ids

    monkeypatch.setattr(run_ids, "new_run_id", lambda prefix="": "20261207-120000")
    calls = _fake_runs(monkeypatch, {"defaults": ("floor", 0.7), "real": ("ae2", 0.6)})
    auto.run_auto({"data_dir": "a"}, runs_dir=tmp_path, log=lambda m: 0)
    auto.run_auto({"data_dir": "b"}, runs_dir=tmp_path, log=lambda m: 0)
    assert {name: o["data_dir"] for name, o in _created(calls).items()} == {
        "20261207-120000-defaults": "a", "20261207-120000-real": "a",
        "20261207-120000-2-defaults": "b", "20261207-120000-2-real": "b"}
    assert (tmp_path / "20261207-120000-2-auto.json").is_file()
