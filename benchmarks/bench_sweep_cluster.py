"""A 4-configuration tiny sweep run serially and on ``--cluster local:2``: wall times, ratio.

The sweep is ``ae2.epochs 3 4`` x ``04.percentile 95 99`` at the test suite's tiny sizes on a
small synthetic carpet, so it holds one execution of notebooks 01 and 02, two of 03 and four
each of 04 and 05 (12 in all). The serial sweep runs them in waves in one process; the
cluster sweep submits them to a ``LocalCluster`` of two one-thread worker processes, each
kernel with half the cores. On a 2-core machine the kernels' start-up and the notebooks'
single-threaded parts are what two workers can overlap; the row mainly shows the cost of
the cluster (its start, task hand-off, the copies made by the submitting process).

``python -m benchmarks sweep_cluster`` writes runs/bench/sweep_cluster.json.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from anomaly_utils.artifacts import read_json
from anomaly_utils.data.synthetic import generate_dataset
from anomaly_utils.pipeline.sweep import run_sweep
from benchmarks.common import table, write_result

# The tiny sizes of tests/conftest.py (TINY), repeated so that the benchmark needs no tests.
TINY = {"epochs": "3", "ae1.image_size": "32", "ae1.latent_dim": "64",
        "ae2.image_size": "64", "patch_size": "32", "ae2.stride": "16",
        "patches_per_epoch": "64", "eval_size": "32", "smooth_sigma": "1.0",
        "n_bootstrap": "50", "batch_size": "16", "min_defect_area": "2",
        "head_epochs": "2", "head_patches_per_epoch": "32", "head_widths": "[8, 16]"}
GRID = {"ae2.epochs": ["3", "4"], "04.percentile": ["95", "99"]}


def _executions(sweep_dir: Path) -> int:
    """Notebook executions the sweep made (completed entries not copied from another run)."""
    return sum(1 for config in read_json(sweep_dir / "sweep.json")["configs"]
               for entry in read_json(sweep_dir / config / "status.json").values()
               if entry.get("state") == "completed" and "reused_from" not in entry)


def main() -> dict:
    base = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    try:
        data = generate_dataset(base / "carpet", seed=1, size=64, n_train=24, n_test_good=6,
                                n_per_defect=2)
        fixed = {**TINY, "data_dir": str(data)}
        rows = []
        for label, options in (("serial (--jobs 1)", {}),
                               ("cluster local:2", {"cluster": "local:2"})):
            start = time.perf_counter()
            sweep_dir = run_sweep(GRID, fixed, sweep_id=label.split()[0], runs_dir=base,
                                  log=lambda message: None, **options)
            seconds = time.perf_counter() - start
            rows.append({"sweep": label, "configurations": 4,
                         "executions": _executions(sweep_dir), "wall s": seconds})
        ratio = rows[0]["wall s"] / rows[1]["wall s"]
        print(table(rows, "4-configuration tiny sweep: serial against local:2"))
        print(f"serial / cluster wall time: {ratio:.2f}x")
        result = {"rows": rows, "serial_over_cluster": ratio, "grid": GRID}
        write_result("sweep_cluster", result)
        return result
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
