"""Benchmark: batched sliding-window reconstruction against one ``model.predict`` per patch.

An AE-2-shaped model (``anomaly_utils.models.build_ae2``, untrained; a small fully
convolutional stand-in if that module is unavailable) reconstructs 256x256 RGB images from
128x128 patches at stride 32 (25 windows per image). The batched version cuts all windows of
all images and runs them ``--batch-size`` at a time; the naive one calls ``model.predict`` on
each patch. Both average the overlaps the same way, so their outputs must agree.

It prints images/s for both, the speed-up and the largest difference, and writes
``runs/bench/inference.json``. Usage::

    .venv/bin/python benchmarks/bench_inference.py [--n 8] [--n-naive 2] [--repeats 3]
    .venv/bin/python -m benchmarks inference
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from anomaly_utils.scoring.reconstruction import (  # noqa: E402
    naive_sliding_window_reconstruct,
    sliding_window_reconstruct,
)
from benchmarks.common import table, write_result  # noqa: E402


def make_model(patch_size: int, channels: int):
    """AE-2 from the lab if available, else a small conv autoencoder of the same contract."""
    import keras

    try:
        from anomaly_utils.models.ae2 import build_ae2
    except ImportError:
        build_ae2 = None
    if build_ae2 is not None:
        return build_ae2(patch_size=patch_size, channels=channels, seed=0), "build_ae2"
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((patch_size, patch_size, channels)),
        keras.layers.Conv2D(32, 4, strides=2, padding="same", activation="relu"),
        keras.layers.Conv2D(64, 4, strides=2, padding="same", activation="relu"),
        keras.layers.Conv2DTranspose(32, 4, strides=2, padding="same", activation="relu"),
        keras.layers.Conv2DTranspose(channels, 4, strides=2, padding="same",
                                     activation="sigmoid"),
    ])
    return model, "small conv stand-in"


def timed(fn: Callable[[], np.ndarray], repeats: int) -> tuple[float, np.ndarray]:
    """(seconds of the fastest of ``repeats`` calls after a warm-up, the output to compare)."""
    out = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8, help="images for the batched version")
    parser.add_argument("--n-naive", type=int, default=2,
                        help="images for the naive version (25 predict calls each)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--patch-size", type=int, default=128)
    parser.add_argument("--stride", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; the best is kept")
    parser.add_argument("--name", default="inference", help="result file runs/bench/<name>.json")
    args = parser.parse_args(argv)

    import tensorflow as tf

    rng = np.random.default_rng(0)
    images = rng.random((args.n, args.size, args.size, args.channels), dtype=np.float32)
    model, model_name = make_model(args.patch_size, args.channels)

    t_batched, batched = timed(lambda: sliding_window_reconstruct(
        model, images, args.patch_size, args.stride, batch_size=args.batch_size), args.repeats)
    naive_images = images[:args.n_naive]
    t_naive, naive = timed(lambda: naive_sliding_window_reconstruct(
        model, naive_images, args.patch_size, args.stride), args.repeats)

    row = {
        "model": model_name, "image_size": args.size, "patch_size": args.patch_size,
        "stride": args.stride, "batch_size": args.batch_size, "channels": args.channels,
        "n_batched": args.n, "n_naive": args.n_naive,
        "seconds_batched": t_batched, "seconds_naive": t_naive,
        "images_per_s_batched": args.n / t_batched,
        "images_per_s_naive": args.n_naive / t_naive,
        "max_abs_diff": float(np.abs(batched[:args.n_naive] - naive).max()),
    }
    row["speedup"] = row["images_per_s_batched"] / row["images_per_s_naive"]
    print(table([
        {"version": "batched", "images": args.n, "seconds": t_batched,
         "images/s": row["images_per_s_batched"]},
        {"version": "naive", "images": args.n_naive, "seconds": t_naive,
         "images/s": row["images_per_s_naive"]},
    ], f"sliding window, {model_name}: {args.size}x{args.size}x{args.channels} images, patch "
       f"{args.patch_size}, stride {args.stride}, batch {args.batch_size}"))
    print(f"speed-up {row['speedup']:.1f}x, max |batched - naive| = {row['max_abs_diff']:.2e}")
    path = write_result(args.name, {
        "benchmark": "inference", "gpus": len(tf.config.list_physical_devices("GPU")),
        "tensorflow": tf.__version__, "repeats": args.repeats, "rows": [row],
    })
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
