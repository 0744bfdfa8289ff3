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
from pathlib import Path

import pytest

from anomaly_utils.artifacts import read_json, write_json
from anomaly_utils.synthetic import generate_dataset

ROOT = Path(__file__).resolve().parent.parent
# AE-2 trains 6 epochs so that a run killed after two of them has work left to resume.
TINY = {"epochs": "3", "ae2.epochs": "6", "ae1.image_size": "32", "ae1.latent_dim": "64",
        "ae2.image_size": "64", "patch_size": "32", "ae2.stride": "16",
        "patches_per_epoch": "64", "eval_size": "32", "smooth_sigma": "1.0",
        "n_bootstrap": "50", "batch_size": "16", "min_defect_area": "2"}


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
    the copy's ``../shared/datasets/magnetic_tile`` links a sample of it (eight images of each
    test folder, forty of train/good) so that the README's real-data command runs on real
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
        link_sample(real, base / "shared" / "datasets" / "magnetic_tile", train=40, test=8)
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


def shell(command: str, root: Path, timeout: int = 900, **popen) -> subprocess.CompletedProcess:
    """``command`` through bash in ``root``, as a user types it, output captured."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(root)}
    return subprocess.run(["bash", "-c", command], cwd=root, env=env, capture_output=True,
                          text=True, timeout=timeout, **popen)


# The README's commands that no other command depends on; they start with the session.
MAKE_RUN = "make run"
RERUN = ".venv/bin/python -m anomaly_utils run --epochs 50 -p ae1.variant vae"
PRESET = (".venv/bin/python -m anomaly_utils run --preset real "
          "--data-dir ../shared/datasets/magnetic_tile")
TINY_RUN = " --quiet " + " ".join(tiny_pairs())


@pytest.fixture(scope="session", autouse=True)
def background(request) -> dict[str, subprocess.Popen]:
    """The README's independent full runs, started in the background when the session starts.

    A tiny chain keeps about one core busy (kernel start-ups, imports and figures are single
    threaded), and so do most unit tests; running the chains beside them fills a 2-core
    machine. Started only when a collected test needs them; ``finished_run`` and the README
    tests wait for them.
    """
    needed = {name for item in request.session.items
              for name in getattr(item, "fixturenames", ())}
    commands = {}
    if "finished_run" in needed:
        commands[MAKE_RUN] = f'{MAKE_RUN} RUN_ARGS="{TINY_RUN}"'
    if "readme_runs" in needed:
        commands[RERUN] = RERUN + TINY_RUN
        if (ROOT.parent / "shared" / "datasets" / "magnetic_tile").is_dir():
            commands[PRESET] = PRESET + TINY_RUN
    started: dict[str, subprocess.Popen] = {}
    if commands:
        root = request.getfixturevalue("fresh_root")
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(root)}
        for key, command in commands.items():
            started[key] = subprocess.Popen(["bash", "-c", command], cwd=root, env=env,
                                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                            text=True, start_new_session=True)
    yield started
    for process in started.values():
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate()


def finished(process: subprocess.Popen, root: Path) -> tuple[Path, str, str]:
    """Wait for a background run: its folder (as its closing summary names it), stdout, stderr."""
    out, err = process.communicate(timeout=1200)
    assert process.returncode == 0, out[-2000:] + err[-3000:]
    match = re.search(r"^Run (\S+)  \(", out, flags=re.M)
    assert match, out[-2000:]
    return root / "runs" / match.group(1), out, err


@pytest.fixture(scope="session")
def finished_run(fresh_root: Path, background) -> Path:
    """``make run`` in a fresh copy, training shortened to TINY: the reference run."""
    run, out, err = finished(background[MAKE_RUN], fresh_root)
    assert "ae2" in out and "img AUROC" in out  # the summary
    # The kernels' sockets are encrypted (pipeline.kernel_config), so ipykernel stays quiet.
    assert "without encryption" not in err, err[-3000:]
    return run
