"""Train a tiny model on synthetic images into a folder; the SIGKILL-resume test runs this.

Usage: python tests/train_worker.py MODEL_DIR [--model ae2|vae] [--epochs 6] [--epoch-delay S]

``--epoch-delay`` sleeps at the start of every epoch so that a test can kill the process
mid-run reliably; it does not change what is computed. The last stdout line is
``RESULT <json>`` with the first epoch this process ran and the loss history.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from anomaly_utils.models.ae1 import build_ae1
from anomaly_utils.models.ae2 import build_ae2
from anomaly_utils.training.datasets import patch_dataset, val_patch_dataset
from anomaly_utils.training.fit import fit_autoencoder


class _Delay(keras.callbacks.Callback):
    def __init__(self, seconds: float):
        super().__init__()
        self.seconds = seconds

    def on_epoch_begin(self, epoch, logs=None):
        time.sleep(self.seconds)


def synthetic_images(n: int, size: int, channels: int, seed: int = 0) -> np.ndarray:
    """uint8 (n, size, size, channels) smooth stripes with noise, a texture-like toy set."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    images = []
    for _ in range(n):
        freq, phase = rng.uniform(2, 6), rng.uniform(0, 2 * np.pi)
        base = 0.5 + 0.4 * np.sin(2 * np.pi * freq * (xx + 0.3 * yy) + phase)
        noisy = base[..., None] + rng.normal(0, 0.05, (size, size, channels))
        images.append(np.clip(noisy * 255, 0, 255).astype(np.uint8))
    return np.stack(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir")
    parser.add_argument("--model", choices=("ae2", "vae"), default="ae2")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--epoch-delay", type=float, default=0.0)
    args = parser.parse_args()

    if args.model == "ae2":
        images = synthetic_images(6, 48, 1)
        model = build_ae2(patch_size=32, channels=1, latent_dim=8)
        train = patch_dataset(images[:4], 32, patches_per_epoch=24, batch_size=8, seed=3)
        val = val_patch_dataset(images[4:], 32, patches_per_image=4, batch_size=8)
    else:
        images = synthetic_images(12, 16, 3)
        model = build_ae1(image_size=16, channels=3, latent_dim=8, variant="vae")
        train, val = images[:8], images[8:]
    # A backup after every epoch: the default policy skips backups that cost more than 10 % of
    # the training time, a timing that a loaded machine changes, and the test kills after one.
    extra = [_Delay(args.epoch_delay)] if args.epoch_delay > 0 else []
    result = fit_autoencoder(model, train, val, args.model_dir, epochs=args.epochs,
                             learning_rate=1e-3, seed=7, batch_size=4, verbose=2,
                             backup_overhead=1.0, callbacks=extra)
    print("RESULT " + json.dumps({"initial_epoch": result["initial_epoch"],
                                  "history": result["history"]}), flush=True)


if __name__ == "__main__":
    main()
