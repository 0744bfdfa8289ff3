"""Shared helpers of the benchmark scripts: timing, tables and JSON results in runs/bench/."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil

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


def tree_rss(process: psutil.Process) -> int:
    """Resident memory of ``process`` and all its descendants, bytes."""
    total = 0
    for p in [process, *process.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


def run_watched(command: list[str], interval: float = 0.5, **popen) -> tuple[int, float, int]:
    """Run ``command`` and sample its process tree's resident memory every ``interval`` s.

    Returns ``(exit status, wall seconds, peak resident bytes)``.
    """
    start = time.perf_counter()
    child = subprocess.Popen(command, **popen)
    watched = psutil.Process(child.pid)
    peak = 0
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            try:
                peak = max(peak, tree_rss(watched))
            except psutil.NoSuchProcess:
                return
            time.sleep(interval)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    code = child.wait()
    done.set()
    return code, time.perf_counter() - start, peak
