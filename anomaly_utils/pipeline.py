"""Headless runs of the notebook chain with papermill.

A run executes ``notebooks/01_*.ipynb`` to ``05_*.ipynb`` in order into ``runs/<run-id>/``:

1. Parameters are checked against what the notebooks declare in their ``parameters`` cell
   (an unknown name is an error that lists the notebooks and what they accept; values are
   converted to the type of the notebook's default). ``NAME`` applies to every notebook that
   declares it; ``ae1.NAME`` / ``ae2.NAME`` (or ``02.NAME``) to one notebook only.
2. ``params.json`` (every effective parameter) and ``env.json`` (versions, git commit, data
   fingerprint, hardware) are written before anything runs.
3. Each notebook runs with papermill; ``status.json`` records which ones completed, so
   ``--resume`` continues from the first that did not (training itself resumes from its
   last finished epoch). A failing cell stops the run with the notebook and cell named, and
   the partially executed notebook stays in the run directory. A resumed run first
   compares its packages, commit and data with ``env.json``; a difference is a warning,
   and it is recorded in ``env.json`` under ``"resumes"``.

Example:
    >>> run_pipeline({"data_dir": "data/synthetic_carpet", "epochs": 2})   # doctest: +SKIP
"""

from __future__ import annotations

import ast
import datetime as dt
import functools
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .artifacts import read_json, write_json
from .errors import LabError, ParameterError
from .params import validate

REPO_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
NOTEBOOKS = (
    "01_data_exploration",
    "02_train_ae1",
    "03_train_ae2",
    "04_threshold_selection",
    "05_results_gallery",
)
SCOPES = {"01": NOTEBOOKS[0], "data": NOTEBOOKS[0], "02": NOTEBOOKS[1], "ae1": NOTEBOOKS[1],
          "03": NOTEBOOKS[2], "ae2": NOTEBOOKS[2], "04": NOTEBOOKS[3], "05": NOTEBOOKS[4]}
PATH_PARAMETERS = ("data_dir", "run_dir")


class RunExistsError(LabError):
    """The run directory is taken: a run never overwrites another."""


@dataclass(frozen=True)
class Declared:
    """A parameter as declared in a notebook's ``parameters`` cell."""

    name: str
    default: Any
    help: str


def declared_parameters(notebook: str | Path) -> dict[str, Declared]:
    """Parameters declared by a notebook's cell tagged ``parameters``, with their defaults."""
    import papermill

    path = Path(notebook)
    if not path.suffix:
        path = NOTEBOOK_DIR / f"{notebook}.ipynb"
    declared = {}
    for name, info in papermill.inspect_notebook(str(path)).items():
        try:
            default = ast.literal_eval(info["default"])
        except (ValueError, SyntaxError):
            default = info["default"]
        declared[name] = Declared(name, default, info.get("help", ""))
    return declared


def coerce(name: str, value: Any, default: Any) -> Any:
    """Convert a command-line string ``value`` to the type of the notebook's ``default``."""
    if not isinstance(value, str) or isinstance(default, str):
        return value
    if value.lower() in ("none", "null"):
        return None
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        parsed = value
    if isinstance(default, bool):
        if isinstance(parsed, bool):
            return parsed
        if value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
    elif isinstance(default, int):
        if isinstance(parsed, int) and not isinstance(parsed, bool):
            return parsed
    elif isinstance(default, float):
        if isinstance(parsed, int | float) and not isinstance(parsed, bool):
            return float(parsed)
    elif default is None or isinstance(default, list | tuple | dict):
        return parsed
    raise ParameterError(
        f"parameter '{name}' expects a {type(default).__name__} (default {default!r}), "
        f"got {value!r}", fix=f"pass e.g. -p {name} {default!r}")


def _notebook_default(name: str, default: Any) -> Any:
    """A declared default as the run uses it: relative paths are taken from ``notebooks/``.

    The parameters cells are written for a kernel whose working directory is ``notebooks/``
    (``"../data/synthetic_carpet"``), while paths given on the command line are taken from
    the caller's working directory; both are made absolute so that the pre-flight checks and
    the notebooks see the same folder wherever the command was typed.
    """
    if name in PATH_PARAMETERS and isinstance(default, str) and default:
        return str((NOTEBOOK_DIR / Path(default).expanduser()).resolve())
    return default


def resolve_parameters(overrides: dict[str, Any],
                       notebooks: tuple[str, ...] = NOTEBOOKS) -> dict[str, dict[str, Any]]:
    """Each notebook's effective parameters: its declared defaults, then ``overrides``.

    Raises:
        ParameterError: a name no notebook declares, an unknown scope, or a wrong type.
    """
    declared = {nb: declared_parameters(nb) for nb in notebooks}
    effective = {nb: {name: _notebook_default(name, d.default) for name, d in params.items()}
                 for nb, params in declared.items()}
    for key, value in overrides.items():
        scope, _, name = key.rpartition(".")
        if scope and scope not in SCOPES:
            raise ParameterError(f"unknown scope '{scope}' in parameter '{key}'",
                                 fix=f"use one of {sorted(SCOPES)} (e.g. ae2.epochs)")
        targets = [SCOPES[scope]] if scope else list(notebooks)
        hits = [nb for nb in targets if nb in declared and name in declared[nb]]
        if not hits:
            accepted = "; ".join(f"{nb}: {', '.join(declared[nb])}" for nb in targets
                                 if nb in declared)
            where = f"notebook {targets[0]}" if scope else "any notebook"
            raise ParameterError(f"parameter '{key}' is not declared by {where} ({accepted})",
                                 fix="check the spelling against the parameters cells")
        for nb in hits:
            value_here = value
            if name in PATH_PARAMETERS and isinstance(value, str) and value:
                value_here = str(Path(value).expanduser().resolve())
            effective[nb][name] = coerce(key, value_here, declared[nb][name].default)
    return effective


def new_run_id(prefix: str = "") -> str:
    """A fresh, sortable run id: ``YYYYmmdd-HHMMSS`` (UTC) plus an optional prefix."""
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{prefix}{stamp}"


@functools.lru_cache(maxsize=1)
def visible_gpus() -> list[str] | None:
    """Names of the GPUs TensorFlow sees, or None if that could not be found out.

    Asked in a child process, so the pipeline's own process never loads TensorFlow (about
    0.5 GB that would otherwise sit idle while the notebooks' kernels do the work); asked
    once per process, since a sweep creates one run per configuration. Without an NVIDIA
    driver on the machine TensorFlow can see no GPU, so that child (several seconds of
    importing TensorFlow) is skipped.
    """
    if not Path("/proc/driver/nvidia/version").exists() and shutil.which("nvidia-smi") is None:
        return []
    code = ("import json, tensorflow as tf; "
            "print(json.dumps([d.name for d in tf.config.list_physical_devices('GPU')]))")
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        return json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError):
        return None


def software_info() -> dict:
    """Python version, package versions, git commit and dirty flag of this process."""
    from importlib import metadata

    packages = {}
    for dist in ("tensorflow-cpu", "tensorflow", "keras", "numpy", "scikit-learn", "scikit-image",
                 "opencv-python-headless", "papermill", "nbval", "matplotlib", "seaborn"):
        try:
            packages[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                                 timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    status = git("status", "--porcelain", "--untracked-files=no")
    return {"python": sys.version.split()[0], "packages": packages,
            "git_commit": git("rev-parse", "HEAD"),
            "git_dirty": None if status is None else bool(status)}


def kernel_config():
    """traitlets configuration for the kernels that execute notebooks.

    The kernel's sockets are encrypted with CurveZMQ where the kernel supports it ("auto":
    ipykernel >= 7.3 declares it), which also stops ipykernel from warning on every
    notebook that it runs over TCP without encryption. Without CurveZMQ in pyzmq the
    configuration is empty and kernels start as before.
    """
    import zmq
    from traitlets.config import Config

    if not zmq.has("curve"):
        return Config()
    return Config({"KernelManager": {"transport_encryption": "auto"}})


def environment_info(data_fingerprint: str | None) -> dict:
    """Package versions, git commit and dirty flag, data fingerprint, CPU and GPU."""
    software = software_info()
    return {
        "python": software["python"],
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "gpus": visible_gpus(),
        "packages": software["packages"],
        "git_commit": software["git_commit"],
        "git_dirty": software["git_dirty"],
        "data_fingerprint": data_fingerprint,
    }


def _data_fingerprint(effective: dict[str, dict[str, Any]]) -> str | None:
    """The fingerprint of the dataset the notebooks' ``data_dir`` names (None: no data_dir)."""
    data_dir = next((p["data_dir"] for p in effective.values() if "data_dir" in p), None)
    if not data_dir:
        return None
    from .data import fingerprint, scan_dataset

    return fingerprint(scan_dataset(data_dir, allow_missing_masks=True))


def check_resumed_environment(run_dir: Path, log=print) -> dict[str, Any]:
    """Compare the software and data a resumed run will use with its ``env.json``.

    A run resumed with other package versions, another commit or changed data mixes
    results from two set-ups. That is allowed (a crash should not cost the finished
    notebooks), but never silent: each difference is logged as a warning and appended to
    ``env.json`` under ``"resumes"``, so the run's record says which numbers came from what.
    (Score files carry the data fingerprint, so notebook 04 still refuses scores made from
    other data.)

    Returns:
        ``{key: {"then": ..., "now": ...}}`` for each differing key among python,
        git_commit, git_dirty and data_fingerprint, and ``{"packages": {name: {"then",
        "now"}}}`` for differing package versions; empty when nothing changed.
    """
    path = run_dir / "env.json"
    if not path.is_file():
        log(f"warning: run '{run_dir.name}' has no env.json, so its environment cannot be "
            "compared with this one")
        return {}
    saved = read_json(path)
    effective = read_json(run_dir / "params.json")["notebooks"]
    try:
        fingerprint = _data_fingerprint(effective)
    except LabError as exc:  # the notebook that reads the data will stop with this error
        log(f"warning: the dataset could not be fingerprinted: {exc}")
        fingerprint = None
    now = {**software_info(), "data_fingerprint": fingerprint}
    differences: dict[str, Any] = {}
    for key in ("python", "git_commit", "git_dirty", "data_fingerprint"):
        if saved.get(key) != now[key]:
            differences[key] = {"then": saved.get(key), "now": now[key]}
    then_packages = saved.get("packages") or {}
    packages = {name: {"then": then_packages.get(name), "now": now["packages"].get(name)}
                for name in sorted(set(then_packages) | set(now["packages"]))
                if then_packages.get(name) != now["packages"].get(name)}
    if packages:
        differences["packages"] = packages
    if differences:
        changes = [f"{name} {v['then']} -> {v['now']}" for name, v in packages.items()]
        changes += [f"{key} {v['then']} -> {v['now']}" for key, v in differences.items()
                    if key != "packages"]
        log(f"warning: run '{run_dir.name}' was started with another environment; the "
            f"notebooks it finished then keep their results: {'; '.join(changes)} "
            f"(recorded in {path})")
        stamp = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        saved.setdefault("resumes", []).append({"at": stamp, "differences": differences})
        write_json(path, saved)
    return differences


def _status_path(run_dir: Path) -> Path:
    return run_dir / "status.json"


def _read_status(run_dir: Path) -> dict:
    path = _status_path(run_dir)
    return read_json(path) if path.exists() else {}


def _mark(run_dir: Path, notebook: str, state: str, seconds: float | None = None) -> None:
    status = _read_status(run_dir)
    status[notebook] = {"state": state, "seconds": seconds}
    write_json(_status_path(run_dir), status)


def _failure_message(notebook: str, exc: Exception) -> str:
    cell = getattr(exc, "exec_count", None)
    ename = getattr(exc, "ename", type(exc).__name__)
    evalue = getattr(exc, "evalue", str(exc))
    where = f"cell [{cell}]" if cell is not None else "a cell"
    return f"notebook {notebook} failed in {where}: {ename}: {evalue}"


def execute_notebook(notebook: str, run_dir: Path, parameters: dict, progress: bool = True,
                     kernel_name: str | None = None) -> float:
    """Run one notebook with papermill into ``run_dir/<notebook>.ipynb``; return seconds.

    Raises:
        LabError: a cell failed; the message names the notebook and the cell, and the
            partially executed notebook stays at ``run_dir/<notebook>.ipynb``.
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError

    start = time.perf_counter()
    # Absolute: papermill changes the working directory to notebooks/ while it executes, and
    # a sweep runs several notebooks at once in threads of this one process.
    output = run_dir.resolve() / f"{notebook}.ipynb"
    try:
        papermill.execute_notebook(
            str(NOTEBOOK_DIR / f"{notebook}.ipynb"), str(output), parameters=parameters,
            cwd=str(NOTEBOOK_DIR), progress_bar=progress, kernel_name=kernel_name,
            request_save_on_cell_execute=True, config=kernel_config(),
        )
    except PapermillExecutionError as exc:
        raise LabError(_failure_message(notebook, exc),
                       fix=f"read the traceback in '{output}', fix the cause, then rerun with "
                           f"--resume {run_dir.name}") from exc
    return time.perf_counter() - start


def create_run(overrides: dict[str, Any], run_dir: Path,
               notebooks: tuple[str, ...] = NOTEBOOKS) -> dict[str, dict[str, Any]]:
    """Check parameters and data, then create ``run_dir`` with params.json and env.json.

    Everything that can be checked is checked before the folder exists, so a typo never
    leaves an empty run behind. Returns each notebook's effective parameters.
    """
    if run_dir.exists():
        raise RunExistsError(f"run directory '{run_dir}' already exists; a run never overwrites "
                       "another", fix=f"choose another --run-id or continue it with "
                                      f"--resume {run_dir.name}")
    overrides = {**overrides, "run_dir": str(run_dir.resolve())}
    effective = resolve_parameters(overrides, notebooks)
    for notebook, params in effective.items():
        validate(notebook, params)
    fingerprint = _data_fingerprint(effective)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        run_dir.mkdir()
    except FileExistsError:  # another run took the name since the check above
        raise RunExistsError(f"run directory '{run_dir}' already exists; a run never overwrites "
                       "another", fix="choose another --run-id") from None
    write_json(run_dir / "params.json", {"run_id": run_dir.name, "overrides": overrides,
                                         "notebooks": effective})
    write_json(run_dir / "env.json", environment_info(fingerprint))
    return effective


def _create_timestamped_run(overrides: dict[str, Any], runs_dir: Path,
                            attempts: int = 100) -> Path:
    """:func:`create_run` under a fresh timestamp id; ``-2``, ``-3``, ... is appended when
    another run started in the same second took the name."""
    stamp = new_run_id()
    for attempt in range(1, attempts + 1):
        run_dir = runs_dir / (stamp if attempt == 1 else f"{stamp}-{attempt}")
        if run_dir.exists():
            continue
        try:
            create_run(overrides, run_dir)
        except RunExistsError:
            continue  # another run started in the same second
        return run_dir
    raise LabError(f"no free run id under '{runs_dir}' for {stamp}", fix="pass --run-id")


def run_notebooks(run_dir: Path, notebooks: tuple[str, ...] = NOTEBOOKS,
                  progress: bool = True, log=print) -> None:
    """Execute the notebooks of an existing run that have not completed yet, in order."""
    effective = read_json(run_dir / "params.json")["notebooks"]
    for params in effective.values():
        if "run_dir" in params:  # the folder may have been moved or copied since it was made
            params["run_dir"] = str(run_dir.resolve())
    status = _read_status(run_dir)
    for number, notebook in enumerate(notebooks, start=1):
        tag = f"[{number}/{len(notebooks)}] {notebook}"
        if status.get(notebook, {}).get("state") == "completed":
            log(f"{tag}: completed earlier, reused")
            continue
        log(f"{tag} ...")
        _mark(run_dir, notebook, "running")
        try:
            seconds = execute_notebook(notebook, run_dir, effective[notebook], progress)
        except LabError:
            _mark(run_dir, notebook, "failed")
            raise
        _mark(run_dir, notebook, "completed", round(seconds, 1))
        log(f"{tag} done in {seconds:.0f} s")


def run_pipeline(overrides: dict[str, Any], run_id: str | None = None,
                 runs_dir: str | os.PathLike = "runs", resume: bool = False,
                 until: str | None = None, progress: bool = True, log=print) -> Path:
    """Execute the notebook chain into ``runs_dir/<run_id>`` and return the run directory.

    Args:
        overrides: parameter values (``NAME`` or ``scope.NAME``) over the notebooks' defaults.
        run_id: the run's folder name (default: a UTC timestamp).
        runs_dir: where run folders live.
        resume: continue the existing run ``run_id`` from its first unfinished notebook
            with its saved parameters (``overrides`` must then be empty).
        until: stop after this notebook (a name or a scope such as "03" or "ae2").
    """
    runs_dir = Path(runs_dir)
    notebooks = NOTEBOOKS
    if until is not None:
        last = SCOPES.get(until, until)
        if last not in NOTEBOOKS:
            raise ParameterError(f"--until {until!r} is not a notebook",
                                 fix=f"use one of {sorted(SCOPES)}")
        notebooks = NOTEBOOKS[:NOTEBOOKS.index(last) + 1]
    start = time.perf_counter()
    if resume:
        if not run_id:
            raise ParameterError("--resume needs the id of the run to continue",
                                 fix="pass --resume RUN_ID (a folder under runs/)")
        run_dir = runs_dir / run_id
        if not (run_dir / "params.json").is_file():
            raise LabError(f"run '{run_dir}' has no params.json, so it cannot be resumed",
                           fix="check the run id (ls runs/) or start a new run")
        if overrides:
            raise ParameterError("a resumed run keeps the parameters in its params.json",
                                 fix="drop the -p/--epochs/--data-dir options, or start a new run")
        check_resumed_environment(run_dir, log)
    else:
        if run_id:
            run_dir = runs_dir / run_id
            create_run(overrides, run_dir)
        else:
            run_dir = _create_timestamped_run(overrides, runs_dir)
    run_notebooks(run_dir, notebooks, progress, log)
    log(f"run {run_dir.name} finished in {time.perf_counter() - start:.0f} s: {run_dir}")
    return run_dir


def summary(run_dir: str | os.PathLike) -> str:
    """A one-screen summary of a finished run: both models' main metrics and thresholds."""
    run_dir = Path(run_dir)
    lines = [f"Run {run_dir.name}  ({run_dir})"]
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.is_file():
        lines.append("  no metrics.json yet (notebook 04 has not completed)")
        return "\n".join(lines)
    metrics = read_json(metrics_path)

    def fmt(value):
        return "  n/a" if value is None else f"{value:5.3f}"

    lines.append(f"  {'model':<6}{'img AUROC':>10}{'px AUROC':>10}{'AUPRO':>8}{'F1max':>8}"
                 f"{'F1@thr':>8}{'threshold':>12}")
    for model in ("ae1", "ae2"):
        m = metrics.get(model)
        if not m:
            continue
        at = m.get("at_threshold") or {}
        lines.append(f"  {model:<6}{fmt(m.get('image_auroc')):>10}{fmt(m.get('pixel_auroc')):>10}"
                     f"{fmt(m.get('aupro')):>8}{fmt(m.get('f1_max')):>8}{fmt(at.get('f1')):>8}"
                     f"{m.get('image_threshold', float('nan')):>12.5g}")
    gallery = run_dir / "figures"
    if gallery.is_dir():
        lines.append(f"  gallery: {gallery}/ ({len([p for p in gallery.glob('*.png') if not p.name.startswith('.')])} figures), "
                     f"notebook: {run_dir / (NOTEBOOKS[-1] + '.ipynb')}")
    return "\n".join(lines)


def refresh_notebooks(notebooks: tuple[str, ...] = NOTEBOOKS, timeout: int = 1800,
                      log=print) -> None:
    """Re-execute the committed notebooks in place with their defaults (``make notebooks``).

    Use it after an intended change of behaviour, so that the outputs nbval compares
    against are current. Cells run with ``notebooks/`` as the working directory, exactly as
    nbval runs them; each notebook is replaced atomically once it has run completely.
    """
    import nbclient
    import nbformat

    from .artifacts import write_text

    for notebook in notebooks:
        path = NOTEBOOK_DIR / f"{notebook}.ipynb"
        log(f"executing {path.name} ...")
        start = time.perf_counter()
        nb = nbformat.read(path, as_version=4)
        client = nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                         resources={"metadata": {"path": str(NOTEBOOK_DIR)}},
                                         config=kernel_config())
        client.execute()
        for cell in nb.cells:
            cell.metadata.pop("execution", None)
        write_text(path, nbformat.writes(nb) + "\n")
        log(f"  {path.name} done in {time.perf_counter() - start:.0f} s")
