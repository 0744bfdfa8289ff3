"""Input pipeline: training from disk through tf.data vs from arrays already in memory.

Both feed the same AE-1 (64x64 RGB, batch 32) for the same number of steps; the ratio
``disk / memory`` is the share of the model's speed the input pipeline lets through.
"""

from __future__ import annotations

import time
from pathlib import Path

from benchmarks.common import ROOT, table, write_result

DATA = ROOT / "data" / "synthetic_carpet"


def measure(epochs: int = 3, batch_size: int = 32) -> dict:
    import keras
    import tensorflow as tf

    from anomaly_utils.data.layout import scan_dataset
    from anomaly_utils.data.loading import file_dataset, load_images
    from anomaly_utils.models.ae1 import build_ae1

    index = scan_dataset(DATA)
    paths = [s.path for s in index.train]
    arrays, _, _ = load_images(paths, 64, "rgb")
    memory = tf.data.Dataset.from_tensor_slices(arrays.astype("float32") / 255.0)
    memory = memory.batch(batch_size).map(lambda x: (x, x)).prefetch(tf.data.AUTOTUNE)
    disk = file_dataset(paths, 64, "rgb", batch_size).map(lambda x: (x, x))
    results = {}
    for name, dataset in (("memory", memory), ("disk", disk)):
        model = build_ae1(image_size=64, channels=3, latent_dim=1024, seed=0)
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
        model.fit(dataset, epochs=1, verbose=0)  # warm-up: tracing, file cache
        start = time.perf_counter()
        model.fit(dataset, epochs=epochs, verbose=0)
        results[f"{name}_images_per_s"] = epochs * len(paths) / (time.perf_counter() - start)
    results["disk_over_memory"] = results["disk_images_per_s"] / results["memory_images_per_s"]
    results["images"] = len(paths)
    return results


def main() -> dict:
    if not Path(DATA).is_dir():
        raise SystemExit(f"{DATA} is missing: run `make data` first")
    result = measure()
    print(table([{"measure": k, "value": v} for k, v in result.items()],
                "Input pipeline (AE-1 training, 64x64, batch 32)"))
    write_result("pipeline", result)
    return result


if __name__ == "__main__":
    main()
