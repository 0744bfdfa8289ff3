"""Fixtures shared by the end-to-end tests: a tiny synthetic carpet and one finished run on it.

A full notebook chain on tiny data still takes about a minute on 2 cores, so the reference
run is made once per session; tests that need a run in some other state copy it with
``clone_run`` instead of training again.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from anomaly_utils.artifacts import read_json, write_json
from anomaly_utils.data.synthetic import generate_dataset
from anomaly_utils.errors import LabError

ROOT = Path(__file__).resolve().parent.parent
# AE-2 trains 4 epochs so that a run killed after two of them has work left to resume. The
# statistics floor and notebook 01's previews work at the tiny carpet's own 64 px (their
# defaults, 256 px, cost every tiny chain about 8 s of CPU in notebook 01).
TINY = {"epochs": "3", "ae2.epochs": "4", "ae1.image_size": "32", "ae1.latent_dim": "64",
        "ae2.image_size": "64", "patch_size": "32", "ae2.stride": "16",
        "patches_per_epoch": "64", "eval_size": "32", "smooth_sigma": "1.0",
        "n_bootstrap": "50", "batch_size": "16", "min_defect_area": "2",
        "head_epochs": "2", "head_patches_per_epoch": "32", "head_widths": "[8,16]",
        "floor_image_size": "64", "01.image_size": "64"}


def jax_compilation_cache() -> dict[str, str]:
    """Environment variables that give a JAX process the persistent XLA compilation cache
    ``.cache/jax`` in the checkout (ignored by git), keeping every compilation however short.

    A warm ``make test`` finds the last one's compilations (measured: the tiny chain's kernels
    take 104 s of CPU with a cold cache, 54 s with a warm one; the two-device DataParallel
    test 35 s and 14 s); a fresh clone, as CI makes it, compiles everything. XLA keys each
    entry on the computation, the flags and its own version, so processes with other
    ``XLA_FLAGS`` share the folder without sharing entries."""
    cache = ROOT / ".cache" / "jax"
    cache.mkdir(parents=True, exist_ok=True)
    return {"JAX_COMPILATION_CACHE_DIR": str(cache),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


# The fixtures that need a run of the notebook chain; tests using them are marked "chain", and
# `make test` runs them in a process of their own, beside the other tests (Makefile).
CHAIN_FIXTURES = {"finished_run", "readme_runs", "fresh_root", "prepared"}


# Tests whose processes synchronise with each other (tf.distribute replicas and workers) run
# 5-6x slower on a loaded machine (the mirrored one: 204 s under make test's load, 34 s
# alone), so they run last, when nbval and the chain runs beside them have finished.
RUN_LAST = ("test_distribute.py",)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    for item in items:
        if CHAIN_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.chain)
    items.sort(key=lambda item: item.path.name in RUN_LAST)  # stable: order kept otherwise


def experiment_script(name: str):
    """The module of ``experiments/<name>.py`` (a script folder, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cli(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """``python -m anomaly_utils ARGS`` from the repository root, output captured."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-m", "anomaly_utils", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def tiny_args(data_dir: Path) -> list[str]:
    args = ["--data-dir", str(data_dir), "--quiet"]
    for name, value in TINY.items():
        args += ["-p", name, value]
    return args


def clone_run(run_dir: Path, dest: Path, unfinished: tuple[str, ...] = (),
              remove: tuple[str, ...] = ()) -> Path:
    """Copy a finished run to ``dest`` as if the notebooks ``unfinished`` had never run.

    Their status entries and executed notebooks are dropped, and so are the files named in
    ``remove`` (what those notebooks write), so ``--resume`` has them to do again.
    """
    shutil.copytree(run_dir, dest)
    status = read_json(dest / "status.json")
    for notebook in unfinished:
        del status[notebook]
        (dest / f"{notebook}.ipynb").unlink()
    write_json(dest / "status.json", status)
    for name in remove:
        (dest / name).unlink()
    return dest


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("data") / "carpet", seed=1, size=64,
                            n_train=24, n_test_good=6, n_per_defect=2)


def tiny_pairs(option: str = "-p", skip: tuple[str, ...] = ()) -> list[str]:
    """TINY as ``option NAME VALUE`` triples, leaving out the names in ``skip``."""
    return [a for name, value in TINY.items() if name not in skip for a in (option, name, value)]


def tracked_files(root: Path) -> list[str]:
    """What a clone of ``root`` would hold: tracked files and untracked ones git does not ignore."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                         cwd=root, capture_output=True, text=True, check=True)
    return [name for name in out.stdout.split("\0") if name and (root / name).is_file()]


@pytest.fixture(scope="session")
def fresh_root(tiny_data: Path, tmp_path_factory) -> Path:
    """A fresh clone of the repository, with the working tree's changes, beside a ``shared/``.

    ``git clone`` gives it the checkout's commit (so runs made there record the same
    ``git_commit`` as runs made here); the files of the working tree (tracked, and untracked
    ones git does not ignore) are copied over it, so uncommitted work is what gets tested. It
    shares the warm ``.venv`` (a link) and holds the tiny carpet both as
    ``data/synthetic_carpet`` (so ``make run`` finds it) and as ``data/carpet`` (what the
    README's download command would bring); where ``../shared/datasets/magnetic_tile`` exists,
    the copy's ``../shared/datasets/magnetic_tile`` links a sample of it (four images of each
    test folder, twenty-four of train/good) so that the README's real-data command runs on real
    images at a test's size. Commands run there with ``PYTHONPATH`` on the copy, so its
    package, not the original checkout, is what the notebooks import.
    """
    base = tmp_path_factory.mktemp("fresh")
    root = base / "repo"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(root)], check=True,
                   capture_output=True)
    for name in tracked_files(ROOT):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, root / name)
    deleted = subprocess.run(["git", "ls-files", "--deleted", "-z"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, deleted):
        (root / name).unlink(missing_ok=True)
    (root / ".venv").symlink_to(ROOT / ".venv")
    # make in the copy must find the shared .venv up to date: an install there would point
    # the checkout's editable install at this temporary copy.
    stale = subprocess.run(["make", "-q", "venv"], cwd=root, capture_output=True).returncode
    if stale:
        pytest.fail(".venv is not installed for the current requirements; run `make venv` "
                    "(make test does) before running the tests directly")
    shutil.copytree(tiny_data, root / "data" / "synthetic_carpet")
    shutil.copytree(tiny_data, root / "data" / "carpet")
    real = ROOT.parent / "shared" / "datasets" / "magnetic_tile"
    if real.is_dir():
        link_sample(real, base / "shared" / "datasets" / "magnetic_tile", train=24, test=4)
    return root


def link_sample(source: Path, dest: Path, train: int, test: int) -> Path:
    """``dest`` in the MVTec layout with links to the first ``train`` images of each train
    folder and ``test`` of each test folder of ``source`` (with their masks): a real dataset
    at the size of a test."""
    for folder in sorted(p for p in source.glob("*/*") if p.is_dir()):
        if folder.parent.name not in ("train", "test"):
            continue
        count = train if folder.parent.name == "train" else test
        for image in sorted(f for f in folder.iterdir() if f.is_file())[:count]:
            target = dest / image.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(image)
            if folder.parent.name == "test" and folder.name != "good":
                mask = source / "ground_truth" / folder.name / f"{image.stem}_mask.png"
                (dest / "ground_truth" / folder.name).mkdir(parents=True, exist_ok=True)
                (dest / mask.relative_to(source)).symlink_to(mask)
    return dest


def shell(command: str, root: Path, timeout: int = 900, env: dict | None = None,
          **popen) -> subprocess.CompletedProcess:
    """``command`` through bash in ``root``, as a user types it, output captured (``env``:
    variables set on top of this process's)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {}), "PYTHONPATH": str(root)}
    return subprocess.run(["bash", "-c", command], cwd=root, env=env, capture_output=True,
                          text=True, timeout=timeout, **popen)


# The README's commands that no other command depends on; they start with the session.
MAKE_RUN = "make run"
CHECK_DATA = ".venv/bin/python -m anomaly_utils check-data data/carpet"
OWN_DATA = ".venv/bin/python -m anomaly_utils run --data-dir data/carpet"
RESUME = ".venv/bin/python -m anomaly_utils run --resume 20261129-181500"
RERUN = ".venv/bin/python -m anomaly_utils run --epochs 50 -p ae1.variant vae"
PRESET = (".venv/bin/python -m anomaly_utils run --preset real "
          "--data-dir ../shared/datasets/magnetic_tile")
SWEEP = ".venv/bin/python -m anomaly_utils sweep -p ae2.head none segmentation --jobs 2"
# Run by tests/test_backends.py (the chain on JAX), not in the background.
BACKEND_RUN = ".venv/bin/python -m anomaly_utils run --backend jax"
TINY_RUN = " --quiet " + " ".join(tiny_pairs())
# Where a README command's test checks only the first notebooks, the run stops after them
# (``--until``): the notebooks after that are run by the other commands' tests.
UNTIL = {RERUN: " --until 02", RESUME: " --until 03", PRESET: " --until 04",
         BACKEND_RUN: " --until 03", SWEEP: " --until 04"}
BACKGROUND_WORKERS = 3  # jobs at once: fills 2 cores beside the tests, within memory


class Background:
    """Jobs (whole runs, in a fresh copy) that run in threads beside the tests.

    A tiny chain keeps about one core busy on average (kernel start-ups, imports and figures
    are single threaded), and so do most unit tests; running the chains beside them fills a
    2-core machine. Each job's processes are registered so that the session can end them.
    """

    def __init__(self, root: Path):
        self.root = root
        self.pool = ThreadPoolExecutor(BACKGROUND_WORKERS, thread_name_prefix="background")
        # Work that starts from the reference run waits for it in a pool of its own.
        self.followers = ThreadPoolExecutor(3, thread_name_prefix="after-run")
        self.jobs: dict[str, Future] = {}
        self.processes: list[subprocess.Popen] = []

    def spawn(self, command: str) -> subprocess.Popen:
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(self.root)}
        process = subprocess.Popen(["bash", "-c", command], cwd=self.root, env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   start_new_session=True)
        self.processes.append(process)
        return process

    def run(self, command: str, timeout: int = 1500) -> subprocess.CompletedProcess:
        process = self.spawn(command)
        out, err = process.communicate(timeout=timeout)
        return subprocess.CompletedProcess(command, process.returncode, out, err)

    def submit(self, key: str, job, *args) -> None:
        self.jobs[key] = self.pool.submit(job, *args)

    def submit_after(self, key: str, first: str, job, *args) -> None:
        """Run ``job(result of first, *args)`` once the job ``first`` has finished."""
        self.jobs[key] = self.followers.submit(
            lambda: job(self.jobs[first].result(timeout=1800), *args))

    def result(self, key: str, timeout: int = 1800):
        return self.jobs[key].result(timeout=timeout)

    def close(self) -> None:
        for future in self.jobs.values():
            future.cancel()
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
        self.pool.shutdown(wait=True)
        self.followers.shutdown(wait=True)


def run_ids(root: Path) -> set[str]:
    runs = root / "runs"
    return {d.name for d in runs.iterdir() if d.is_dir()} if runs.is_dir() else set()


def run_data_dir(run: Path) -> str | None:
    """The data_dir a run was made for (None while its params.json is not written yet)."""
    try:
        return read_json(run / "params.json")["notebooks"]["03_train_ae2"]["data_dir"]
    except (LabError, KeyError):
        return None


def kill_and_resume(bg: Background) -> dict:
    """The README's own-data flow: check-data, a run killed while AE-2 trains, ``--resume``.

    Returns the check-data and resume results, the killed run's folder and how many AE-2
    epochs had finished when it was killed.
    """
    root = bg.root
    checked = bg.run(CHECK_DATA)
    carpet = str((root / "data" / "carpet").resolve())
    before = run_ids(root)
    process = bg.spawn(OWN_DATA + TINY_RUN)
    deadline, history = time.monotonic() + 900, None
    while time.monotonic() < deadline and process.poll() is None:
        ours = [r for r in run_ids(root) - before if run_data_dir(root / "runs" / r) == carpet]
        if ours:
            history = root / "runs" / ours[0] / "ae2" / "history.csv"
            if history.is_file() and len(history.read_text().splitlines()) >= 3:  # 2 epochs
                break
        time.sleep(0.2)
    alive = process.poll() is None
    if alive:
        os.killpg(process.pid, signal.SIGKILL)
    process.communicate()
    if not alive or history is None:
        return {"checked": checked, "killed": False}
    run = history.parent.parent
    done = len(history.read_text().splitlines()) - 1
    resumed = bg.run(RESUME.replace("20261129-181500", run.name) + " --quiet" + UNTIL[RESUME])
    return {"checked": checked, "killed": True, "run": run, "done_at_kill": done,
            "resumed": resumed}


# ``@pytest.mark.after_run(prepare=f)``: ``f(finished_run, folder)`` runs in the background
# as soon as the reference run is done, beside the other tests; the test reads what it
# returned through the ``prepared`` fixture and makes its assertions.
AFTER_RUN = "after_run"


def _prepared_jobs(items) -> list[tuple[str, object]]:
    return [(item.nodeid, marker.kwargs["prepare"]) for item in items
            for marker in item.iter_markers(AFTER_RUN)]


@pytest.fixture(scope="session", autouse=True)
def background(request, tmp_path_factory) -> Background | None:
    """The README's independent runs, started when the session starts (only those that a
    collected test needs); ``finished_run`` and the README tests wait for their results."""
    needed = {name for item in request.session.items
              for name in getattr(item, "fixturenames", ())}
    jobs = []
    prepared = _prepared_jobs(request.session.items)
    if "finished_run" in needed or prepared:
        jobs.append((MAKE_RUN, f'{MAKE_RUN} RUN_ARGS="{TINY_RUN}"'))
    if "readme_runs" in needed:
        jobs.append((OWN_DATA, kill_and_resume))
        fixed = " ".join(tiny_pairs("--set", skip=("ae2.epochs",)))
        jobs.append((SWEEP, f"{SWEEP} --sweep-id s {fixed}{UNTIL[SWEEP]}"))
        jobs.append((RERUN, RERUN + TINY_RUN + UNTIL[RERUN]))
        if (ROOT.parent / "shared" / "datasets" / "magnetic_tile").is_dir():
            jobs.append((PRESET, PRESET + TINY_RUN + UNTIL[PRESET]))
    if not jobs:
        yield None
        return
    bg = Background(request.getfixturevalue("fresh_root"))
    for key, job in jobs:
        if callable(job):
            bg.submit(key, job, bg)
        else:
            bg.submit(key, bg.run, job)
    for nodeid, prepare in prepared:
        folder = tmp_path_factory.mktemp("prepared")
        bg.submit_after(nodeid, MAKE_RUN,
                        lambda result, p=prepare, f=folder: p(finished(result, bg.root), f))
    yield bg
    bg.close()


@pytest.fixture
def prepared(request, background: Background):
    """What this test's ``after_run`` preparation returned (it ran in the background)."""
    return background.result(request.node.nodeid)


def finished(result: subprocess.CompletedProcess, root: Path) -> Path:
    """The folder of a finished run, as its closing summary names it."""
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    match = re.search(r"^Run (\S+)  \(", result.stdout, flags=re.M)
    assert match, result.stdout[-2000:]
    return root / "runs" / match.group(1)


@pytest.fixture(scope="session")
def finished_run(fresh_root: Path, background: Background) -> Path:
    """``make run`` in a fresh copy, training shortened to TINY: the reference run."""
    result = background.result(MAKE_RUN)
    run = finished(result, fresh_root)
    assert "ae2" in result.stdout and "img AUROC" in result.stdout  # the summary
    # The kernels' sockets are encrypted (pipeline.kernel_config), so ipykernel stays quiet.
    assert "without encryption" not in result.stderr, result.stderr[-3000:]
    # The kernels' own C++ log lines (TensorFlow's E0000/I0000 notices) go to the run's logs,
    # not the console.
    assert not re.search(r"^[EIW]\d{4} ", result.stdout + result.stderr, flags=re.M), \
        result.stderr[-3000:]
    assert (run / "logs" / "03_train_ae2.stderr.log").is_file()
    return run
