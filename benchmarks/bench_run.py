"""`make run` on the defaults: wall time per notebook and in total, and peak resident memory.

Runs the full chain into runs/bench-run-<timestamp>/ and samples the resident memory of the
whole process tree (the CLI plus every kernel) every 0.5 s with psutil.
"""

from __future__ import annotations

import sys

from anomaly_utils.artifacts import read_json
from anomaly_utils.pipeline.run_ids import new_run_id
from benchmarks.common import ROOT, run_watched, table, write_result


def main() -> dict:
    run_id = new_run_id("bench-run-")
    code, total, peak = run_watched([sys.executable, "-m", "anomaly_utils", "run",
                                     "--data-dir", "data/synthetic_carpet", "--run-id", run_id,
                                     "--quiet"], cwd=ROOT)
    if code != 0:
        raise SystemExit(f"make run failed with status {code}")
    status = read_json(ROOT / "runs" / run_id / "status.json")
    metrics = read_json(ROOT / "runs" / run_id / "metrics.json")
    rows = [{"notebook": nb, "seconds": s["seconds"]} for nb, s in status.items()]
    rows.append({"notebook": "total (incl. start-up)", "seconds": total})
    print(table(rows, f"make run on the defaults (run {run_id})"))
    print(f"peak resident memory of the process tree: {peak / 2**30:.2f} GiB")
    result = {"run_id": run_id, "seconds_per_notebook": {r["notebook"]: r["seconds"]
                                                         for r in rows},
              "total_seconds": total, "peak_rss_gib": peak / 2**30,
              "metrics": {m: {k: metrics[m][k] for k in ("image_auroc", "pixel_auroc", "aupro")}
                          for m in ("ae1", "ae2")}}
    write_result("run", result)
    return result


if __name__ == "__main__":
    main()
