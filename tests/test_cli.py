"""The command line: one readable message and exit status 2 for anything the user can fix."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_data import make_dataset

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "anomaly_utils", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300,
                          env={"TF_CPP_MIN_LOG_LEVEL": "3", "PATH": "/usr/bin:/bin",
                               "HOME": str(Path.home())})


def assert_clean_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_missing_data_dir(tmp_path: Path):
    assert_clean_error(cli("check-data", str(tmp_path / "missing")), "does not exist", "Fix:")


def test_truncated_image_names_the_file(tmp_path: Path):
    root = make_dataset(tmp_path / "cat")
    (root / "train" / "good" / "000.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    assert_clean_error(cli("check-data", str(root)), "000.png")


def test_debug_shows_the_traceback(tmp_path: Path):
    result = cli("--debug", "check-data", str(tmp_path / "missing"))
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_skip_unreadable_lists_the_skipped_files(tmp_path: Path):
    root = make_dataset(tmp_path / "cat")
    (root / "train" / "good" / "005.png").write_text("text")
    result = cli("check-data", str(root), "--skip-unreadable")
    assert result.returncode == 0, result.stderr
    assert "005.png" in result.stdout and '"skipped"' in result.stdout


@pytest.mark.parametrize(("params", "fragments"), [
    (["-p", "epochs", "-3"], ["'epochs'", "positive integer"]),
    (["-p", "epochs", "many"], ["'epochs' expects a int"]),
    (["-p", "ae1.image_size", "60"], ["'image_size'", "multiple of 8"]),
    (["-p", "ae2.patch_size", "100"], ["'patch_size'", "multiple of 16"]),
    (["-p", "learning_rate", "0"], ["'learning_rate'", "> 0"]),
    (["-p", "ae2.corrupt_mode", "stripes"], ["'corrupt_mode'", "rectangle+shading"]),
    (["-p", "ae2.ensemble_size", "0"], ["'ensemble_size'", "positive"]),
    (["-p", "ae2.map_kind", "0.5*ssim+lowpas"], ["'map_kind'", "lowpass", "'0.5*ssim+lowpas'"]),
    (["-p", "ae2.map_kind", "0.5*ssim+l1"], ["'map_kind'", "weights only some"]),
    (["-p", "ae2.pad", "-2"], ["'pad'", "integer >= 0"]),
    (["-p", "ae2.pad", "128"], ["'pad'", "smaller than image_size"]),
    (["-p", "ae2.pad", "8", "-p", "ae2.bottleneck", "unet", "-p", "ae2.head", "none"],
     ["'pad'", "unet"]),
    (["-p", "ae2.bottleneck", "unet"], ["'head'", "unet", "head none"]),
    (["-p", "no_such_knob", "1"], ["'no_such_knob' is not declared", "02_train_ae1"]),
    (["-p", "zz.epochs", "1"], ["unknown scope 'zz'"]),
    (["-p", "ae2.collapse_retries", "-1"], ["'collapse_retries'", "integer >= 0"]),
])
def test_bad_parameters_fail_before_any_run(tmp_path: Path, params, fragments, capsys):
    # In this process (the CLI's own entry point, main): the checks need no subprocess, and
    # test_run_refuses_a_missing_data_dir_before_creating_the_run runs the real command.
    from anomaly_utils.pipeline.cli import main

    root = make_dataset(tmp_path / "cat")
    code = main(["run", "--data-dir", str(root), "--runs-dir", str(tmp_path / "runs"), *params])
    captured = capsys.readouterr()
    assert_clean_error(subprocess.CompletedProcess([], code, captured.out, captured.err),
                       *fragments)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.parametrize("command", ["run", "sweep"])
def test_backend_is_one_of_the_three_keras_backends(command: str):
    result = cli(command, "--backend", "numpy")
    assert result.returncode == 2 and "invalid choice: 'numpy'" in result.stderr
    assert all(f"'{name}'" in result.stderr for name in ("tensorflow", "jax", "torch"))


def test_a_resume_refuses_another_backend_than_the_runs(tmp_path: Path, capsys):
    from anomaly_utils.pipeline.cli import main
    from anomaly_utils.pipeline.runs import create_run

    create_run({"data_dir": str(make_dataset(tmp_path / "cat"))}, tmp_path / "runs" / "r",
               backend="jax")
    code = main(["run", "--resume", "r", "--runs-dir", str(tmp_path / "runs"),
                 "--backend", "tensorflow"])
    captured = capsys.readouterr()
    assert_clean_error(subprocess.CompletedProcess([], code, captured.out, captured.err),
                       "run 'r' started on the Keras backend 'jax'", "--backend tensorflow",
                       "drop --backend")


def test_run_refuses_a_missing_data_dir_before_creating_the_run(tmp_path: Path):
    result = cli("run", "--data-dir", str(tmp_path / "nope"), "--runs-dir",
                 str(tmp_path / "runs"))
    assert_clean_error(result, "does not exist")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_run_refuses_defect_images_without_masks_before_creating_the_run(tmp_path: Path,
                                                                        capsys):
    """An image-labels-only dataset fails at once, naming an image and the command-line fix,
    not in notebook 01 after a run folder exists; with the fix the run's folder is made."""
    from anomaly_utils.pipeline.cli import main
    from anomaly_utils.pipeline.runs import create_run

    root = make_dataset(tmp_path / "cat")
    shutil.rmtree(root / "ground_truth")
    for preset in ("defaults", "auto"):
        code = main(["run", "--data-dir", str(root), "--runs-dir", str(tmp_path / "runs"),
                     "--preset", preset])
        captured = capsys.readouterr()
        assert_clean_error(subprocess.CompletedProcess([], code, captured.out, captured.err),
                           "2 defect image(s) have no mask", "000.png",
                           "-p allow_missing_masks True")
        assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    create_run({"data_dir": str(root), "allow_missing_masks": "True"}, tmp_path / "runs" / "r")
    assert (tmp_path / "runs" / "r" / "params.json").is_file()


@pytest.mark.parametrize("preset", sorted(p.stem for p in
                                          (Path(__file__).resolve().parent.parent / "notebooks"
                                           / "params").glob("*.yaml")))
def test_every_preset_resolves_to_valid_parameters(preset: str):
    from anomaly_utils.pipeline import parameters as params
    from anomaly_utils.pipeline.parameters import preset_overrides, resolve_parameters

    overrides = preset_overrides(preset)
    assert overrides, f"preset {preset} is empty"
    for notebook, values in resolve_parameters(overrides).items():
        params.validate(notebook, values)          # raises ParameterError on a bad value


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={"PATH": "/usr/bin:/bin", "HOME": str(Path.home())})


# TensorFlow's one notice that no log level silences: on CPUs where oneDNN's optimisations
# are on by default (AVX-512 VNNI/BF16, AMX) it logs "oneDNN custom operations are on"
# before absl's logging is initialised, and absl writes such early messages to stderr
# whatever the threshold (abseil/abseil-cpp#1718). Hiding it would mean hiding stderr.
_UNSILENCEABLE = ("WARNING: All log messages before absl::InitializeLog() is called are "
                  "written to STDERR", "] oneDNN custom operations are on.")


def _unexpected_stderr(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines()
            if line.strip() and not any(known in line for known in _UNSILENCEABLE)]


def test_tensorflow_loads_only_when_a_model_needs_it_and_then_quietly():
    light = _python("import sys, anomaly_utils.pipeline.cli, anomaly_utils.pipeline.runs, "
                    "anomaly_utils.pipeline.sweep, anomaly_utils.data.loading, "
                    "anomaly_utils.pipeline.parameters, anomaly_utils.evaluation.metrics, "
                    "anomaly_utils.evaluation.thresholds, anomaly_utils.scoring.stored, "
                    "anomaly_utils.visualization.gallery, anomaly_utils.pipeline.score_images, "
                    "anomaly_utils.scoring.serving; print('tensorflow' in sys.modules)")
    # --help, parameter and data checks, thresholds (notebook 04), the gallery (05), and
    # `score` until it loads a network (its checks, the statistics floor)
    assert light.stdout.strip() == "False", light.stderr
    # TF_CPP_MIN_LOG_LEVEL is unset here: the package's own default (errors only) applies.
    heavy = _python("import sys, anomaly_utils.models.ae2, keras; print('tensorflow' in sys.modules)")
    assert heavy.stdout.strip() == "True", heavy.stderr
    assert _unexpected_stderr(heavy.stderr) == [], heavy.stderr


def test_each_notebook_checks_its_own_parameters_in_its_first_code_cell():
    """JupyterLab runs no command line: the notebook checks its values itself, before it
    loads data, and its defaults pass."""
    import json

    from anomaly_utils.pipeline.parameters import (
        NOTEBOOK_DIR,
        NOTEBOOKS,
        check_parameters,
        declared_parameters,
    )

    for notebook in NOTEBOOKS:
        cells = json.loads((NOTEBOOK_DIR / f"{notebook}.ipynb").read_text())["cells"]
        code = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
        assert "parameters" in cells[1]["metadata"]["tags"]
        assert f'check_parameters("{notebook}", globals())' in code[1], notebook
        defaults = {name: d.default for name, d in declared_parameters(notebook).items()}
        check_parameters(notebook, defaults)


@pytest.mark.parametrize(("notebook", "values", "fragments"), [
    ("03_train_ae2", {"head": "segmentation", "bottleneck": "unet"},
     ["'head'", "unet bottleneck"]),
    ("03_train_ae2", {"patch_size": 256, "image_size": 128}, ["'patch_size' (256)"]),
    ("02_train_ae1", {"variant": "gan"}, ["'variant'", "'gan'"]),
    ("04_threshold_selection", {"percentile": 120.0}, ["'percentile'"]),
])
def test_a_bad_value_set_in_the_notebook_fails_before_any_work(notebook, values, fragments):
    from anomaly_utils.errors import ParameterError
    from anomaly_utils.pipeline.parameters import check_parameters, declared_parameters

    namespace = {name: d.default for name, d in declared_parameters(notebook).items()}
    namespace.update(values, np=object())  # other kernel variables are left alone
    with pytest.raises(ParameterError) as error:
        check_parameters(notebook, namespace)
    assert all(fragment in str(error.value) for fragment in fragments), str(error.value)
