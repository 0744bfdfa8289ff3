"""GPU check of AE-2's training on JAX: throughput per precision and batch, and determinism.

Builds the lab's AE-2 (``build_ae2``) at the GPU preset's sizes (128 px RGB patches, latent
map of 64 channels) and trains it with the lab's loss (``make_ae2_loss``: SSIM + 0.5 L1) by
``model.fit`` on numpy arrays, under the dtype policy ``use_mixed_precision_on_gpu`` picks
and under float32. Reports images/s over the epochs after the first (XLA compilation), and
whether two trainings from the same seed give bit-identical losses (``set_global_seed``
turns on XLA's deterministic GPU ops). Needs numpy, keras and jax; no TensorFlow.

Usage (from the repository root)::

    KERAS_BACKEND=jax python benchmarks/gpu_ae2_check.py [--images 2048] [--epochs 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

import anomaly_utils  # noqa: E402, F401  (sets XLA_FLAGS before JAX starts)
from anomaly_utils.models import precision  # noqa: E402
from anomaly_utils.models.ae2 import build_ae2  # noqa: E402
from anomaly_utils.models.losses import make_ae2_loss  # noqa: E402
from anomaly_utils.seeding import set_global_seed  # noqa: E402


def train(policy: str, batch: int, images: np.ndarray, epochs: int, seed: int = 0) -> dict:
    """Train a fresh AE-2 under ``policy``; the losses and images/s after the first epoch."""
    keras.mixed_precision.set_global_policy(policy)
    set_global_seed(seed)
    model = build_ae2(patch_size=images.shape[1], channels=images.shape[-1], latent_dim=64,
                      bottleneck="spatial", seed=seed)
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=make_ae2_loss(ssim_weight=1.0, l1_weight=0.5), jit_compile=True)
    start = time.perf_counter()
    first = model.fit(images, images, batch_size=batch, epochs=1, shuffle=False, verbose=0)
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    rest = model.fit(images, images, batch_size=batch, epochs=epochs, shuffle=False, verbose=0)
    seconds = time.perf_counter() - start
    keras.mixed_precision.set_global_policy("float32")
    return {"policy": policy, "batch": batch, "first_epoch_s": round(compile_s, 1),
            "images_per_s": round(epochs * len(images) / seconds, 1),
            "losses": [float(v) for v in first.history["loss"] + rest.history["loss"]],
            "parameters": model.count_params()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--patch", type=int, default=128)
    parser.add_argument("--determinism-only", action="store_true")
    args = parser.parse_args()
    print(f"devices {jax.devices()}, keras {keras.__version__}, jax {jax.__version__}")
    chosen = precision.use_mixed_precision_on_gpu()
    print(f"use_mixed_precision_on_gpu -> {chosen} (compute capability "
          f"{precision.gpu_compute_capability()}); XLA_FLAGS={os.environ.get('XLA_FLAGS')}")
    keras.mixed_precision.set_global_policy("float32")
    rng = np.random.default_rng(0)
    # Smooth random textures: noise blurred by averaging shifted copies (numpy only).
    noise = rng.random((args.images, args.patch + 4, args.patch + 4, 3), np.float32)
    images = sum(noise[:, i:i + args.patch, j:j + args.patch] for i in range(4)
                 for j in range(4)) / 16
    rows = []
    configs = [(chosen, 8), (chosen, 32), ("float32", 8), ("float32", 32)]
    for policy, batch in configs[-1:] if args.determinism_only else configs:
        row = train(policy, batch, images, args.epochs)
        rows.append(row)
        print(f"{policy:>16} batch {batch:>3}: {row['images_per_s']:>8.1f} images/s, first "
              f"epoch {row['first_epoch_s']} s, loss {row['losses'][0]:.4f} -> "
              f"{row['losses'][-1]:.4f}", flush=True)
    again = train("float32", 32, images, args.epochs)
    same = again["losses"] == rows[-1]["losses"]
    print(f"determinism (float32, batch 32, same seed twice): losses identical: {same} "
          f"{again['losses']} vs {rows[-1]['losses']}")
    print(f"AE-2 parameters: {rows[0]['parameters']:,}")


if __name__ == "__main__":
    main()
