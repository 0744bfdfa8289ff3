"""Where AE-1's training step spends its time, layer by layer, on the current Keras backend.

Each of AE-1's weighted layers (the default 64x64 RGB model) is wrapped alone in a model,
compiled with SGD and MSE, and timed at batch 32: one training step (forward, backward,
update) against one prediction (forward only), best of three after two warm-up steps. On a
backend whose training step is far slower than its forward pass for one layer kind, that
kind is the cost (on JAX's CPU runtime: the kernel gradient of ``Conv2DTranspose``).

Usage: KERAS_BACKEND=jax python benchmarks/bench_layer_steps.py [--batch 32]
Writes runs/bench/layer_steps_<backend>.json and prints a table.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# (name, layer factory, input shape without the batch): AE-1's layers at their default sizes.
LAYERS = (
    ("enc_conv3 16x16x128 -> 8x8x512", "Conv2D", dict(filters=512, kernel_size=3, strides=2),
     (16, 16, 128)),
    ("latent dense 32768 -> 1024", "Dense", dict(units=1024), (32768,)),
    ("dec_dense 1024 -> 32768", "Dense", dict(units=32768), (1024,)),
    ("dec_deconv1 8x8x512 -> 16x16x256", "Conv2DTranspose",
     dict(filters=256, kernel_size=4, strides=2), (8, 8, 512)),
    ("dec_deconv2 16x16x256 -> 32x32x64", "Conv2DTranspose",
     dict(filters=64, kernel_size=4, strides=2), (16, 16, 256)),
    ("reconstruction 32x32x64 -> 64x64x3", "Conv2DTranspose",
     dict(filters=3, kernel_size=4, strides=2), (32, 32, 64)),
)


def time_layer(kind: str, options: dict, shape: tuple[int, ...], batch: int) -> dict:
    """Seconds of one training step and one prediction of ``kind`` alone, best of three."""
    import keras
    import numpy as np

    from benchmarks.common import best_time

    inputs = keras.Input(shape)
    layer = getattr(keras.layers, kind)(padding="same", **options) if kind != "Dense" \
        else keras.layers.Dense(**options)
    model = keras.Model(inputs, layer(inputs))
    model.compile(optimizer=keras.optimizers.SGD(1e-3), loss="mse")
    x = np.random.default_rng(0).random((batch, *shape), dtype=np.float32)
    y = np.asarray(model.predict_on_batch(x))
    train = best_time(lambda: model.train_on_batch(x, y), repeat=3, warmup=2)
    predict = best_time(lambda: model.predict_on_batch(x), repeat=3, warmup=1)
    return {"train_step_s": train, "predict_s": predict, "train_over_predict": train / predict}


def main(argv: list[str] | None = None) -> dict:
    import keras

    from benchmarks.common import table, write_result

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args(argv)
    backend = keras.backend.backend()
    rows = [{"layer": name, **time_layer(kind, options, shape, args.batch)}
            for name, kind, options, shape in LAYERS]
    print(table(rows, f"AE-1 layers alone, batch {args.batch}, backend {backend}: seconds"))
    payload = {"backend": backend, "batch": args.batch, "rows": rows}
    write_result(f"layer_steps_{backend}", payload)
    return payload


if __name__ == "__main__":
    main()
