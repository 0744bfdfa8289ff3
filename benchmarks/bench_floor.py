"""Benchmark: the statistics floor's nearest-pixel form, its BLAS threads and its map memo.

On generated 300x300 grayscale images, the shape of an ELPV cell (the exact search's cost
depends on the shapes, not on the values):

1. Mapping ``--images`` images with the nearest-pixel form, its distance loops on one BLAS
   thread (as the floor runs them) against a pool of one thread per core, on an idle machine
   and with one busy process per core beside it (as when notebook kernels, runs or tests share
   the machine). The distances are the same either way; the rows say how much the pool's
   hand-offs cost thousands of small matrix products.
2. The floor's choice as notebook 01 makes it (``fit_floor`` with the form and eigen stages,
   then the chosen floor's maps of the validation set) with the memo of mapped image sets and
   without it (``_MEMO_IMAGE_SETS = 0``).

Prints both tables and writes ``runs/bench/floor.json``::

    .venv/bin/python -m benchmarks floor
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from contextlib import contextmanager

import numpy as np

from benchmarks.common import table, write_result

SIDE = 300


def _images(n: int, seed: int) -> np.ndarray:
    """(n, SIDE, SIDE, 1) uint8: a smooth shading under fine noise, each image its own."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIDE, :SIDE] / SIDE
    out = np.empty((n, SIDE, SIDE, 1), np.uint8)
    for k in range(n):
        shade = 0.5 + 0.2 * np.sin(2 * np.pi * (xx * rng.uniform(0.5, 2) + yy))
        out[k, ..., 0] = np.clip((shade + rng.normal(0, 0.05, shade.shape)) * 255, 0, 255)
    return out


@contextmanager
def _busy_cores():
    """One process per core spinning in Python for as long as the block runs."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                for _ in range(os.cpu_count() or 1)]
    try:
        time.sleep(1.0)  # let them take the cores
        yield
    finally:
        for p in spinners:
            p.kill()
            p.wait()


def _seconds(fn) -> tuple[float, object]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def blas_threads(n_train: int, n_images: int) -> list[dict]:
    from threadpoolctl import threadpool_limits

    from anomaly_utils.scoring.statistics_floor import StatisticsFloor, as_unit_images

    floor = StatisticsFloor(form="nearest", gradient="directional").fit(_images(n_train, 0))
    images = as_unit_images(_images(n_images, 1))
    cores = os.cpu_count() or 1
    rows, reference = [], None
    for load in ("idle", f"{cores} busy processes beside it"):
        for threads in (1, cores):
            def mapped(threads=threads):
                with threadpool_limits(threads, user_api="blas"):
                    return floor._raw_maps_one_thread(images, None)

            if load == "idle":
                seconds, maps = _seconds(mapped)
            else:
                with _busy_cores():
                    seconds, maps = _seconds(mapped)
            reference = maps if reference is None else reference
            rows.append({"machine": load, "BLAS threads": threads, "seconds": seconds,
                         "images/s": n_images / seconds,
                         "max |diff| vs first row": float(np.abs(maps - reference).max())})
    return rows


def memo(n_train: int, n_val: int) -> list[dict]:
    from anomaly_utils.scoring import statistics_floor
    from anomaly_utils.scoring.floor_choice import fit_floor

    train = _images(n_train, 0)
    images = _images(n_val, 2)
    labels = np.arange(n_val) % 2
    masks = np.zeros((n_val, 128, 128), bool)
    for k in np.flatnonzero(labels):  # a dark square, its mask at the maps' size
        images[k, 100:160, 120:180] //= 2
        masks[k, 43:68, 51:77] = True
    rows, kept = [], statistics_floor._MEMO_IMAGE_SETS
    for name, sets in (("with the memo", kept), ("without", 0)):
        statistics_floor._MEMO_IMAGE_SETS = sets
        try:
            def choose():
                chosen = fit_floor(train, images, labels, masks, variant="positional",
                                   gradient="directional", windows=0.25,
                                   normalize="standard")
                return chosen, chosen.floor.score(images)

            seconds, (chosen, scored) = _seconds(choose)
        finally:
            statistics_floor._MEMO_IMAGE_SETS = kept
        rows.append({"floor's choice": name, "chosen": chosen.name, "seconds": seconds,
                     "validation maps sum": float(scored.maps.astype(np.float64).sum())})
    return rows


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=512,
                        help="training images (ELPV poly has 589 after validation)")
    parser.add_argument("--images", type=int, default=16, help="images mapped per BLAS row")
    parser.add_argument("--val", type=int, default=64, help="validation images of the choice")
    args = parser.parse_args()
    threads = blas_threads(args.train, args.images)
    print(table(threads, f"Nearest-pixel maps of {args.images} images of {SIDE}x{SIDE} px, "
                         f"bank of {args.train} training images"))
    choice = memo(args.train, args.val)
    print(table(choice, f"\nThe floor's choice on {args.val} validation images of "
                        f"{SIDE}x{SIDE} px, {args.train} training images"))
    result = {"blas_threads": threads, "memo": choice,
              "pool_over_one_thread_busy": threads[3]["seconds"] / threads[2]["seconds"],
              "without_over_with_memo": choice[1]["seconds"] / choice[0]["seconds"]}
    write_result("floor", result)
    return result


if __name__ == "__main__":
    main()
