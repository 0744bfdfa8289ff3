"""`python -m benchmarks [NAME ...]`: run the benchmarks (all by default) in one process order.

Each prints its table and writes runs/bench/<name>.json; the summary at the end collects
the headline ratios against the targets.
"""

from __future__ import annotations

import importlib
import sys

ORDER = ("bench_ceiling", "bench_ssim", "bench_training", "bench_inference", "bench_pipeline",
         "bench_run")


def main(names: list[str]) -> int:
    chosen = [n if n.startswith("bench_") else f"bench_{n}" for n in names] or list(ORDER)
    for name in chosen:
        print(f"\n=== {name} ===", flush=True)
        sys.argv = [name]  # each script parses its own options; run it with its defaults
        importlib.import_module(f"benchmarks.{name}").main()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
