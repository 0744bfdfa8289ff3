"""Headless runs end to end on a tiny synthetic carpet: run, failure, resume, score (the
README's own commands, sweep and kill-and-resume among them, are in test_readme_commands.py).

These are the slowest tests of the suite (each full chain on tiny data takes about a minute
on 2 cores), so they share one finished run (``finished_run`` in conftest.py) and copy it
where they need a run in another state.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from anomaly_utils import process_environment
from anomaly_utils.artifacts import read_json, write_json
from anomaly_utils.errors import LabError
from anomaly_utils.pipeline import provenance
from anomaly_utils.pipeline.parameters import NOTEBOOKS, declared_parameters
from anomaly_utils.pipeline.runs import run_pipeline, summary
from tests.conftest import TINY, cli, clone_run, tiny_args

ROOT = Path(__file__).resolve().parent.parent


def test_every_notebook_declares_its_parameters_cleanly():
    for notebook in NOTEBOOKS:
        path = ROOT / "notebooks" / f"{notebook}.ipynb"
        cells = json.loads(path.read_text())["cells"]
        tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(tagged) == 1, f"{notebook} needs exactly one cell tagged 'parameters'"
        assigned = [line.split("=")[0].strip() for line in "".join(tagged[0]["source"])
                    .splitlines() if "=" in line and not line.lstrip().startswith("#")]
        assert list(declared_parameters(notebook)) == assigned, notebook


def test_ipykernel_kernels_keep_c_level_output_out_of_the_notebook():
    """TensorFlow's I0000/E0000 lines go to the run's logs, not into the executed notebooks."""
    command = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    assert provenance.logged_kernel_command(command) == [
        *command, "--IPKernelApp.capture_fd_output=False"]
    other = ["xpython", "-f", "{connection_file}"]
    assert provenance.logged_kernel_command(other) == other


def test_a_kernels_c_level_output_goes_to_the_log_and_python_output_to_the_notebook(
        tmp_path, monkeypatch):
    """What a library writes to file descriptor 2 (as TensorFlow's C++ logging does) lands in
    the run's log, not the cell; a Python print still reaches the cell."""
    import nbclient
    import nbformat

    # ipykernel does not capture file descriptors in a process that pytest runs (it looks for
    # this variable); the kernels of a run are not such processes.
    monkeypatch.delenv("PYTEST_CURRENT_TEST", raising=False)

    log = tmp_path / "logs" / "kernel.stderr.log"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import os\nos.write(2, b'E0000 00:00:1.0 from C\\n')\nprint('from Python')")])
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                            kernel_manager_class=provenance.kernel_manager_class(),
                            config=provenance.kernel_config(log)).execute()
    printed = "".join("".join(output.get("text", "")) for output in nb.cells[0].outputs)
    assert "from Python" in printed
    assert "E0000" not in printed, printed
    assert "E0000 00:00:1.0 from C" in log.read_text()


def test_a_run_writes_every_artifact(finished_run: Path):
    for name in ("params.json", "env.json", "metrics.json", "thresholds.json",
                 "data_summary.json", "status.json", *[f"{nb}.ipynb" for nb in NOTEBOOKS]):
        assert (finished_run / name).is_file(), name
    for model in ("ae1", "ae2"):
        for name in ("model.keras", "config.json", "history.csv", "scoring.json",
                     "scores_val.npz", "scores_test.npz"):
            assert (finished_run / model / name).is_file(), f"{model}/{name}"
        assert not (finished_run / model / "backup").exists()
    params = read_json(finished_run / "params.json")["notebooks"]
    assert params["02_train_ae1"]["image_size"] == 32
    assert params["02_train_ae1"]["epochs"] == int(TINY["epochs"])
    assert params["03_train_ae2"]["epochs"] == int(TINY["ae2.epochs"])
    assert params["02_train_ae1"]["learning_rate"] == 0.001  # defaults recorded too
    env = read_json(finished_run / "env.json")
    assert env["data_fingerprint"] and "keras" in env["packages"]
    assert isinstance(env["gpus"], list)  # asked in a child process; None would mean it failed
    # make exports the lab's process defaults; the record says what the kernels got
    assert env["kernel_environment"] == {name: os.environ.get(name, value) for name, value
                                         in process_environment.DEFAULTS.items()}
    metrics = read_json(finished_run / "metrics.json")
    for model in ("ae1", "ae2"):
        for key in ("image_auroc", "pixel_auroc", "aupro", "f1_max", "image_threshold",
                    "pixel_threshold", "per_defect"):
            assert key in metrics[model], (model, key)
        assert 0.0 <= metrics[model]["image_auroc"] <= 1.0
    assert metrics["dataset"]["fingerprint"] == env["data_fingerprint"]
    assert list(read_json(finished_run / "status.json")) == list(NOTEBOOKS)
    assert "ae1" in summary(finished_run)
    # How sure validation is of the choice: every resample puts one candidate first.
    confidence, hedged = metrics["choice"]["confidence"], metrics["choice"]["hedged"]
    assert confidence["first"] == (hedged["over"] if hedged else metrics["choice"]["model"])
    assert sum(confidence["first_share"].values()) == pytest.approx(1.0)
    assert "1st in" in summary(finished_run) and "bootstrap resamples" in summary(finished_run)


def test_a_run_never_overwrites_another(finished_run: Path, tiny_data: Path):
    before = (finished_run / "metrics.json").read_bytes()
    result = cli("run", *tiny_args(tiny_data), "--preset", "defaults", "--runs-dir",
                 str(finished_run.parent), "--run-id", finished_run.name)
    assert result.returncode == 2 and "already exists" in result.stderr
    assert (finished_run / "metrics.json").read_bytes() == before


def test_a_later_auto_run_takes_the_notebooks_its_preset_leaves_unchanged(tmp_path: Path,
                                                                           finished_run: Path):
    from anomaly_utils.pipeline.runs import create_run
    from anomaly_utils.pipeline.sharing import share_identical_notebooks

    params = read_json(finished_run / "params.json")
    overrides = {k: v for k, v in params["overrides"].items() if k != "run_dir"}
    overrides["data_dir"] = params["notebooks"][NOTEBOOKS[0]]["data_dir"]  # as resolved there
    target = tmp_path / "ae2-changed"
    create_run({**overrides, "ae2.ssim_weight": 0.5}, target)
    shared = share_identical_notebooks(finished_run, target)
    assert shared == list(NOTEBOOKS[:2])  # 03 differs, and 04-05 read it
    status = read_json(target / "status.json")
    assert {nb: (s["state"], s["reused_from"]) for nb, s in status.items()} == {
        nb: ("completed", finished_run.name) for nb in shared}
    assert (target / "ae1" / "model.keras").read_bytes() == (
        finished_run / "ae1" / "model.keras").read_bytes()
    assert not (target / "ae2").exists()
    other = tmp_path / "seed-changed"
    create_run({**overrides, "seed": 1}, other)
    assert share_identical_notebooks(finished_run, other) == []


def test_resume_warns_about_and_records_a_changed_environment(tmp_path: Path,
                                                              finished_run: Path):
    run = clone_run(finished_run, tmp_path / "r")
    log: list[str] = []
    run_pipeline({}, run_id="r", runs_dir=tmp_path, resume=True, progress=False, log=log.append)
    assert not any("warning" in line for line in log)            # same machine, same data
    assert "resumes" not in read_json(run / "env.json")
    env = read_json(run / "env.json")
    numpy_now = env["packages"]["numpy"]
    env["packages"]["numpy"] = "0.0.1"
    env["data_fingerprint"] = "0123456789abcdef"
    write_json(run / "env.json", env)
    for attempt in (1, 2):
        log.clear()
        run_pipeline({}, run_id="r", runs_dir=tmp_path, resume=True, progress=False,
                     log=log.append)
        warning = next(line for line in log if line.startswith("warning"))
        assert f"numpy 0.0.1 -> {numpy_now}" in warning
        assert "data_fingerprint 0123456789abcdef -> " in warning
        resumes = read_json(run / "env.json")["resumes"]
        assert len(resumes) == attempt                            # every resume is recorded
        assert resumes[-1]["differences"]["packages"] == {
            "numpy": {"then": "0.0.1", "now": numpy_now}}
        assert set(resumes[-1]["differences"]) == {"packages", "data_fingerprint"}


def _fail_then_fix(finished_run: Path, folder: Path) -> dict:
    """A copy of the reference run with 05 to do, whose data lost a test image: the resume
    fails in 05; with the image back, a second resume reruns only 05. Runs in the background
    (``after_run``); returns what the test checks."""
    original = {p: p.stat().st_mtime_ns for p in finished_run.rglob("*")}
    run = clone_run(finished_run, folder / "r", unfinished=(NOTEBOOKS[4],))
    # A private copy of the run's data: other runs read the original at the same time.
    params = read_json(run / "params.json")
    data_dir = shutil.copytree(params["notebooks"][NOTEBOOKS[4]]["data_dir"], folder / "data")
    for notebook_params in params["notebooks"].values():
        if "data_dir" in notebook_params:
            notebook_params["data_dir"] = str(data_dir)
    write_json(run / "params.json", params)
    victim = next((data_dir / "test" / "color").iterdir())
    saved = victim.read_bytes()
    victim.unlink()
    try:
        run_pipeline({}, run_id="r", runs_dir=folder, resume=True, progress=False,
                     log=lambda *_: None)
        error = None
    except LabError as exc:
        error = exc
    finally:
        victim.write_bytes(saved)
    failed = {"error": error, "partial": (run / "05_results_gallery.ipynb").is_file(),
              "state": read_json(run / "status.json")["05_results_gallery"]["state"],
              "mtimes": {nb: (run / f"{nb}.ipynb").stat().st_mtime_ns for nb in NOTEBOOKS[:4]}}
    log: list[str] = []
    run_pipeline({}, run_id="r", runs_dir=folder, resume=True, progress=False, log=log.append)
    return {"failed": failed, "log": log,
            "mtimes": {nb: (run / f"{nb}.ipynb").stat().st_mtime_ns for nb in NOTEBOOKS[:4]},
            "state": read_json(run / "status.json")["05_results_gallery"]["state"],
            "reference_untouched": {p: p.stat().st_mtime_ns
                                    for p in finished_run.rglob("*")} == original}


@pytest.mark.after_run(prepare=_fail_then_fix)
def test_failing_cell_names_notebook_and_cell_then_resume_reruns_only_the_rest(prepared: dict):
    """Notebook 05 fails (a test image vanished); after the fix, --resume reruns only 05.

    The run is a copy of the reference run in another folder, so this also checks that a
    resumed run writes where it is now, not where it was made.
    """
    failed = prepared["failed"]
    assert isinstance(failed["error"], LabError), "the run did not fail without its image"
    message = str(failed["error"])
    assert "05_results_gallery failed in cell [" in message and "--resume r" in message
    assert "test image(s) of this run are gone" in message
    assert failed["partial"]  # the partially executed notebook is kept
    assert failed["state"] == "failed"
    assert sum("completed earlier, reused" in line for line in prepared["log"]) == 4
    assert prepared["mtimes"] == failed["mtimes"]
    assert prepared["state"] == "completed"
    assert prepared["reference_untouched"]


def _ensemble_run(finished_run: Path, folder: Path) -> Path:
    """A copy of the reference run whose notebook 03 trains an ensemble of two, one epoch,
    each member with its own segmentation head (one epoch of 64 crops)."""
    run = clone_run(finished_run, folder / "e", unfinished=tuple(NOTEBOOKS[2:]))
    params = read_json(run / "params.json")
    params["notebooks"]["03_train_ae2"].update(ensemble_size=2, epochs=1, head="segmentation",
                                               head_epochs=1, head_patches_per_epoch=64)
    write_json(run / "params.json", params)
    run_pipeline({}, run_id="e", runs_dir=folder, resume=True, until="03", progress=False,
                 log=lambda *_: None)
    return run


@pytest.mark.after_run(prepare=_ensemble_run)
def test_an_ensemble_run_trains_saves_and_scores_every_member(prepared: Path):
    """Notebook 03 with ``ensemble_size`` 2: member 1 is trained with seed + 1 into
    ``ae2/member1/`` with its own head in ``ae2/member1/head/``; the error maps are those of
    the members' mean reconstruction, the stored maps the mean of the two heads' maps."""
    from anomaly_utils.data.loading import load_dataset
    from anomaly_utils.scoring.maps import anomaly_map
    from anomaly_utils.scoring.scorer import Scorer, ScoringConfig
    from anomaly_utils.scoring.stored import load_scores

    run = prepared
    ae2 = read_json(run / "params.json")["notebooks"]["03_train_ae2"]
    assert (run / "ae2" / "member1" / "model.keras").is_file()
    assert (run / "ae2" / "member1" / "head" / "model.keras").is_file()
    assert read_json(run / "ae2" / "member1" / "config.json")["training"]["seed"] == 1
    ensemble = Scorer.load(run, "ae2")
    assert ensemble.config.ensemble_size == 2 and len(ensemble.members) == 2
    assert len(ensemble.heads) == 2
    ds = load_dataset(ae2["data_dir"], image_size=ae2["image_size"],
                      color_mode=ae2["color_mode"], val_fraction=ae2["val_fraction"],
                      seed=ae2["seed"], mask_size=ae2["eval_size"])
    single = ScoringConfig(**{**vars(ensemble.config), "ensemble_size": 1, "normalize": False,
                              "head": "none"})
    recons = [Scorer(m, single).reconstruct(ds.test_images) for m in ensemble.members]
    assert not np.allclose(recons[0], recons[1])                 # two different models
    unnormalised = Scorer(ensemble.members, ScoringConfig(**{**vars(single), "ensemble_size": 2}))
    expected = anomaly_map(ds.test_images / np.float32(255), np.mean(recons, axis=0),
                           kind=single.map_kind, smooth_sigma=single.smooth_sigma)
    np.testing.assert_allclose(unnormalised.reconstruct_with_maps(ds.test_images)[1], expected,
                               rtol=1e-5, atol=1e-6)
    stored = load_scores(run / "ae2" / "scores_test.npz")
    scored = ensemble.score(ds.test_images)
    np.testing.assert_allclose(stored["maps"], scored.maps, rtol=1e-2, atol=1e-2)  # float16
    heads = [Scorer(m, ScoringConfig(**{**vars(ensemble.config), "ensemble_size": 1}), head=h)
             for m, h in zip(ensemble.members, ensemble.heads, strict=True)]
    np.testing.assert_allclose(scored.maps, np.mean([h.score(ds.test_images).maps
                                                     for h in heads], axis=0),
                               rtol=1e-5, atol=1e-6)


def _score_new_images(finished_run: Path, folder: Path) -> dict:
    """``score`` with the reference run's AE-2 on a folder of its data and one more image."""
    data = Path(read_json(finished_run / "params.json")["notebooks"]["05_results_gallery"]
                ["data_dir"])
    images = data / "test" / "hole"
    result = cli("score", "--run", str(finished_run), "--model", "ae2", str(images),
                 str(data / "test" / "good" / "000.png"), "--out", str(folder / "out"))
    return {"result": result, "images": images, "out": folder / "out"}


@pytest.mark.after_run(prepare=_score_new_images)
def test_score_command_prints_verdicts_and_writes_overlays(prepared: dict):
    result = prepared["result"]
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [line for line in result.stdout.splitlines() if ".png" in line]
    assert len(lines) == len(list(prepared["images"].iterdir())) + 1
    assert all(("ANOMALOUS" in line) or ("normal" in line) for line in lines)
    assert len(list(prepared["out"].glob("*_heatmap.png"))) == len(lines)


def _score_with_the_recommended_the_floor_and_the_blend(finished_run: Path,
                                                        folder: Path) -> dict:
    """``score`` without ``--model`` (the run's recommended candidate), with the floor and
    with the blend, on the reference run's test/hole images."""
    data = Path(read_json(finished_run / "params.json")["notebooks"]["05_results_gallery"]
                ["data_dir"])
    images = data / "test" / "hole"
    return {"images": images, "out": folder / "floor",
            "default": cli("score", "--run", str(finished_run), str(images)),
            "floor": cli("score", "--run", str(finished_run), "--model", "floor", str(images),
                         "--out", str(folder / "floor")),
            "blend": cli("score", "--run", str(finished_run), "--model", "blend", str(images))}


def _printed_scores(stdout: str) -> dict[str, float]:
    """``score``'s lines as {file name: score}."""
    lines = [line.split() for line in stdout.splitlines() if line.strip().endswith(".png")]
    return {Path(parts[-1]).name: float(parts[0]) for parts in lines}


@pytest.mark.after_run(prepare=_score_with_the_recommended_the_floor_and_the_blend)
def test_score_serves_every_candidate_and_by_default_the_recommended_one(prepared: dict,
                                                                          finished_run: Path):
    from anomaly_utils.scoring.stored import load_scores

    chosen = read_json(finished_run / "metrics.json")["choice"]["model"]
    for key in ("default", "floor", "blend"):
        assert prepared[key].returncode == 0, prepared[key].stderr[-3000:]
    default = prepared["default"]
    assert f"{chosen} (recommended on validation) of run" in default.stdout
    assert "scored on numpy)" in prepared["floor"].stdout  # the floor loads no Keras
    assert "scored on tensorflow)" in prepared["blend"].stdout  # AE-2 is one of its parts
    assert default.stdout.count(".png") == len(list(prepared["images"].iterdir()))
    # The floor and the blend score new images as notebooks 01 and 04 scored the test split
    # (the same reading and resizing; the blend from its parts' float32 scores): their stored
    # test scores, to the 6 significant digits `score` prints.
    for model in ("floor", "blend"):
        stored = load_scores(finished_run / model / "scores_test.npz")
        expected = {Path(p).name: s for p, s, t in zip(stored["paths"], stored["scores"],
                                                       stored["types"], strict=True)
                    if t == "hole"}
        printed = _printed_scores(prepared[model].stdout)
        assert sorted(printed) == sorted(expected), model
        for name, score in printed.items():
            assert score == pytest.approx(float(expected[name]), rel=1e-5, abs=1e-5), \
                (model, name)
    assert len(list(prepared["out"].glob("*_heatmap.png"))) == \
        len(list(prepared["images"].iterdir()))


def test_score_command_refuses_an_incomplete_run(finished_run: Path, tiny_data: Path,
                                                 tmp_path: Path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(finished_run, broken)
    (broken / "thresholds.json").unlink()
    result = cli("score", "--run", str(broken), str(tiny_data / "test" / "good"))
    assert result.returncode == 2 and "incomplete" in result.stderr
    assert "thresholds.json" in result.stderr and "Traceback" not in result.stderr


def test_two_runs_started_in_the_same_second_get_their_own_folders(tiny_data: Path,
                                                                   tmp_path: Path, monkeypatch):


    from anomaly_utils.pipeline import run_ids, runs

    monkeypatch.setattr(run_ids, "new_run_id", lambda prefix="": "20261201-120000")
    monkeypatch.setattr(runs, "run_notebooks", lambda *args, **kwargs: None)
    first, second = (run_pipeline({"data_dir": str(tiny_data)}, runs_dir=tmp_path,
                                  log=lambda *_: None) for _ in range(2))
    assert (first.name, second.name) == ("20261201-120000", "20261201-120000-2")
    assert read_json(second / "params.json")["run_id"] == second.name
