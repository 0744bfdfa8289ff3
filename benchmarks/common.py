"""Shared helpers of the benchmark scripts: timing, tables and JSON results in runs/bench/."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "runs" / "bench"


def best_time(fn: Callable[[], object], repeat: int = 3, warmup: int = 1) -> float:
    """Best wall time of ``fn`` over ``repeat`` calls after ``warmup`` calls, seconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def table(rows: list[dict], title: str) -> str:
    """Render ``rows`` (dicts with the same keys) as a fixed-width text table."""
    if not rows:
        return title
    keys = list(rows[0])

    def fmt(value):
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)

    widths = {k: max(len(k), *(len(fmt(r.get(k, ""))) for r in rows)) for k in keys}
    lines = [title, "  ".join(k.ljust(widths[k]) for k in keys),
             "  ".join("-" * widths[k] for k in keys)]
    lines += ["  ".join(fmt(r.get(k, "")).ljust(widths[k]) for k in keys) for r in rows]
    return "\n".join(lines)


def write_result(name: str, payload: dict) -> Path:
    """Write ``runs/bench/<name>.json`` with the machine's description."""
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    path = BENCH_DIR / f"{name}.json"
    payload = {"machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
               **payload}
    path.write_text(json.dumps(payload, indent=2, default=float) + "\n")
    return path
