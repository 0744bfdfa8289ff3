"""Input pipelines: how fast the lab's datasets make batches, and what they let a fit reach.

1. Patches per second of one epoch of :func:`patch_dataset` (64x64 RGB crops of the 128-px
   synthetic carpet, batch 32, flips and turns) without corruption and with each corrupt
   mode at ``corrupt=0.5``, and of :func:`anomaly_patch_dataset` (the segmentation head's
   crops with synthetic anomalies), iterated by hand without a model.
2. A short AE-2 fit (carpet default: 64x64 RGB, spatial bottleneck, batch 32, rectangle
   corruption) fed by :func:`patch_dataset`, in patches per second, against the same fit
   fed by fixed arrays already in memory (``model.fit(x, y)``): the ratio is the share of
   the model's speed the pipeline lets through.
3. AE-1 (64x64 RGB) trained from disk (:func:`file_dataset`) against from memory
   (:func:`image_dataset`), in images per second.

The datasets were ``tf.data`` pipelines before they became numpy ``keras.utils.PyDataset`` s
(one implementation for every backend). The same measurements, TensorFlow backend, on the
2-core CPU machine while other jobs kept it loaded (load average 3-4; compare within a row):
``python -m benchmarks bench_pipeline`` for the PyDatasets, and for tf.data the same script
run against a copy of the package at commit f963d63 (twice, before and after)::

    measure                                   PyDataset   tf.data (two runs)
    patch_dataset, patches/s                     15,210   2,881 / 2,793
    corrupt 0.5 rectangle                        12,950   1,372 / 1,751
    corrupt 0.5 grid                             10,160   2,088 / 1,689
    corrupt 0.5 rectangle+shading                 9,045   1,001 / 780
    anomaly_patch_dataset                         4,196   2,046 / 2,378
    AE-2 fit, patch_dataset / arrays     260.7 / 293.7 = 0.89   163.3 / 203.6 = 0.80,
                                                                276.8 / 287.2 = 0.96
    AE-1 fit, disk / memory, img/s      14.06 / 13.63 = 1.03   13.13 / 14.04 = 0.94,
                                                                11.68 / 13.56 = 0.86

Later runs at load average 6-9 scattered more than the pipelines differ (AE-2 fit with
patch_dataset, patches/s: PyDataset 184.1, 124.4, 198.2; tf.data 151.4, 189.9); over all
runs, 191.9 against 195.4 patches/s on average.

Writes runs/bench/pipeline.json.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from benchmarks.common import ROOT, table, write_result

DATA = ROOT / "data" / "synthetic_carpet"
PATCH = 64
BATCH = 32


def _arrays(batch) -> int:
    """Touch every array of a batch (tf.data gives tensors); return the batch's size."""
    x, y = batch
    x = np.asarray(x)
    for part in (y.values() if isinstance(y, dict) else (y,)):
        np.asarray(part)
    return len(x)


def patch_rates(images: np.ndarray, patches: int = 2048, repeat: int = 3) -> list[dict]:
    """Patches per second of one epoch of each training dataset (best of ``repeat`` epochs)."""
    from anomaly_utils.training.datasets import (
        anomaly_patch_dataset,
        patch_dataset,
        set_dataset_epoch,
    )

    makers = {
        "patch_dataset, no corruption": lambda: patch_dataset(images, PATCH, patches, BATCH),
        **{f"patch_dataset, corrupt 0.5 {mode}": (
            lambda mode=mode: patch_dataset(images, PATCH, patches, BATCH, corrupt=0.5,
                                            corrupt_mode=mode))
           for mode in ("rectangle", "grid", "rectangle+shading")},
        "anomaly_patch_dataset": lambda: anomaly_patch_dataset(images, PATCH, patches, BATCH),
        "anomaly_patch_dataset, joint, augment": lambda: anomaly_patch_dataset(
            images, PATCH, patches, BATCH, augment=True, joint=True),
    }
    rows = []
    for name, make in makers.items():
        dataset = make()
        times = []
        for epoch in range(repeat + 1):  # the first epoch warms up (tracing, caches)
            set_dataset_epoch(dataset, epoch)
            start = time.perf_counter()
            count = sum(_arrays(batch) for batch in dataset)
            times.append(time.perf_counter() - start)
        rows.append({"measure": name, "patches_per_s": count / min(times[1:])})
    return rows


def ae2_fit_rates(images: np.ndarray, patches: int = 640, epochs: int = 3) -> dict:
    """An AE-2 fit fed by ``patch_dataset`` against the same fit fed by fixed arrays."""
    import keras

    from anomaly_utils.models.ae2 import build_ae2
    from anomaly_utils.training.callbacks import EpochSetter
    from anomaly_utils.training.datasets import patch_dataset

    def model():
        ae = build_ae2(PATCH, 3, 16, bottleneck="spatial", seed=0)
        ae.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
        return ae

    dataset = patch_dataset(images, PATCH, patches, BATCH, corrupt=0.5)
    ae = model()
    ae.fit(dataset, epochs=1, verbose=0, callbacks=[EpochSetter(dataset)])  # warm-up
    start = time.perf_counter()
    ae.fit(dataset, epochs=epochs + 1, initial_epoch=1, verbose=0,
           callbacks=[EpochSetter(dataset)])
    pipeline = epochs * patches / (time.perf_counter() - start)

    rng = np.random.default_rng(0)
    x = rng.random((patches, PATCH, PATCH, 3), dtype=np.float32)
    ae = model()
    ae.fit(x, x, batch_size=BATCH, epochs=1, verbose=0, shuffle=False)
    start = time.perf_counter()
    ae.fit(x, x, batch_size=BATCH, epochs=epochs, verbose=0, shuffle=False)
    memory = epochs * patches / (time.perf_counter() - start)
    return {"ae2_fit_patch_dataset_patches_per_s": pipeline,
            "ae2_fit_arrays_patches_per_s": memory,
            "ae2_fit_pipeline_over_arrays": pipeline / memory}


def disk_rates(paths: list[Path], arrays: np.ndarray, epochs: int = 3) -> dict:
    """AE-1 trained from files on disk against from the same images in memory."""
    import keras

    from anomaly_utils.data.loading import file_dataset
    from anomaly_utils.models.ae1 import build_ae1
    from anomaly_utils.training.datasets import image_dataset

    memory = image_dataset(arrays, BATCH, shuffle=False)
    disk = file_dataset(paths, 64, "rgb", BATCH, targets=True)
    results = {}
    for name, dataset in (("memory", memory), ("disk", disk)):
        model = build_ae1(image_size=64, channels=3, latent_dim=1024, seed=0)
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
        model.fit(dataset, epochs=1, verbose=0)  # warm-up: tracing, file cache
        start = time.perf_counter()
        model.fit(dataset, epochs=epochs, verbose=0)
        results[f"ae1_{name}_images_per_s"] = epochs * len(paths) / (time.perf_counter()
                                                                      - start)
    results["disk_over_memory"] = (results["ae1_disk_images_per_s"]
                                   / results["ae1_memory_images_per_s"])
    results["images"] = len(paths)
    return results


def measure() -> dict:
    import keras

    from anomaly_utils.data.layout import scan_dataset
    from anomaly_utils.data.loading import load_images

    index = scan_dataset(DATA)
    paths = [s.path for s in index.train]
    images, _, _ = load_images(paths, 128, "rgb")
    rows = patch_rates(images)
    result = {"backend": keras.backend.backend(), "patch_rows": rows,
              **ae2_fit_rates(images)}
    arrays, _, _ = load_images(paths, 64, "rgb")
    result.update(disk_rates(paths, arrays))
    return result


def main() -> dict:
    if not Path(DATA).is_dir():
        raise SystemExit(f"{DATA} is missing: run `make data` first")
    result = measure()
    print(table(result["patch_rows"], "Input pipelines: one epoch iterated by hand "
                                      f"({PATCH}x{PATCH} RGB, batch {BATCH})"))
    print(table([{"measure": k, "value": v} for k, v in result.items()
                 if k not in ("patch_rows", "backend")],
                f"Fits fed by the pipelines ({result['backend']})"))
    write_result("pipeline", result)
    return result


if __name__ == "__main__":
    main()
