"""Parameter sweeps: every combination of values, each in its own run directory.

1. Every combination of the swept values becomes a run under ``runs/<sweep-id>/<config>/``
   (created and checked up front, like a single run).
2. The notebooks run in waves, 01 to 05. In each wave, configurations whose parameters for
   that notebook (and for the notebooks it reads from) are identical share one execution:
   one of them runs it, the others receive a copy of its outputs. Sweeping ``ae2.epochs``
   therefore trains AE-1 once.
3. Within a wave, up to ``jobs`` executions run in parallel (each a separate kernel) with the
   CPU's threads split between them.
4. ``comparison.csv`` and an executed ``comparison.ipynb`` (table, each metric against each
   swept parameter, the best configuration) close the sweep. The best configuration is the
   one with the highest AE-2 image AUROC on the pseudo-labelled validation set (validation
   normals with pasted synthetic anomalies, ``scores_val_pseudo.npz``); the test columns are
   reported beside it and never used to choose.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from anomaly_utils.artifacts import read_json, write_json
from anomaly_utils.errors import ParameterError
from anomaly_utils.evaluation.metrics import image_auroc, pixel_auroc
from anomaly_utils.pipeline.parameters import NOTEBOOKS
from anomaly_utils.pipeline.provenance import kernel_config
from anomaly_utils.pipeline.runs import (
    create_run,
    execute_notebook,
    mark_status,
    new_run_id,
    read_status,
)
from anomaly_utils.scoring.stored import load_scores

# What each notebook reads from earlier notebooks, and what it writes into the run.
UPSTREAM = {NOTEBOOKS[0]: (), NOTEBOOKS[1]: (), NOTEBOOKS[2]: (),
            NOTEBOOKS[3]: (NOTEBOOKS[1], NOTEBOOKS[2]),
            NOTEBOOKS[4]: (NOTEBOOKS[1], NOTEBOOKS[2], NOTEBOOKS[3])}
OUTPUTS = {NOTEBOOKS[0]: ("data_summary.json", "figures/01_*"),
           NOTEBOOKS[1]: ("ae1", "figures/02_*"), NOTEBOOKS[2]: ("ae2", "figures/03_*"),
           NOTEBOOKS[3]: ("thresholds.json", "metrics.json", "figures/04_*"),
           NOTEBOOKS[4]: ("figures/05_*",)}
METRICS = ("image_auroc", "pixel_auroc", "aupro", "f1_max")
VALIDATION_METRICS = ("val_image_auroc", "val_pixel_auroc")
SELECT_BY = "ae2_val_image_auroc"


def config_name(values: dict[str, Any]) -> str:
    """A folder name for one configuration, e.g. ``epochs=5_latent_dim=64``."""
    return "_".join(f"{name.replace('.', '-')}={value}" for name, value in values.items())


def work_key(notebook: str, effective: dict[str, dict[str, Any]]) -> str:
    """What a notebook's result depends on: its parameters and its upstream notebooks'."""
    parts = {nb: {k: v for k, v in effective[nb].items() if k != "run_dir"}
             for nb in (notebook, *UPSTREAM[notebook])}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def copy_outputs(notebook: str, source: Path, target: Path) -> None:
    """Copy a notebook's outputs from one run of the sweep to another."""
    for pattern in OUTPUTS[notebook]:
        for path in source.glob(pattern):
            destination = target / path.relative_to(source)
            destination.parent.mkdir(parents=True, exist_ok=True)
            if path.is_dir():
                shutil.copytree(path, destination, dirs_exist_ok=True)
            else:
                shutil.copy2(path, destination)
    shutil.copy2(source / f"{notebook}.ipynb", target / f"{notebook}.ipynb")


def split_threads(jobs: int) -> int:
    """Threads per job so that ``jobs`` parallel kernels share the CPU without oversubscribing."""
    return max(1, (os.cpu_count() or 1) // jobs)


def run_sweep(grid: dict[str, list[str]], fixed: dict[str, Any], sweep_id: str | None = None,
              runs_dir: str | os.PathLike = "runs", jobs: int = 1, log=print) -> Path:
    """Run every combination of ``grid`` (with ``fixed`` parameters) and compare them.

    Args:
        grid: swept parameter -> list of values (strings as on the command line).
        fixed: parameters that every configuration shares.
        jobs: notebook executions in parallel within one wave.

    Returns:
        The sweep directory holding one run folder per configuration, ``comparison.csv`` and
        ``comparison.ipynb``.
    """
    if not grid or any(not values for values in grid.values()):
        raise ParameterError("a sweep needs at least one parameter with one or more values",
                             fix="pass e.g. -p epochs 5 20 50")
    if jobs < 1:
        raise ParameterError(f"--jobs must be >= 1, got {jobs}")
    sweep_dir = Path(runs_dir).resolve() / (sweep_id or new_run_id("sweep-"))
    if sweep_dir.exists():
        raise ParameterError(f"sweep directory '{sweep_dir}' already exists",
                             fix="choose another --sweep-id")
    names = list(grid)
    configs = [dict(zip(names, values, strict=True))
               for values in itertools.product(*grid.values())]
    runs: dict[str, dict] = {}
    for values in configs:
        run_dir = sweep_dir / config_name(values)
        runs[run_dir.name] = {"dir": run_dir, "values": values,
                              "effective": create_run({**fixed, **values}, run_dir)}
    write_json(sweep_dir / "sweep.json", {"grid": grid, "fixed": fixed,
                                          "configs": {k: r["values"] for k, r in runs.items()}})
    threads = split_threads(jobs)
    os.environ.update({"TF_NUM_INTRAOP_THREADS": str(threads), "TF_NUM_INTEROP_THREADS": "1",
                       "OMP_NUM_THREADS": str(threads)})
    for notebook in NOTEBOOKS:
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
                copy_outputs(notebook, runs[leader]["dir"], run["dir"])
                mark_status(run["dir"], notebook, "completed")
                status = read_status(run["dir"])
                status[notebook]["reused_from"] = leader
                write_json(run["dir"] / "status.json", status)
    table = comparison_table(sweep_dir)
    table.to_csv(sweep_dir / "comparison.csv", index=False)
    write_comparison_notebook(sweep_dir)
    return sweep_dir


def comparison_table(sweep_dir: str | os.PathLike):
    """One row per configuration: the swept values and both models' main metrics."""
    import pandas as pd

    sweep_dir = Path(sweep_dir)
    spec = read_json(sweep_dir / "sweep.json")
    rows = []
    for name, values in spec["configs"].items():
        metrics = read_json(sweep_dir / name / "metrics.json")
        row = {"config": name, **values}
        for model in ("ae1", "ae2"):
            row.update({f"{model}_{k}": v for k, v in
                        validation_metrics(sweep_dir / name / model).items()})
        for model in ("ae1", "ae2"):
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
            for model in ("ae1", "ae2"):
                grouped = table.groupby(param, sort=False)[f"{model}_{metric}"].mean()
                ax.plot(grouped.index.astype(str), grouped.values, marker="o", label=model,
                        color=plots.MODEL_COLORS[model])
            ax.set_xlabel(param)
            ax.set_ylabel(metric)
            ax.legend(fontsize=7)
    fig.tight_layout()
    plots.save(fig, Path(sweep_dir) / "comparison.png")
    return fig
