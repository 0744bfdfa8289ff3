"""Parameter sweeps: every combination of values, each in its own run directory.

1. Every combination of the swept values becomes a run under ``runs/<sweep-id>/<config>/``
   (created and checked up front, like a single run).
2. The notebooks run in waves, 01 to 05 (to 04 with ``until="04"``, which leaves out the
   galleries: the comparison needs only the metrics notebook 04 writes). In each wave,
   configurations whose parameters for that notebook (and for the notebooks it reads from)
   are identical share one execution: one of them runs it, the others receive a copy of its
   outputs. Sweeping ``ae2.epochs`` therefore trains AE-1 once.
3. Within a wave, up to ``jobs`` executions run in parallel (each a separate kernel) with the
   CPU's threads split between them.
4. ``comparison.csv`` and an executed ``comparison.ipynb`` (table, each metric against each
   swept parameter, the best configuration) close the sweep. The best configuration is the
   one with the highest AE-2 image AUROC on the pseudo-labelled validation set (validation
   normals with pasted synthetic anomalies, ``scores_val_pseudo.npz``); the test columns are
   reported beside it and never used to choose.
5. With ``cluster`` (``--cluster tcp://host:port`` or ``local:N``) the executions go to a
   ``dask.distributed`` scheduler instead of local threads, with the same sharing
   (:mod:`anomaly_utils.pipeline.cluster`): the run directories must then be on a path every
   worker reaches. A notebook that fails there is recorded in ``status.json`` and in the
   comparison table's ``error`` column instead of stopping the sweep.
"""

from __future__ import annotations

import itertools
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from anomaly_utils.artifacts import read_json, write_json
from anomaly_utils.cpus import threads_per_job
from anomaly_utils.errors import LabError, ParameterError
from anomaly_utils.evaluation.metrics import image_auroc, pixel_auroc
from anomaly_utils.pipeline.cluster import (
    RETRIES,
    connect,
    execute_notebook_task,
    parse_cluster,
)
from anomaly_utils.pipeline.parameters import NOTEBOOKS
from anomaly_utils.pipeline.provenance import kernel_config
from anomaly_utils.pipeline.run_ids import claim_new_id
from anomaly_utils.pipeline.runs import (
    create_run,
    execute_notebook,
    mark_status,
    notebooks_until,
    read_status,
)
from anomaly_utils.pipeline.sharing import take_outputs, work_key
from anomaly_utils.scoring.candidates import REGISTRY
from anomaly_utils.scoring.stored import CANDIDATES, load_scores

METRICS_NOTEBOOK = "04_threshold_selection"  # writes metrics.json, which the comparison reads
# What must be complete in a run before a notebook starts there on a cluster: notebooks 01-03
# read only the data, 04 and 05 read everything written before them (04 the data summary too).
NEEDS = {nb: (NOTEBOOKS[:i] if i >= 3 else ()) for i, nb in enumerate(NOTEBOOKS)}
MODEL_FOLDERS = {c.notebook: (c.name,) for c in REGISTRY if c.network}
METRICS = ("image_auroc", "pixel_auroc", "aupro", "f1_max")
VALIDATION_METRICS = ("val_image_auroc", "val_pixel_auroc")
SELECT_BY = "ae2_val_image_auroc"
SWEEP_PREFIX = "sweep-"  # before the timestamp of a sweep's id


def config_name(values: dict[str, Any]) -> str:
    """A folder name for one configuration, e.g. ``epochs=5_latent_dim=64``."""
    return "_".join(f"{name.replace('.', '-')}={value}" for name, value in values.items())


def share_outputs(notebook: str, leader: str, runs: dict[str, dict], name: str) -> None:
    """Give run ``name`` the outputs of ``leader``'s execution of ``notebook``, as completed."""
    take_outputs(notebook, runs[leader]["dir"], runs[name]["dir"], leader)


def _make_sweep_dir(runs_dir: Path, sweep_id: str | None) -> Path:
    """Make the sweep's empty folder: ``runs_dir/<sweep_id>``, or under a fresh
    ``sweep-<timestamp>`` id that making it claims (:func:`run_ids.claim_new_id`).

    Raises:
        ParameterError: the folder ``sweep_id`` exists.
    """
    def make(name: str) -> Path:
        (runs_dir / name).mkdir(parents=True)
        return runs_dir / name
    if sweep_id is None:
        return claim_new_id(runs_dir, make, SWEEP_PREFIX)
    try:
        return make(sweep_id)
    except FileExistsError:
        raise ParameterError(f"sweep directory '{runs_dir / sweep_id}' already exists",
                             fix="choose another --sweep-id") from None


def run_sweep(grid: dict[str, list[str]], fixed: dict[str, Any], sweep_id: str | None = None,
              runs_dir: str | os.PathLike = "runs", jobs: int = 1, log=print, *,
              cluster=None, backend: str | None = None, until: str | None = None) -> Path:
    """Run every combination of ``grid`` (with ``fixed`` parameters) and compare them.

    Args:
        grid: swept parameter -> list of values (strings as on the command line).
        fixed: parameters that every configuration shares.
        jobs: notebook executions in parallel within one wave (ignored with ``cluster``).
        cluster: ``None`` (run here, as above), a scheduler address ``tcp://host:port``,
            ``local:N`` (a ``LocalCluster`` of N one-thread worker processes on this machine)
            or a ``distributed.Client``; see :func:`anomaly_utils.pipeline.cluster.run_on_cluster`.
        backend: the Keras backend of every configuration's kernels (default:
            ``KERAS_BACKEND``, else Keras' own); each run records it in its ``env.json``.
        until: the last notebook each configuration runs ("04" or "05", the default; the
            comparison reads the metrics notebook 04 writes).

    Returns:
        The sweep directory holding one run folder per configuration, ``comparison.csv`` and
        ``comparison.ipynb``.
    """
    if not grid or any(not values for values in grid.values()):
        raise ParameterError("a sweep needs at least one parameter with one or more values",
                             fix="pass e.g. -p epochs 5 20 50")
    if jobs < 1:
        raise ParameterError(f"--jobs must be >= 1, got {jobs}")
    notebooks = notebooks_until(until)
    if METRICS_NOTEBOOK not in notebooks:
        raise ParameterError(f"--until {until} stops before {METRICS_NOTEBOOK}, which writes "
                             "the metrics the sweep compares",
                             fix="pass --until 04 (no galleries), or drop --until")
    if isinstance(cluster, str):
        parse_cluster(cluster)  # a malformed address fails before any folder is made
    sweep_dir = _make_sweep_dir(Path(runs_dir).resolve(), sweep_id)
    names = list(grid)
    configs = [dict(zip(names, values, strict=True))
               for values in itertools.product(*grid.values())]
    runs: dict[str, dict] = {}
    try:
        for values in configs:
            run_dir = sweep_dir / config_name(values)
            runs[run_dir.name] = {"dir": run_dir, "values": values,
                                  "effective": create_run({**fixed, **values}, run_dir,
                                                            backend=backend)}
    except BaseException:
        shutil.rmtree(sweep_dir, ignore_errors=True)  # a bad configuration leaves no sweep
        raise
    write_json(sweep_dir / "sweep.json", {"grid": grid, "fixed": fixed,
                                          "configs": {k: r["values"] for k, r in runs.items()}})
    if cluster is not None:
        _run_on_cluster(runs, notebooks, cluster, sweep_dir.name, log)
    else:
        _run_here(runs, notebooks, jobs, log)
    table = comparison_table(sweep_dir)
    table.to_csv(sweep_dir / "comparison.csv", index=False)
    if "error" in table and table["error"].notna().all():
        raise LabError(f"every configuration of the sweep failed ({table['error'].iloc[0]})",
                       fix=f"read the errors in '{sweep_dir / 'comparison.csv'}' and the "
                           "notebooks in the run folders")
    write_comparison_notebook(sweep_dir)
    return sweep_dir


def _run_on_cluster(runs: dict[str, dict], notebooks: tuple[str, ...], cluster,
                    sweep_name: str, log) -> None:
    """Each distinct execution as one task of a Dask cluster, submitted once it is ready.

    The executions and their sharing are those of the waves: configurations with the same
    :func:`work_key` for a notebook share one execution, whose outputs the others receive
    (copied here, by the submitting process, before anything downstream is submitted). A
    notebook is ready in a run when the notebooks it needs (:data:`NEEDS`) are complete there.
    Results are taken as soon as a task finishes, so a worker lost later costs no finished
    work. A failed execution marks its notebook and everything downstream as failed in the
    runs that share it; the other configurations go on.
    """
    from distributed import as_completed

    groups: dict[tuple[str, str], list[str]] = {}
    for notebook in notebooks:
        for name, run in runs.items():
            groups.setdefault((notebook, work_key(notebook, run["effective"])), []).append(name)
    log(f"{len(groups)} execution(s) of {len(notebooks)} notebooks for {len(runs)} "
        f"configuration(s) on the cluster")
    done: dict[tuple[str, str], str | None] = {}  # (notebook, config) -> error or None
    waiting = dict(groups)

    def finish(group: tuple[str, str], result: dict) -> None:
        notebook, names = group[0], groups[group]
        leader = names[0]
        for name in names:
            if result["state"] != "completed":
                mark_status(runs[name]["dir"], notebook, "failed")
                status = read_status(runs[name]["dir"])
                status[notebook]["error"] = result["error"]
                write_json(runs[name]["dir"] / "status.json", status)
                done[notebook, name] = result["error"]
            elif name == leader:
                mark_status(runs[name]["dir"], notebook, "completed", result["seconds"])
                if result.get("resumed_from_backup"):
                    status = read_status(runs[name]["dir"])
                    status[notebook]["resumed_from_backup"] = result["resumed_from_backup"]
                    write_json(runs[name]["dir"] / "status.json", status)
                done[notebook, name] = None
            else:
                share_outputs(notebook, leader, runs, name)
                done[notebook, name] = None

    with connect(cluster) as (client, threads):
        tasks = as_completed()
        submitted: dict[str, tuple[str, str]] = {}

        def submit_ready() -> None:
            progress = True
            while progress:
                progress = False
                for group in list(waiting):
                    notebook, leader = group[0], groups[group][0]
                    needs = [done.get((nb, leader), "") for nb in NEEDS[notebook]]
                    if "" in needs:
                        continue  # an upstream notebook is still running
                    del waiting[group]
                    progress = True
                    failed = [error for error in needs if error is not None]
                    if failed:
                        finish(group, {"state": "failed", "error": f"not run: {failed[0]}"})
                        continue
                    run = runs[leader]
                    mark_status(run["dir"], notebook, "running")
                    future = client.submit(
                        execute_notebook_task, notebook, str(run["dir"]),
                        run["effective"][notebook], threads, MODEL_FOLDERS.get(notebook, ()),
                        key=f"{sweep_name}/{leader}/{notebook}", retries=RETRIES, pure=False)
                    submitted[future.key] = group
                    tasks.add(future)

        submit_ready()
        for future in tasks:
            group = submitted.pop(future.key)
            try:
                result = future.result()
            except Exception as error:  # noqa: BLE001 - retries spent: record, go on
                result = {"state": "failed", "error": f"{type(error).__name__}: {error}"}
            future.release()
            names = groups[group]
            if result["state"] == "completed":
                log(f"  {names[0]}: {group[0]} done in {result['seconds']:.0f} s"
                    + (f" (shared by {len(names)})" if len(names) > 1 else ""))
            else:
                log(f"  {names[0]}: {group[0]} failed: {result['error']}")
            finish(group, result)
            submit_ready()


def _run_here(runs: dict[str, dict], notebooks: tuple[str, ...], jobs: int, log) -> None:
    """The notebooks in waves, leaders in ``jobs`` threads of this process (each a kernel)."""
    threads = threads_per_job(jobs)
    os.environ.update({"TF_NUM_INTRAOP_THREADS": str(threads), "TF_NUM_INTEROP_THREADS": "1",
                       "OMP_NUM_THREADS": str(threads)})
    for notebook in notebooks:
        leaders: dict[str, str] = {}
        for name, run in runs.items():
            leaders.setdefault(work_key(notebook, run["effective"]), name)
        log(f"{notebook}: {len(leaders)} execution(s) for {len(runs)} configuration(s)")

        def execute(name: str, notebook: str = notebook) -> None:
            run_dir = runs[name]["dir"]
            mark_status(run_dir, notebook, "running")
            seconds = execute_notebook(notebook, run_dir, runs[name]["effective"][notebook],
                                       progress=False)
            mark_status(run_dir, notebook, "completed", round(seconds, 1))
            log(f"  {name}: {notebook} done in {seconds:.0f} s")

        with ThreadPoolExecutor(jobs) as pool:
            list(pool.map(execute, leaders.values()))
        for name, run in runs.items():
            leader = leaders[work_key(notebook, run["effective"])]
            if leader != name:
                share_outputs(notebook, leader, runs, name)


def comparison_table(sweep_dir: str | os.PathLike):
    """One row per configuration: the swept values and both models' main metrics."""
    import pandas as pd

    sweep_dir = Path(sweep_dir)
    spec = read_json(sweep_dir / "sweep.json")
    rows = []
    for name, values in spec["configs"].items():
        row = {"config": name, **values}
        errors = [f"{notebook}: {entry['error']}" for notebook, entry in
                  read_status(sweep_dir / name).items() if entry.get("error")]
        if errors:  # a failed configuration of a cluster sweep: its error, no metrics
            for group in (VALIDATION_METRICS, METRICS):
                row.update({f"{model}_{metric}": None for model in CANDIDATES
                            for metric in group})
            rows.append({**row, "error": errors[0]})
            continue
        metrics = read_json(sweep_dir / name / "metrics.json")
        for model in CANDIDATES:
            row.update({f"{model}_{k}": v for k, v in
                        validation_metrics(sweep_dir / name / model).items()})
        for model in CANDIDATES:
            for metric in METRICS:
                row[f"{model}_{metric}"] = metrics.get(model, {}).get(metric)
        rows.append(row)
    return pd.DataFrame(rows)


def validation_metrics(model_dir: Path) -> dict[str, float | None]:
    """Image and pixel AUROC of one model on its run's pseudo-labelled validation set.

    Reads ``model_dir/scores_val_pseudo.npz`` (validation normals and the same images with
    pasted synthetic anomalies, written by the training notebook); the pixel AUROC is None
    when the file holds no anomalous pixel.
    """

    scores = load_scores(model_dir / "scores_val_pseudo.npz")
    masks = scores["masks"].astype(bool)
    return {"val_image_auroc": image_auroc(scores["labels"], scores["scores"]),
            "val_pixel_auroc": pixel_auroc(masks, scores["maps"]) if masks.any() else None}


def best_configuration(table, by: str = SELECT_BY):
    """The row of ``table`` (:func:`comparison_table`) with the highest validation ``by``.

    Raises:
        ParameterError: ``by`` is not a validation column: a sweep never chooses on test.
    """
    if "_val_" not in by or by not in table.columns:
        columns = [c for c in table.columns if "_val_" in c]
        raise ParameterError(f"a sweep chooses on a validation column, not {by!r}",
                             fix=f"use one of {columns}")
    return table.loc[table[by].astype(float).idxmax()]


def write_comparison_notebook(sweep_dir: Path) -> Path:
    """Write and execute ``comparison.ipynb``: the table, plots and the best configuration."""
    import nbformat
    import papermill
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

    cells = [
        new_markdown_cell("# Sweep comparison\n\nEach configuration's threshold-free metrics: "
                          "`*_val_*` on the pseudo-labelled validation set (validation normals "
                          "and the same images with pasted synthetic anomalies), the others on "
                          "the test set. The best configuration is chosen on validation only; "
                          "its test columns are the report."),
        new_code_cell(f"sweep_dir = {str(sweep_dir.resolve())!r}", metadata={
            "tags": ["parameters"]}),
        new_code_cell("from anomaly_utils.pipeline.sweep import comparison_table, plot_comparison\n"
                      "table = comparison_table(sweep_dir)\ntable.round(3)"),
        new_markdown_cell("## Each metric against each swept parameter"),
        new_code_cell("plot_comparison(table, sweep_dir);"),
        new_markdown_cell("## Best configuration (by AE-2 image AUROC on validation)"),
        new_code_cell("from anomaly_utils.pipeline.sweep import best_configuration\n"
                      "best_configuration(table).to_frame()"),
    ]
    notebook = new_notebook(cells=cells)
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                       "language": "python"}
    source = sweep_dir / ".comparison_source.ipynb"
    nbformat.write(notebook, source)
    output = sweep_dir / "comparison.ipynb"
    papermill.execute_notebook(str(source), str(output), progress_bar=False,
                               config=kernel_config())
    source.unlink()
    return output


def plot_comparison(table, sweep_dir: str | os.PathLike):
    """A grid of plots: rows are metrics, columns swept parameters, a line per model."""
    import matplotlib.pyplot as plt

    from anomaly_utils.visualization import plots  # matplotlib, only for the figure

    spec = read_json(Path(sweep_dir) / "sweep.json")
    params = list(spec["grid"])
    fig, axes = plt.subplots(len(METRICS), len(params), figsize=(4 * len(params), 2.6 * 4),
                             squeeze=False)
    for j, param in enumerate(params):
        for i, metric in enumerate(METRICS):
            ax = axes[i, j]
            for model in CANDIDATES:
                grouped = table.groupby(param, sort=False)[f"{model}_{metric}"].mean()
                ax.plot(grouped.index.astype(str), grouped.values, marker="o", label=model,
                        color=plots.MODEL_COLORS[model])
            ax.set_xlabel(param)
            ax.set_ylabel(metric)
            ax.legend(fontsize=7)
    fig.tight_layout()
    plots.save(fig, Path(sweep_dir) / "comparison.png")
    return fig
