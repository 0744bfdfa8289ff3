"""Benchmark: TensorFlow's thread settings against training throughput.

Runs ``bench_training`` (batch 32, no XLA) in fresh processes with
``TF_NUM_INTRAOP_THREADS`` (threads inside one op, e.g. a convolution) and
``TF_NUM_INTEROP_THREADS`` (ops run side by side) set to each combination of 1 and the core
count, plus TensorFlow's default (0 = chosen by TensorFlow). The lab sets neither, so the
default row is what it runs with. Prints a table and writes ``runs/bench/threads.json``.

    .venv/bin/python -m benchmarks threads
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import BENCH_DIR, table, write_result  # noqa: E402


def _run(intra: int, inter: int) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "TF_NUM_INTRAOP_THREADS": str(intra),
           "TF_NUM_INTEROP_THREADS": str(inter)}
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=BENCH_DIR) as tmp:
        out = Path(tmp) / "training.json"
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_training.py"),
                        "--backends", "tensorflow", "--batch-sizes", "32", "--jit", "off",
                        "--out", str(out)],
                       check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
        return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> int:
    cores = os.cpu_count() or 1
    settings = [(0, 0)] + [(a, b) for a in sorted({1, cores}) for b in sorted({1, cores})]
    rows = []
    for intra, inter in settings:
        result = _run(intra, inter)
        row = {"intra-op": intra or "default", "inter-op": inter or "default"}
        for r in result["results"]:
            row[f"{r['model']} img/s"] = r["images_per_s"]
        rows.append(row)
        print(row, flush=True)
    print(table(rows, "training throughput (batch 32, no XLA) by TensorFlow thread setting"))
    path = write_result("threads", {"benchmark": "threads", "rows": rows})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
