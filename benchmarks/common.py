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


def validation_and_test_metrics(val_labels, val_scores, val_masks, val_maps, ds, test_scores,
                                test_maps) -> dict:
    """Image and pixel AUROC on a pseudo-labelled validation set, and the test metrics.

    ``val_*``: (N,) labels and scores, (N, E, E) masks and maps; ``ds``: the
    :class:`anomaly_utils.data.AnomalyDataset` whose test split ``test_scores`` (M,) and
    ``test_maps`` (M, E, E) belong to (pixel metrics over the test images that have masks).
    """
    from anomaly_utils import metrics

    has = ds.test_has_mask
    return {
        "val_image_auroc": metrics.image_auroc(val_labels, val_scores),
        "val_pixel_auroc": metrics.pixel_auroc(val_masks, val_maps),
        "test_image_auroc": metrics.image_auroc(ds.test_labels, test_scores),
        "test_pixel_auroc": metrics.pixel_auroc(ds.test_masks[has], test_maps[has]),
        "test_aupro": metrics.aupro(ds.test_masks[has], test_maps[has]),
    }


def pasted_validation_set(val_images, copies: int, seed: int, mask_size: int,
                          kinds: tuple[str, ...] | None = None) -> tuple:
    """The experiment scripts' pseudo-labelled validation set.

    ``copies`` copies of the validation normals (N, S, S, C) uint8, half of them with one
    pasted anomaly (:func:`anomaly_utils.pseudo_anomalies.make_labelled_validation`, seeded
    with ``seed``; ``ae2_experiments`` uses 3 copies and the run's seed + 1) of ``kinds``
    (default: the lab's mix).

    Returns:
        ``(images, labels, masks, kinds)``: images (copies * N, S, S, C), labels (copies * N,),
        masks bool (copies * N, mask_size, mask_size), the kind names.
    """
    import numpy as np

    from anomaly_utils import data, pseudo_anomalies

    normals = np.concatenate([val_images] * copies)
    images, labels, masks, names = pseudo_anomalies.make_labelled_validation(
        normals, seed, kinds=kinds or pseudo_anomalies.PSEUDO_ANOMALY_KINDS)
    masks = np.stack([data.resize_mask(m, mask_size) for m in masks])
    return images, labels, masks, names


def append_jsonl(path: Path, rows: list[dict]) -> None:
    """Append one JSON line per row to ``path`` (folders created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
