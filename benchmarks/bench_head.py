"""AE-2's segmentation head: training throughput and full-map inference.

1. Training: one epoch of the head's two-stage fit as notebook 03 runs it (synthetic
   anomalies drawn per batch, AE-2 frozen, focal loss) on 64x64 RGB crops at the default
   widths, in images per second; and the bare training step on a fixed batch, whose FLOP/s
   (convolutions only, x3 for forward and backward) are put against the machine's matmul
   ceiling from ``bench_ceiling``.
2. Inference: the whole map of 256x256 RGB images (AE-2's sliding window at patch 64,
   stride 16, then the head on image and reconstruction), in images per second, and the
   head's share of it.

Writes runs/bench/head.json.
"""

from __future__ import annotations

import json
import tempfile
import time

import keras
import numpy as np

from benchmarks.bench_training import forward_flops_per_image
from benchmarks.common import BENCH_DIR, best_time, table, write_result

PATCH = 64
BATCH = 32


def measure() -> dict:
    from anomaly_utils.models.ae2 import build_ae2
    from anomaly_utils.models.segmentation_head import (
        HEAD_WIDTHS,
        build_head_trainer,
        build_segmentation_head,
    )
    from anomaly_utils.scoring.head_maps import head_maps
    from anomaly_utils.scoring.scorer import Scorer, ScoringConfig
    from anomaly_utils.training.head import fit_segmentation_head

    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (64, 128, 128, 3), dtype=np.uint8)
    ae = build_ae2(PATCH, 3, 16, bottleneck="spatial")
    head = build_segmentation_head(3, HEAD_WIDTHS)
    patches = 640
    with tempfile.TemporaryDirectory() as tmp:
        fit_segmentation_head(ae, head, train, tmp, patch_size=PATCH, epochs=1,
                              patches_per_epoch=BATCH * 2, batch_size=BATCH,
                              learning_rate=1e-3, seed=0)  # warm-up: tracing
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        fit_segmentation_head(ae, build_segmentation_head(3, HEAD_WIDTHS), train, tmp,
                              patch_size=PATCH, epochs=1, patches_per_epoch=patches,
                              batch_size=BATCH, learning_rate=1e-3, seed=0)
        fit_s = time.perf_counter() - start

    trainer = build_head_trainer(ae, build_segmentation_head(3, HEAD_WIDTHS))
    trainer.compile(keras.optimizers.Adam(1e-3), keras.losses.BinaryFocalCrossentropy(gamma=2))
    x = rng.random((BATCH, PATCH, PATCH, 3), dtype=np.float32)
    m = (rng.random((BATCH, PATCH, PATCH, 1)) > 0.9).astype(np.float32)
    step_s = best_time(lambda: trainer.train_on_batch(x, m), repeat=5, warmup=2)
    # The head takes any size; a copy on a fixed size gives its layers shapes to count.
    static = keras.models.clone_model(head, input_tensors=keras.Input((PATCH, PATCH, 6)))
    train_flops = 3 * forward_flops_per_image(static) + forward_flops_per_image(ae)
    step_images_s = BATCH / step_s

    images = rng.integers(0, 256, (16, 256, 256, 3), dtype=np.uint8)
    config = ScoringConfig(model="ae2", image_size=256, patch_size=PATCH, stride=16,
                           map_kind="l2", head="segmentation")
    scorer = Scorer(ae, config, head=head)
    map_s = best_time(lambda: scorer.score(images), repeat=2)
    recons = scorer.reconstruct(images)
    x_float = images.astype(np.float32) / 255
    head_s = best_time(lambda: head_maps(head, x_float, recons), repeat=2)

    ceiling_path = BENCH_DIR / "ceiling.json"
    ceiling = json.loads(ceiling_path.read_text())["tf_matmul_gflops"] \
        if ceiling_path.is_file() else None
    gflops = step_images_s * train_flops / 1e9
    return {
        "head_widths": list(HEAD_WIDTHS), "patch": PATCH, "batch": BATCH,
        "fit_images_per_s": patches / fit_s,
        "step_images_per_s": step_images_s,
        "step_gflops_per_s": gflops,
        "ceiling_gflops_per_s": ceiling,
        "fraction_of_ceiling": gflops / ceiling if ceiling else None,
        "map_256_images_per_s": len(images) / map_s,
        "head_share_of_map_time": head_s / map_s,
    }


def main() -> dict:
    result = measure()
    print(table([{"measure": k, "value": v} for k, v in result.items()],
                "Segmentation head: training and inference"))
    write_result("head", result)
    return result


if __name__ == "__main__":
    main()
