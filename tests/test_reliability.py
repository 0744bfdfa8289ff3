"""Reliability and security: untrusted model and score files, interrupted or failed writes,
a full disk, and a pipeline killed in the middle of a notebook.

Each attack carries a live payload (a Lambda layer or a pickle that creates a marker file)
and a positive control shows the payload really runs when loaded unsafely, so a test that
passes means the lab refused it, not that the payload was inert.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from anomaly_utils.artifacts import atomic_path, load_npz, read_json, save_npz, write_json
from anomaly_utils.errors import ArtifactError, LabError
from anomaly_utils.pipeline.parameters import NOTEBOOKS
from anomaly_utils.scoring.scorer import Scorer, ScoringConfig
from anomaly_utils.scoring.stored import ScoreResult, load_scores, save_scores
from tests.conftest import cli, clone_run

ROOT = Path(__file__).resolve().parent.parent
THRESHOLDS = {"ae2": {"image_threshold": 0.5, "pixel_threshold": 0.5, "strategy": "percentile"}}


# TensorFlow's C++ runtime prints these before absl logging is set up, whatever
# TF_CPP_MIN_LOG_LEVEL says (TF 2.21); they are not the lab's output.
TF_PREINIT_LOG = re.compile(r"^(WARNING: All log messages before absl::InitializeLog|"
                            r"[IWEF]\d{4} \d\d:\d\d:\d\d)")


def assert_clean_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines()
             if line.strip() and not TF_PREINIT_LOG.match(line)]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def folder_listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --------------------------------------------------------------------------- fixtures


def _compiled(model):
    model.compile(optimizer="adam", loss="mse")  # save_inference_model reads model.optimizer
    return model


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory) -> Path:
    """A minimal finished run: tiny AE-1/AE-2 models, scoring.json, thresholds.json."""
    from anomaly_utils.models.ae1 import build_ae1
    from anomaly_utils.models.ae2 import build_ae2
    from anomaly_utils.models.storage import save_inference_model

    run = tmp_path_factory.mktemp("runs") / "fake"
    ae1 = _compiled(build_ae1(image_size=16, latent_dim=8, encoder_filters=(8, 8, 8),
                              decoder_filters=(8, 8)))
    ae2 = _compiled(build_ae2(patch_size=32, channels=3, latent_dim=8, widths=(4,) * 8))
    save_inference_model(ae1, run / "ae1" / "model.keras")
    save_inference_model(ae2, run / "ae2" / "model.keras")
    Scorer(ae1, ScoringConfig(model="ae1", image_size=16, eval_size=16)).save_config(run)
    Scorer(ae2, ScoringConfig(model="ae2", image_size=64, patch_size=32, stride=16,
                              eval_size=32)).save_config(run)
    write_json(run / "thresholds.json", THRESHOLDS)
    return run


@pytest.fixture(scope="module")
def probe_image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("images") / "probe.png"
    rng = np.random.default_rng(0)
    cv2.imwrite(str(path), rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    return path


def lambda_model_file(path: Path, marker: Path) -> None:
    """Save a model whose Lambda layer creates ``marker`` whenever it is rebuilt or called."""
    import keras

    code = f"lambda t: (open({str(marker)!r}, 'w').close(), t)[1]"
    inputs = keras.Input((32, 32, 3))
    model = keras.Model(inputs, keras.layers.Lambda(eval(code))(inputs))  # noqa: S307
    model.save(path)
    marker.unlink()  # building the model ran the payload once already


# --------------------------------------------------------------------------- 1. model files


def test_score_command_accepts_the_untampered_fake_run(fake_run: Path, probe_image: Path):
    """Control for the attacks below: the same run and image score fine."""
    result = cli("score", "--run", str(fake_run), "--model", "ae2", str(probe_image))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "probe.png" in result.stdout


def test_lambda_model_is_refused_and_its_code_never_runs(fake_run: Path, probe_image: Path,
                                                         tmp_path: Path):
    import keras

    run = tmp_path / "run"
    shutil.copytree(fake_run, run)
    marker = tmp_path / "pwned"
    lambda_model_file(run / "ae2" / "model.keras", marker)

    with pytest.raises(ArtifactError, match=r"model\.keras' was refused by safe mode"):
        Scorer.load(run, "ae2")
    line = assert_clean_error(cli("score", "--run", str(run), "--model", "ae2",
                                  str(probe_image)), "safe mode", str(run / "ae2"))
    assert "Fix:" in line
    assert not marker.exists()

    # Positive control: loading it unsafely does run the payload.
    keras.saving.load_model(run / "ae2" / "model.keras", safe_mode=False)
    assert marker.exists()


@pytest.mark.parametrize("damage", ["not-a-zip", "truncated", "empty"])
def test_damaged_model_file_is_a_clear_artifact_error(fake_run: Path, tmp_path: Path, damage):
    run = tmp_path / "run"
    shutil.copytree(fake_run, run)
    model = run / "ae2" / "model.keras"
    data = model.read_bytes()
    model.write_bytes({"not-a-zip": b"<html>404 Not Found</html>",
                       "truncated": data[:len(data) // 2], "empty": b""}[damage])
    with pytest.raises(ArtifactError, match=r"model file '.*model\.keras' could not be loaded "
                                            r"\(corrupt or truncated"):
        Scorer.load(run, "ae2")


# --------------------------------------------------------------------------- 2. pickle


class _Payload:
    """Unpickling this creates the marker file (what a hostile pickle could do)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_npz_with_pickled_objects_is_refused_and_never_unpickled(tmp_path: Path):
    marker = tmp_path / "pwned"
    hostile = tmp_path / "scores_test.npz"
    np.savez(hostile, scores=np.zeros(3, np.float32),
             paths=np.array([_Payload(marker)], dtype=object))

    with pytest.raises(ArtifactError, match="pickled objects"):
        load_npz(hostile)
    with pytest.raises(ArtifactError, match="pickled objects"):
        load_scores(hostile, fingerprint="abc", model="ae2")
    assert not marker.exists()
    with pytest.raises(TypeError, match="pickle"):
        save_npz(tmp_path / "out.npz", paths=np.array([{"a": 1}], dtype=object))
    assert not (tmp_path / "out.npz").exists()

    # Positive control: numpy with pickle allowed runs the payload.
    with np.load(hostile, allow_pickle=True) as npz:
        npz["paths"]
    assert marker.exists()


@pytest.mark.parametrize("member", [
    b"\x93NUMPY\x01\x00\x10\x00{'descr': garbage}  \n",  # unparsable header
    b"\x93NUMPY\x01\x00\x42\x00{'descr': '<f8', 'fortran_order': False, 'shape': (1000,), }"
    + b" " * 5 + b"\n" + b"\x00" * 16,  # header promises more data than there is
    b"",
])
def test_npz_with_a_damaged_member_is_called_corrupt_not_pickled(tmp_path: Path, member):
    import zipfile

    path = tmp_path / "bad.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("scores.npy", member)
    with pytest.raises(ArtifactError, match=r"bad\.npz' is corrupt") as info:
        load_npz(path)
    assert "pickle" not in str(info.value)


# --------------------------------------------------------------------------- 3. foreign scores


def _score_file(path: Path, fingerprint: str, model: str) -> None:
    rng = np.random.default_rng(3)
    result = ScoreResult(rng.random(4).astype(np.float32),
                         rng.random((4, 8, 8)).astype(np.float32),
                         rng.random((4, 8, 8, 3)).astype(np.float32))
    save_scores(path, result, labels=np.array([0, 0, 1, 1]),
                types=np.array(["good", "good", "hole", "cut"]), masks=None, has_mask=None,
                paths=[f"{i}.png" for i in range(4)], fingerprint=fingerprint, model=model)


def test_score_file_from_another_dataset_or_model_is_refused(tmp_path: Path):
    path = tmp_path / "ae2" / "scores_test.npz"
    _score_file(path, fingerprint="fp-this-run", model="ae2")
    loaded = load_scores(path, "fp-this-run", "ae2")  # control: the right run loads
    assert loaded["scores"].shape == (4,) and loaded["maps"].dtype == np.float32

    with pytest.raises(ArtifactError, match=r"comes from dataset fp-this-run .* is fp-other"):
        load_scores(path, "fp-other", "ae2")
    with pytest.raises(ArtifactError, match="belongs to model ae2, not ae1"):
        load_scores(path, "fp-this-run", "ae1")

    partial = tmp_path / "partial.npz"
    save_npz(partial, scores=np.zeros(4, np.float32))
    with pytest.raises(ArtifactError, match=r"lacks \['fingerprint'"):
        load_scores(partial, "fp-this-run", "ae2")


# --------------------------------------------------------------------------- 4. atomic writes


def _fail_json(target: Path, monkeypatch) -> None:
    write_json(target, {"auroc": 0.5, "model": object()})  # not JSON-serialisable


def _fail_npz(target: Path, monkeypatch) -> None:
    def crash(handle, **arrays):
        handle.write(b"PK\x03\x04 half an archive")
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(np, "savez_compressed", crash)
    save_npz(target, scores=np.ones(10))


def _fail_interrupt(target: Path, monkeypatch) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise KeyboardInterrupt


@pytest.mark.parametrize(("writer", "expected"), [
    (_fail_json, TypeError), (_fail_npz, OSError), (_fail_interrupt, KeyboardInterrupt)])
def test_exception_mid_write_keeps_the_earlier_file_and_no_temp(tmp_path: Path, monkeypatch,
                                                                writer, expected):
    target = tmp_path / ("metrics.json" if writer is _fail_json else "scores.npz")
    if target.suffix == ".json":
        write_json(target, {"auroc": 0.9})
    else:
        save_npz(target, scores=np.arange(5.0))
    before = target.read_bytes()
    with pytest.raises(expected):
        writer(target, monkeypatch)
    assert target.read_bytes() == before
    assert folder_listing(tmp_path) == [target.name]


def test_artifacts_are_readable_like_plain_files(tmp_path: Path):
    """mkstemp makes 0600 files; artifacts must get the usual umask-based mode."""
    mask = os.umask(0o022)
    os.umask(mask)
    write_json(tmp_path / "m.json", {"a": 1})
    assert (tmp_path / "m.json").stat().st_mode & 0o777 == 0o666 & ~mask


HAMMER = """
import sys
from pathlib import Path
import numpy as np
from anomaly_utils.artifacts import save_npz, write_json
folder = Path(sys.argv[1])
for version in range(10**6):
    data = np.random.default_rng(version).random({n}, dtype=np.float32)
    save_npz(folder / "big.npz", version=np.int64(version), data=data)
    write_json(folder / "big.json", {{"version": version, "data": data[:{m}].tolist()}})
"""
N_FLOATS, N_JSON = 1_000_000, 50_000


def _expected(version: int) -> np.ndarray:
    return np.random.default_rng(version).random(N_FLOATS, dtype=np.float32)


def test_sigkill_while_rewriting_never_leaves_a_half_written_file(tmp_path: Path):
    """Kill a process that rewrites a 4 MB npz and a 1 MB JSON in a loop, at seeded
    random instants; the targets always hold one complete version."""
    rng = np.random.default_rng(7)
    code = HAMMER.format(n=N_FLOATS, m=N_JSON)
    kills_mid_write = 0
    for round_ in range(8):
        folder = tmp_path / f"round{round_}"
        folder.mkdir()
        process = subprocess.Popen([sys.executable, "-c", code, str(folder)], cwd=ROOT,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while not (folder / "big.json").exists() and process.poll() is None:
            assert time.monotonic() < deadline, "the writer never finished its first version"
            time.sleep(0.01)
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        time.sleep(rng.uniform(0.05, 0.6))
        process.kill()
        process.wait()
        process.stderr.close()

        npz = load_npz(folder / "big.npz")
        np.testing.assert_array_equal(npz["data"], _expected(int(npz["version"])))
        stored = read_json(folder / "big.json")
        np.testing.assert_array_equal(np.asarray(stored["data"], np.float32),
                                      _expected(stored["version"])[:N_JSON])
        assert stored["version"] in (int(npz["version"]), int(npz["version"]) - 1)
        temps = [name for name in folder_listing(folder) if name.startswith(".")]
        # One write at a time, so at most one temporary: the one the kill interrupted.
        assert len(temps) <= 1, temps
        assert all(t.startswith((".big.npz.", ".big.json.")) for t in temps), temps
        kills_mid_write += len(temps)
        if round_ >= 2 and kills_mid_write:
            break
    assert kills_mid_write, "no kill landed inside a write; the test did not test anything"


# --------------------------------------------------------------------------- 5. full disk


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 2 MiB tmpfs (needs root and permission to mount)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("a full disk is simulated with a tmpfs mount, which needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        reason = f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}"
        print(reason)
        pytest.skip(reason)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_full_disk_is_a_lab_error_naming_the_file_and_keeps_earlier_artifacts(
        small_disk: Path):
    from anomaly_utils.models.ae2 import build_ae2
    from anomaly_utils.models.storage import save_inference_model

    write_json(small_disk / "metrics.json", {"auroc": 0.9})
    save_npz(small_disk / "scores.npz", scores=np.arange(100.0))
    before = {name: (small_disk / name).read_bytes() for name in folder_listing(small_disk)}
    noise = np.random.default_rng(0).random(1_000_000)  # 8 MB, incompressible

    attempts = {
        "big.npz": lambda: save_npz(small_disk / "big.npz", data=noise),
        "scores.npz": lambda: save_npz(small_disk / "scores.npz", scores=noise),
        "metrics.json": lambda: write_json(small_disk / "metrics.json", {"x": noise}),
        "model.keras": lambda: save_inference_model(
            _compiled(build_ae2(patch_size=32, channels=3, latent_dim=8)),  # ~2.6 MB
            small_disk / "model.keras"),
    }
    for name, attempt in attempts.items():
        with pytest.raises(LabError, match="no space left") as info:
            attempt()
        assert f"'{small_disk / name}'" in str(info.value)
        assert "Fix:" in str(info.value)
        assert {n: (small_disk / n).read_bytes() for n in folder_listing(small_disk)} == before


# --------------------------------------------------------------------------- 6. killed pipeline


def test_sigkill_during_notebook_04_then_resume_reruns_only_04_and_05(tmp_path: Path,
                                                                      finished_run: Path):
    """A copy of the reference run with 04 and 05 to do is resumed, killed inside 04, and
    resumed again: 01-03 are reused, and the metrics equal the uninterrupted run's."""
    import psutil

    runs = tmp_path / "runs"
    clone_run(finished_run, runs / "k", unfinished=NOTEBOOKS[3:],
              remove=("metrics.json", "thresholds.json"))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    process = subprocess.Popen(
        [sys.executable, "-m", "anomaly_utils", "run", "--resume", "k", "--runs-dir",
         str(runs), "--quiet"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, start_new_session=True)
    status_path = runs / "k" / "status.json"
    victim = NOTEBOOKS[3]
    deadline = time.monotonic() + 600
    while process.poll() is None and time.monotonic() < deadline:
        if status_path.is_file() and read_json(status_path).get(victim, {}).get(
                "state") == "running":
            break
        time.sleep(0.1)
    assert process.poll() is None, process.stderr.read().decode()[-3000:]
    # The kernel runs in a session of its own (jupyter_client), so killpg misses it; it must
    # notice its parent died and exit by itself. Under load it may take seconds to start.
    kernels = []
    while process.poll() is None and time.monotonic() < deadline and not kernels:
        kernels = psutil.Process(process.pid).children(recursive=True)
        time.sleep(0.2)
    assert kernels, "no kernel process found under the pipeline"
    time.sleep(2.0)  # let the kernel get into the notebook's cells
    kernels = psutil.Process(process.pid).children(recursive=True)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    process.stderr.close()
    _, alive = psutil.wait_procs(kernels, timeout=30)
    for orphan in alive:
        orphan.kill()
    assert not alive, f"kernels outlived the killed pipeline: {alive}"

    state = read_json(status_path)
    assert all(state[nb]["state"] == "completed" for nb in NOTEBOOKS[:3]), state
    assert state[victim]["state"] == "running"
    assert not (runs / "k" / "metrics.json").exists()
    mtimes = {nb: (runs / "k" / f"{nb}.ipynb").stat().st_mtime_ns for nb in NOTEBOOKS[:3]}

    result = cli("run", "--resume", "k", "--runs-dir", str(runs), "--quiet", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    for nb in NOTEBOOKS[:3]:
        assert f"{nb}: completed earlier, reused" in result.stdout
    for nb in NOTEBOOKS[3:]:
        assert f"{nb}: completed earlier" not in result.stdout
        assert f"{nb} done in" in result.stdout
    assert mtimes == {nb: (runs / "k" / f"{nb}.ipynb").stat().st_mtime_ns
                      for nb in NOTEBOOKS[:3]}
    assert all(v["state"] == "completed" for v in read_json(status_path).values())
    # Same score files, another process: every candidate's thresholds and metrics, and the
    # choice, again (numbers to 1e-7: numpy's kernels, stated, not assumed bit-equal).
    for name in ("thresholds.json", "metrics.json"):
        ours, ref = ({k: v for k, v in read_json(run / name).items() if k != "params"}
                     for run in (runs / "k", finished_run))
        assert_same_json(ours, ref, name)


def assert_same_json(got, want, where: str) -> None:
    """``got`` equals ``want`` key for key and item for item; floats to a relative 1e-7."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and sorted(got) == sorted(want), where
        for key in want:
            assert_same_json(got[key], want[key], f"{where}/{key}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), where
        for i, (a, b) in enumerate(zip(got, want, strict=True)):
            assert_same_json(a, b, f"{where}/{i}")
    elif isinstance(want, float):
        assert got == pytest.approx(want, rel=1e-7, nan_ok=True), where
    else:
        assert got == want, where


# --------------------------------------------------------------------------- kernel start-up

def _dying_papermill(tmp_path: Path, logs: list[bytes]):
    """A papermill.execute_notebook whose kernel dies before it runs a cell while ``logs``
    has lines left (each call writes the next to the kernel's stderr log), then succeeds."""
    calls = []

    def execute(*args, **kwargs):
        calls.append(kwargs["config"]["LoggedKernelManager"]["stderr_log"])
        if len(calls) <= len(logs):
            with open(calls[-1], "ab") as log:
                log.write(logs[len(calls) - 1])
            raise RuntimeError("Kernel died before replying to kernel_info")

    return execute, calls


PORT_TAKEN = b"zmq.error.ZMQError: Address already in use (addr='tcp://127.0.0.1:43395')\n"


def test_a_kernel_that_lost_its_port_to_another_starts_again(tmp_path: Path, monkeypatch):
    import papermill

    from anomaly_utils.pipeline import runs

    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "01_data_exploration.stderr.log").write_bytes(PORT_TAKEN)  # earlier
    execute, calls = _dying_papermill(tmp_path, [PORT_TAKEN, PORT_TAKEN])
    monkeypatch.setattr(papermill, "execute_notebook", execute)
    runs.execute_notebook("01_data_exploration", tmp_path, {}, progress=False)
    assert len(calls) == 3  # two kernels lost their ports; the third ran the notebook
    # The same race every time: the error names the log rather than trying forever.
    execute, calls = _dying_papermill(tmp_path, [PORT_TAKEN] * runs.KERNEL_START_ATTEMPTS)
    monkeypatch.setattr(papermill, "execute_notebook", execute)
    with pytest.raises(LabError, match="died before it ran a cell") as error:
        runs.execute_notebook("01_data_exploration", tmp_path, {}, progress=False)
    assert len(calls) == runs.KERNEL_START_ATTEMPTS
    assert "01_data_exploration.stderr.log" in error.value.fix


def test_a_kernel_that_dies_for_another_reason_is_an_error_naming_its_log(tmp_path: Path,
                                                                         monkeypatch):
    import papermill

    from anomaly_utils.pipeline import runs

    # A port message from an earlier start in the same log does not count for this one.
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "03_train_ae2.stderr.log").write_bytes(PORT_TAKEN)
    execute, calls = _dying_papermill(tmp_path, [b"ModuleNotFoundError: No module named 'x'\n"])
    monkeypatch.setattr(papermill, "execute_notebook", execute)
    with pytest.raises(LabError, match="notebook 03_train_ae2 died before") as error:
        runs.execute_notebook("03_train_ae2", tmp_path, {}, progress=False)
    assert len(calls) == 1
    assert str(tmp_path / "logs" / "03_train_ae2.stderr.log") in error.value.fix
    assert f"--resume {tmp_path.name}" in error.value.fix
