"""Benchmark: what the lab's training loop costs on top of a plain ``keras.Model.fit``.

AE-1 (64x64 RGB, 70.7 M parameters) trains for a few epochs on 216 random images (the
synthetic carpet's training split) three ways:

- ``plain``: ``model.fit`` with the lab's input pipeline (a ``PyDataset``, which Keras wraps
  in an autotuned ``tf.data`` pipeline) and no callbacks,
- ``plain, lab feed``: the same through
  :func:`~anomaly_utils.training.tensorflow_feed.feed_for_tensorflow` (TensorFlow only),
  as ``fit_autoencoder`` feeds it: no wait for tf.data's autotuning thread between epochs,
- ``lab, backup every epoch``: :func:`anomaly_utils.training.fit.fit_autoencoder` with
  ``backup_overhead=1.0`` (the resume backup of weights + Adam state, ~810 MB, every epoch;
  what the lab did before the backup budget),
- ``lab, default``: ``fit_autoencoder`` with its default 10 % backup budget.

Epoch times exclude the first (tracing); each includes the lab's end-of-epoch work (best
checkpoint, history row, backup). Prints a table and writes ``runs/bench/fit_overhead.json``.

    .venv/bin/python -m benchmarks fit_overhead
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import BENCH_DIR, table, write_result  # noqa: E402


def _epoch_seconds(mode: str, epochs: int, n_images: int) -> list[float]:
    import keras

    from anomaly_utils.models.ae1 import build_ae1
    from anomaly_utils.training.datasets import image_dataset
    from anomaly_utils.training.fit import fit_autoencoder

    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (n_images, 64, 64, 3), dtype=np.uint8)
    val = rng.integers(0, 256, (24, 64, 64, 3), dtype=np.uint8)
    model = build_ae1(image_size=64, channels=3, latent_dim=1024, seed=0)
    times: list[float] = []

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.start)

    if mode in ("plain", "plain_fed"):
        from anomaly_utils.training.tensorflow_feed import feed_for_tensorflow

        feed = feed_for_tensorflow if mode == "plain_fed" else (lambda dataset: dataset)
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
        model.fit(feed(image_dataset(train, 32, shuffle=True, seed=0)),
                  validation_data=feed(image_dataset(val, 32, shuffle=False)),
                  epochs=epochs, verbose=0, callbacks=[EpochTimer()])
    else:
        BENCH_DIR.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=BENCH_DIR) as model_dir:
            fit_autoencoder(model, train, val, model_dir, epochs=epochs,
                                     learning_rate=1e-3, seed=0, verbose=0,
                                     backup_overhead=1.0 if mode == "every" else 0.1,
                                     callbacks=[EpochTimer()])
    return times[1:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--images", type=int, default=216)
    args = parser.parse_args(argv)

    import keras

    modes = [("plain", "plain model.fit")]
    if keras.backend.backend() == "tensorflow":
        modes.append(("plain_fed", "plain model.fit, lab feed"))
    modes += [("every", "lab, backup every epoch"),
              ("default", "lab, default (10 % backup budget)")]
    rows = []
    for mode, label in modes:
        seconds = _epoch_seconds(mode, args.epochs, args.images)
        rows.append({"setting": label, "epoch s (mean)": float(np.mean(seconds)),
                     "images/s": args.images / float(np.mean(seconds))})
    plain = rows[0]["epoch s (mean)"]
    for r in rows:
        r["overhead vs plain"] = f"{r['epoch s (mean)'] / plain - 1:+.0%}"
    print(table(rows, f"AE-1 64x64 RGB, {args.images} images, epochs 2-{args.epochs}"))
    path = write_result("fit_overhead", {"benchmark": "fit_overhead", "epochs": args.epochs,
                                         "images": args.images, "rows": rows})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
