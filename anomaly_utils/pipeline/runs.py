"""Headless runs of the notebook chain with papermill.

A run executes ``notebooks/01_*.ipynb`` to ``05_*.ipynb`` in order into ``runs/<run-id>/``:

1. The parameters are resolved and checked (:mod:`anomaly_utils.pipeline.parameters`);
   ``params.json`` (every effective parameter) and ``env.json`` (versions, git commit, data
   fingerprint, hardware, the Keras backend) are written before anything runs.
2. Each notebook runs with papermill; ``status.json`` records which ones completed, so
   ``--resume`` continues from the first that did not (training itself resumes from its
   last finished epoch). A failing cell stops the run with the notebook and cell named, and
   the partially executed notebook stays in the run directory. A resumed run first
   compares its packages, commit and data with ``env.json``; a difference is a warning,
   and it is recorded in ``env.json`` under ``"resumes"``.
3. Every kernel of a run, resumed or not, runs on the Keras backend that ``env.json``
   records (``--backend``, else ``KERAS_BACKEND``, else Keras' own default): a resume, a
   sweep's kernels and a cluster's workers all use the run's backend.

Example:
    >>> run_pipeline({"data_dir": "data/synthetic_carpet", "epochs": 2})   # doctest: +SKIP
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from anomaly_utils.artifacts import read_json, write_json, write_text
from anomaly_utils.errors import LabError, ParameterError
from anomaly_utils.evaluation.report import whole_images_text
from anomaly_utils.pipeline import run_ids
from anomaly_utils.pipeline.parameters import (
    NOTEBOOK_DIR,
    NOTEBOOKS,
    SCOPES,
    resolve_parameters,
    validate,
)
from anomaly_utils.pipeline.provenance import (
    check_resumed_environment,
    data_fingerprint,
    environment_info,
    keras_backend,
    kernel_config,
    kernel_manager_class,
    recorded_backend,
)
from anomaly_utils.pipeline.run_ids import RunExistsError
from anomaly_utils.scoring.stored import CANDIDATES
from anomaly_utils.training.strategy import STRATEGIES, check_backend


def _status_path(run_dir: Path) -> Path:
    return run_dir / "status.json"


def read_status(run_dir: Path) -> dict:
    path = _status_path(run_dir)
    return read_json(path) if path.exists() else {}


def mark_status(run_dir: Path, notebook: str, state: str, seconds: float | None = None) -> None:
    status = read_status(run_dir)
    status[notebook] = {"state": state, "seconds": seconds}
    write_json(_status_path(run_dir), status)


def _failure_message(notebook: str, exc: Exception) -> str:
    cell = getattr(exc, "exec_count", None)
    ename = getattr(exc, "ename", type(exc).__name__)
    evalue = getattr(exc, "evalue", str(exc))
    where = f"cell [{cell}]" if cell is not None else "a cell"
    return f"notebook {notebook} failed in {where}: {ename}: {evalue}"


# A kernel binds the ports that its manager found free a moment before; a kernel started at
# the same time by another process (a sweep's or a test suite's) can take one of them first.
# That kernel dies before it runs anything, so starting it again on fresh ports is safe.
KERNEL_DIED = "Kernel died before replying to kernel_info"
KERNEL_START_ATTEMPTS = 3


def _lost_port_race(stderr_log: Path, offset: int) -> bool:
    """Whether what the kernel wrote to ``stderr_log`` after byte ``offset`` says that one of
    its ports was taken ("Address already in use")."""
    try:
        with open(stderr_log, "rb") as log:
            log.seek(offset)
            return b"Address already in use" in log.read()
    except OSError:
        return False


def execute_notebook(notebook: str, run_dir: Path, parameters: dict, progress: bool = True,
                     kernel_name: str | None = None, backend: str | None = None) -> float:
    """Run one notebook with papermill into ``run_dir/<notebook>.ipynb``; return seconds.

    What the kernel process writes to its standard error outside any cell (TensorFlow's C++
    log lines) goes to ``run_dir/logs/<notebook>.stderr.log``, not the console. The kernel
    runs on the Keras backend recorded in ``run_dir/env.json`` (without a record, on
    ``backend``, else this process's).

    Raises:
        LabError: a cell failed; the message names the notebook and the cell, and the
            partially executed notebook stays at ``run_dir/<notebook>.ipynb``. Or the kernel
            died before it ran a cell, for another reason than a port that another kernel
            took (that one starts again, up to ``KERNEL_START_ATTEMPTS`` times); the message
            names its log.
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError

    start = time.perf_counter()
    # Absolute: papermill changes the working directory to notebooks/ while it executes, and
    # a sweep runs several notebooks at once in threads of this one process.
    output = run_dir.resolve() / f"{notebook}.ipynb"
    stderr_log = run_dir.resolve() / "logs" / f"{notebook}.stderr.log"
    for attempt in range(1, KERNEL_START_ATTEMPTS + 1):
        logged = stderr_log.stat().st_size if stderr_log.exists() else 0
        try:
            papermill.execute_notebook(
                str(NOTEBOOK_DIR / f"{notebook}.ipynb"), str(output), parameters=parameters,
                cwd=str(NOTEBOOK_DIR), progress_bar=progress, kernel_name=kernel_name,
                request_save_on_cell_execute=True,
                config=kernel_config(stderr_log, recorded_backend(run_dir) or backend),
                kernel_manager_class=kernel_manager_class(),
            )
            break
        except PapermillExecutionError as exc:
            raise LabError(_failure_message(notebook, exc),
                           fix=f"read the traceback in '{output}', fix the cause, then rerun "
                               f"with --resume {run_dir.name}") from exc
        except RuntimeError as exc:
            if KERNEL_DIED not in str(exc):
                raise
            if _lost_port_race(stderr_log, logged) and attempt < KERNEL_START_ATTEMPTS:
                continue
            raise LabError(f"the kernel for notebook {notebook} died before it ran a cell",
                           fix=f"read its output in '{stderr_log}', fix the cause, then rerun "
                               f"with --resume {run_dir.name}") from exc
    return time.perf_counter() - start


def create_run(overrides: dict[str, Any], run_dir: Path,
               notebooks: tuple[str, ...] = NOTEBOOKS,
               backend: str | None = None) -> dict[str, dict[str, Any]]:
    """Check parameters and data, then create ``run_dir`` with params.json and env.json.

    Everything that can be checked is checked before the folder exists, so a typo never
    leaves an empty run behind. ``backend`` is the Keras backend of the run's kernels
    (default: ``KERAS_BACKEND``, else Keras' own; see
    :func:`~anomaly_utils.pipeline.provenance.keras_backend`). Returns each notebook's
    effective parameters.
    """
    if run_dir.exists():
        raise RunExistsError(f"run directory '{run_dir}' already exists; a run never overwrites "
                       "another", fix=f"choose another --run-id or continue it with "
                                      f"--resume {run_dir.name}")
    overrides = {**overrides, "run_dir": str(run_dir.resolve())}
    effective = resolve_parameters(overrides, notebooks)
    for notebook, params in effective.items():
        validate(notebook, params)
    fingerprint = data_fingerprint(effective)
    backend_record = keras_backend(backend)
    for params in effective.values():
        if params.get("strategy") in STRATEGIES:  # 02 and 03 (04's is a threshold strategy)
            check_backend(params["strategy"], backend_record["name"])
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        run_dir.mkdir()
    except FileExistsError:  # another run took the name since the check above
        raise RunExistsError(f"run directory '{run_dir}' already exists; a run never overwrites "
                       "another", fix="choose another --run-id") from None
    write_json(run_dir / "params.json", {"run_id": run_dir.name, "overrides": overrides,
                                         "notebooks": effective})
    write_json(run_dir / "env.json", environment_info(fingerprint, backend_record))
    return effective


def _create_timestamped_run(overrides: dict[str, Any], runs_dir: Path,
                            backend: str | None = None) -> Path:
    """:func:`create_run` under a fresh timestamp id (:func:`run_ids.claim_new_id`: ``-2``,
    ``-3``, ... while another run started in the same second holds the id)."""
    def create(run_id: str) -> Path:
        create_run(overrides, runs_dir / run_id, backend=backend)
        return runs_dir / run_id
    return run_ids.claim_new_id(runs_dir, create)


def run_notebooks(run_dir: Path, notebooks: tuple[str, ...] = NOTEBOOKS,
                  progress: bool = True, log=print, backend: str | None = None) -> None:
    """Execute the notebooks of an existing run that have not completed yet, in order
    (``backend``: the Keras backend where the run records none)."""
    effective = read_json(run_dir / "params.json")["notebooks"]
    for params in effective.values():
        if "run_dir" in params:  # the folder may have been moved or copied since it was made
            params["run_dir"] = str(run_dir.resolve())
    status = read_status(run_dir)
    for number, notebook in enumerate(notebooks, start=1):
        tag = f"[{number}/{len(notebooks)}] {notebook}"
        if status.get(notebook, {}).get("state") == "completed":
            log(f"{tag}: completed earlier, reused")
            continue
        log(f"{tag} ...")
        mark_status(run_dir, notebook, "running")
        try:
            seconds = execute_notebook(notebook, run_dir, effective[notebook], progress,
                                       backend=backend)
        except LabError:
            mark_status(run_dir, notebook, "failed")
            raise
        mark_status(run_dir, notebook, "completed", round(seconds, 1))
        log(f"{tag} done in {seconds:.0f} s")


def notebooks_until(until: str | None) -> tuple[str, ...]:
    """The notebooks of the chain up to ``until`` (a name or a scope such as "03" or "ae2";
    None: all five), in order.

    Raises:
        ParameterError: ``until`` names no notebook.
    """
    if until is None:
        return tuple(NOTEBOOKS)
    last = SCOPES.get(until, until)
    if last not in NOTEBOOKS:
        raise ParameterError(f"--until {until!r} is not a notebook",
                             fix=f"use one of {sorted(SCOPES)}")
    return tuple(NOTEBOOKS[:NOTEBOOKS.index(last) + 1])


def run_pipeline(overrides: dict[str, Any], run_id: str | None = None,
                 runs_dir: str | os.PathLike = "runs", resume: bool = False,
                 until: str | None = None, progress: bool = True, log=print,
                 backend: str | None = None) -> Path:
    """Execute the notebook chain into ``runs_dir/<run_id>`` and return the run directory.

    Args:
        overrides: parameter values (``NAME`` or ``scope.NAME``) over the notebooks' defaults.
        run_id: the run's folder name (default: a UTC timestamp).
        runs_dir: where run folders live.
        resume: continue the existing run ``run_id`` from its first unfinished notebook
            with its saved parameters (``overrides`` must then be empty).
        until: stop after this notebook (a name or a scope such as "03" or "ae2").
        backend: the Keras backend of a new run's kernels ("tensorflow", "jax" or "torch";
            default: ``KERAS_BACKEND``, else Keras' own). A resumed run keeps the backend it
            started with; naming another one is an error.
    """
    runs_dir = Path(runs_dir)
    notebooks = notebooks_until(until)
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
        _check_resumed_backend(run_dir, backend, log)
        check_resumed_environment(run_dir, log)
    else:
        if run_id:
            run_dir = runs_dir / run_id
            create_run(overrides, run_dir, backend=backend)
        else:
            run_dir = _create_timestamped_run(overrides, runs_dir, backend=backend)
    run_notebooks(run_dir, notebooks, progress, log, backend=backend)
    log(f"run {run_dir.name} finished in {time.perf_counter() - start:.0f} s: {run_dir}")
    return run_dir


def _check_resumed_backend(run_dir: Path, backend: str | None, log) -> None:
    """Refuse a resume that names another Keras backend than the run's; say so when the
    environment's ``KERAS_BACKEND`` differs (the run's own backend is used)."""
    started = recorded_backend(run_dir)
    if started is None:
        return  # a run from before backends were recorded: --backend or the environment's
    if backend is not None and backend != started:
        raise ParameterError(
            f"run '{run_dir.name}' started on the Keras backend '{started}' (its env.json), "
            f"and a resumed run keeps its backend, so --backend {backend} cannot apply",
            fix=f"drop --backend (or pass --backend {started}), or start a new run with "
                f"--backend {backend}")
    environment = os.environ.get("KERAS_BACKEND")
    if backend is None and environment and environment != started:
        log(f"note: run '{run_dir.name}' started on the Keras backend '{started}' and "
            f"continues on it (KERAS_BACKEND={environment} applies to new runs only)")


def summary(run_dir: str | os.PathLike) -> str:
    """A one-screen summary of a finished run: every candidate's main test metrics and
    threshold, its validation selection score and the share of bootstrap resamples of the
    validation set in which it comes first, and the candidate chosen on validation."""
    run_dir = Path(run_dir)
    lines = [f"Run {run_dir.name}  ({run_dir})"]
    data_summary = run_dir / "data_summary.json"  # notebook 01's, with what resizing does
    if data_summary.is_file():
        lines += [f"  note: {note}" for note in read_json(data_summary).get("notes", [])]
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.is_file():
        lines.append("  no metrics.json yet (notebook 04 has not completed)")
        return "\n".join(lines)
    metrics = read_json(metrics_path)
    choice = metrics.get("choice") or {}

    def fmt(value):
        return "  n/a" if value is None else f"{value:5.3f}"

    first_in = (choice.get("confidence") or {}).get("first_share") or {}
    lines.append(f"  {'model':<6}{'val sel.':>9}{'1st in':>8}{'img AUROC':>10}{'px AUROC':>10}"
                 f"{'AUPRO':>8}"
                 f"{'F1max':>8}{'F1@thr':>8}{'threshold':>12}")
    for model in CANDIDATES:
        m = metrics.get(model)
        if not m:
            continue
        at = m.get("at_threshold") or {}
        mark = " *" if model == choice.get("model") else ""
        share = f"{first_in[model]:.0%}" if model in first_in else "n/a"
        lines.append(f"  {model:<6}{fmt((choice.get('scores') or {}).get(model)):>9}{share:>8}"
                     f"{fmt(m.get('image_auroc')):>10}{fmt(m.get('pixel_auroc')):>10}"
                     f"{fmt(m.get('aupro')):>8}{fmt(m.get('f1_max')):>8}{fmt(at.get('f1')):>8}"
                     f"{m.get('image_threshold', float('nan')):>12.5g}{mark}")
    if choice:
        lines.append(f"  * chosen on validation: {choice['reason']}; test columns for report only")
    whole = whole_images_text({model: metrics[model] for model in CANDIDATES if metrics.get(model)})
    if whole:
        lines.append("  the images the parts were cut from (each scored by its highest part):")
        lines += [f"    {line}" for line in whole.splitlines()]
    gallery = run_dir / "figures"
    if gallery.is_dir():
        lines.append(f"  gallery: {gallery}/ ({len([p for p in gallery.glob('*.png') if not p.name.startswith('.')])} figures), "
                     f"notebook: {run_dir / (NOTEBOOKS[-1] + '.ipynb')}")
    return "\n".join(lines)


def without_stderr(outputs: list) -> list:
    """A code cell's outputs less its stderr stream. What lands there is TensorFlow's C++ log
    (e.g. a graph-rewrite notice), which comes and goes with the machine and its load, and
    warnings that depend on how training went (AE-2's collapse verdicts): never a result, so
    the committed notebooks leave it out, and nbval ignores it."""
    return [o for o in outputs if not (o.get("output_type") == "stream"
                                       and o.get("name") == "stderr")]


def refresh_notebooks(notebooks: tuple[str, ...] = NOTEBOOKS, timeout: int = 1800,
                      log=print) -> None:
    """Re-execute the committed notebooks in place with their defaults (``make notebooks``).

    Use it after an intended change of behaviour, so that the outputs nbval compares
    against are current. Cells run with ``notebooks/`` as the working directory, exactly as
    nbval runs them; each notebook is replaced atomically once it has run completely.
    """
    import nbclient
    import nbformat


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
            if cell.cell_type == "code":
                cell.outputs = without_stderr(cell.outputs)
        write_text(path, nbformat.writes(nb) + "\n")
        log(f"  {path.name} done in {time.perf_counter() - start:.0f} s")
