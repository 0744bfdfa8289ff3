"""Benchmark: fast ``ssim_map`` against ``tf.image.ssim`` and skimage, per image size.

For each size, N pairs of RGB "blurred noise" images (a smooth random texture and a blurred,
noisy copy of it) are scored three ways after one warm-up call; each time is the best of
``--repeats`` runs:

- ``ssim_map`` on numpy input (the scoring path) and on tf tensors (the training-loss path),
- ``tf.image.ssim`` (depthwise 11x11 convolutions, VALID padding, one score per image),
- skimage's ``structural_similarity(..., full=True)`` in a loop (the reference),
- the blur work alone, done by the fastest Gaussian blur among the lab's libraries
  (``cv2.GaussianBlur``, SIMD and multi-threaded) on the five precomputed moment maps: no SSIM
  built from library blurs can be faster than this, so ``tf.image.ssim`` time / this time is
  the largest speedup a library-based SSIM map can reach here.

It prints a table and writes ``runs/bench/ssim.json``. Usage::

    .venv/bin/python benchmarks/bench_ssim.py [--n 200] [--sizes 128 256] [--repeats 3]
    .venv/bin/python -m benchmarks ssim
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from anomaly_utils.models.similarity import ssim_map  # noqa: E402
from benchmarks.common import best_time, table, write_result  # noqa: E402


def make_pairs(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, size, size, 3) float32 pairs in [0, 1]: a smooth texture and a blurred noisy copy."""
    rng = np.random.default_rng(seed)
    x = ndimage.gaussian_filter(rng.random((n, size, size, 3), dtype=np.float32),
                                sigma=(0, 2, 2, 0))
    x = (x - x.min(axis=(1, 2, 3), keepdims=True)) / np.ptp(x, axis=(1, 2, 3), keepdims=True)
    y = ndimage.gaussian_filter(x, sigma=(0, 1, 1, 0))
    y = np.clip(y + 0.05 * rng.standard_normal(y.shape, dtype=np.float32), 0, 1)
    return x.astype(np.float32), y.astype(np.float32)


def skimage_maps(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    from skimage.metrics import structural_similarity

    return np.stack([
        structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
                              use_sample_covariance=False, data_range=1, channel_axis=-1,
                              full=True)[1].mean(-1)
        for a, b in zip(x.astype(np.float64), y.astype(np.float64), strict=True)
    ])


def opencv_blurs(moments: list[np.ndarray]) -> None:
    """Blur each (N, H, W, C) moment stack as SSIM needs (11 taps, sigma 1.5).

    Each stack is blurred as one tall (N*H, W, C) image: one call instead of N, faster than a
    loop over images (borders between images blur into each other, so this is a lower bound
    on the time of a correct blur, not a usable one).
    """
    import cv2

    for stack in moments:
        n, height, width, channels = stack.shape
        cv2.GaussianBlur(stack.reshape(n * height, width, channels), (11, 11), 1.5,
                         borderType=cv2.BORDER_REFLECT)


def bench_size(n: int, size: int, repeats: int) -> dict:
    import tensorflow as tf

    x, y = make_pairs(n, size)
    xt, yt = tf.constant(x), tf.constant(y)
    loss_path = tf.function(ssim_map)

    t_fast = best_time(lambda: ssim_map(x, y), repeat=repeats)
    t_tensor = best_time(lambda: loss_path(xt, yt).numpy(), repeat=repeats)
    t_tf = best_time(lambda: tf.image.ssim(xt, yt, max_val=1.0).numpy(), repeat=repeats)
    t_sk = best_time(lambda: skimage_maps(x, y), repeat=repeats)
    moments = [x, y, x * x, y * y, x * y]
    t_blur = best_time(lambda: opencv_blurs(moments), repeat=repeats)

    fast = ssim_map(x, y)
    reference = skimage_maps(x, y)
    tf_scores = tf.image.ssim(xt, yt, max_val=1.0).numpy()
    interior = fast[:, 5:-5, 5:-5].mean(axis=(1, 2))
    return {
        "n_pairs": n, "size": size, "channels": 3,
        "seconds_ssim_map_numpy": t_fast,
        "seconds_ssim_map_tf_function": t_tensor,
        "seconds_tf_image_ssim": t_tf,
        "seconds_skimage_loop": t_sk,
        "seconds_opencv_blurs_only": t_blur,
        "max_speedup_vs_tf_image_ssim_with_library_blurs": t_tf / t_blur,
        "speedup_vs_tf_image_ssim": t_tf / t_fast,
        "speedup_vs_skimage": t_sk / t_fast,
        "max_abs_diff_vs_skimage": float(np.abs(fast - reference).max()),
        "max_abs_diff_interior_mean_vs_tf_image_ssim": float(np.abs(interior - tf_scores).max()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="image pairs per size")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; the best is kept")
    parser.add_argument("--name", default="ssim", help="result file runs/bench/<name>.json")
    args = parser.parse_args(argv)

    import tensorflow as tf

    rows = [bench_size(args.n, size, args.repeats) for size in args.sizes]
    print(table([{
        "size": r["size"], "pairs": r["n_pairs"],
        "ssim_map s": r["seconds_ssim_map_numpy"],
        "tf.function s": r["seconds_ssim_map_tf_function"],
        "tf.image.ssim s": r["seconds_tf_image_ssim"],
        "skimage s": r["seconds_skimage_loop"],
        "x vs tf": r["speedup_vs_tf_image_ssim"], "x vs skimage": r["speedup_vs_skimage"],
        "max|diff| skimage": r["max_abs_diff_vs_skimage"],
        "cv2 blurs only s": r["seconds_opencv_blurs_only"],
        "bound x vs tf": r["max_speedup_vs_tf_image_ssim_with_library_blurs"],
    } for r in rows], f"ssim_map vs tf.image.ssim vs skimage (RGB, best of {args.repeats})"))
    path = write_result(args.name, {
        "benchmark": "ssim", "gpus": len(tf.config.list_physical_devices("GPU")),
        "tensorflow": tf.__version__, "repeats": args.repeats, "rows": rows,
    })
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
