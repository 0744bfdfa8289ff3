"""Training throughput of AE-1 and AE-2 at their default sizes, with and without XLA.

For each model, batch size and ``jit_compile`` setting: compile with Adam, run a few
warm-up steps (tracing/compilation), then time ``--steps`` training steps on a fixed
in-memory batch. FLOPs per image are counted from the layers (2 x MACs for Conv2D,
Conv2DTranspose and Dense; x3 for forward + backward); the SSIM loss and the optimizer
update are not counted, so the FLOP/s figure is a lower bound of the work done.

Usage: python benchmarks/bench_training.py [--steps 5] [--batch-sizes 16 32 64]
Writes runs/bench/training.json and prints a table.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from anomaly_utils.artifacts import write_json  # noqa: E402
from anomaly_utils.models.ae1 import build_ae1
from anomaly_utils.models.ae2 import build_ae2
from anomaly_utils.models.losses import default_loss

OUT = Path(__file__).resolve().parent.parent / "runs" / "bench" / "training.json"


def forward_flops_per_image(model: keras.Model) -> int:
    """2 x multiply-accumulates of every Conv2D, Conv2DTranspose and Dense layer, per image."""
    total = 0
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.Conv2DTranspose):
            _, h, w, c_in = layer.input.shape  # every input pixel scatters a k x k x c_out block
            kh, kw = layer.kernel_size
            total += 2 * h * w * kh * kw * c_in * layer.filters
        elif isinstance(layer, keras.layers.Conv2D):
            _, h, w, c_out = layer.output.shape
            kh, kw = layer.kernel_size
            total += 2 * h * w * kh * kw * layer.input.shape[-1] * c_out
        elif isinstance(layer, keras.layers.Dense):
            total += 2 * layer.input.shape[-1] * layer.units
    return total


def measure(name: str, build, batch_size: int, jit: bool, steps: int, warmup: int = 2) -> dict:
    keras.utils.set_random_seed(0)
    model = build()
    shape = model.input_shape[1:]
    x = tf.constant(np.random.default_rng(0).random((batch_size, *shape), dtype=np.float32))
    model.compile(keras.optimizers.Adam(1e-4), loss=default_loss(model), jit_compile=jit)
    start = time.perf_counter()
    for _ in range(warmup):
        model.train_on_batch(x, x)
    warmup_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        loss = model.train_on_batch(x, x)
    float(np.asarray(loss))  # wait for the last step
    seconds = time.perf_counter() - start
    images_per_s = steps * batch_size / seconds
    flops = 3 * forward_flops_per_image(model)
    return {"model": name, "batch_size": batch_size, "jit_compile": jit, "steps": steps,
            "seconds": seconds, "warmup_seconds": warmup_s, "images_per_s": images_per_s,
            "train_flops_per_image": flops, "achieved_gflops_per_s": images_per_s * flops / 1e9}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--jit", choices=("both", "off"), default="both",
                        help="also time jit_compile=True, or only the default (off)")
    parser.add_argument("--out", type=Path, default=OUT, help="result file (JSON)")
    args = parser.parse_args()
    models = {
        "AE-1 64x64 RGB": build_ae1,
        "AE-2 64x64 RGB (lab default)": functools.partial(
            build_ae2, patch_size=64, channels=3, latent_dim=16, bottleneck="spatial"),
        "AE-2 128x128 gray (paper)": build_ae2,
    }
    results = []
    print(f"{'model':<30}{'batch':>6}{'jit':>6}{'img/s':>10}{'GFLOP/s':>10}{'warmup s':>10}")
    for name, build in models.items():
        for batch_size in args.batch_sizes:
            for jit in (False, True) if args.jit == "both" else (False,):
                try:
                    row = measure(name, build, batch_size, jit, args.steps)
                except Exception as exc:  # noqa: BLE001 - report and go on with other settings
                    print(f"{name:<30}{batch_size:>6}{jit!s:>6}  failed: {exc!r:.100}")
                    results.append({"model": name, "batch_size": batch_size,
                                    "jit_compile": jit, "error": repr(exc)})
                    continue
                results.append(row)
                print(f"{name:<30}{batch_size:>6}{jit!s:>6}{row['images_per_s']:>10.1f}"
                      f"{row['achieved_gflops_per_s']:>10.1f}{row['warmup_seconds']:>10.1f}",
                      flush=True)
    best = {}
    for row in results:
        if "images_per_s" in row and row["images_per_s"] > best.get(row["model"], {}).get(
                "images_per_s", 0):
            best[row["model"]] = row
    for name, row in best.items():
        print(f"fastest {name}: batch {row['batch_size']}, jit_compile={row['jit_compile']} "
              f"({row['images_per_s']:.1f} img/s)")
    write_json(args.out, {"device": [d.device_type for d in tf.config.list_physical_devices()],
                     "cpu_count": os.cpu_count(), "platform": platform.platform(),
                     "tensorflow": tf.__version__, "keras": keras.__version__,
                     "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
                     "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
                     "results": results,
                     "fastest": {k: {"batch_size": v["batch_size"],
                                     "jit_compile": v["jit_compile"]} for k, v in best.items()}})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
