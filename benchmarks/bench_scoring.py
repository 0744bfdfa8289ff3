"""End-to-end scoring throughput of both models with their default scoring settings.

From uint8 images at 256x256 to image scores and full anomaly maps at ``eval_size``:
resize to the model's resolution, reconstruct (AE-2: sliding window), per-pixel map,
smoothing, image score. Untrained models with the default architectures: the cost does not
depend on the weights.
"""

from __future__ import annotations

import numpy as np

from benchmarks.common import best_time, table, write_result


def measure(n_images: int = 32) -> list[dict]:
    from anomaly_utils.data.loading import resize_image
    from anomaly_utils.models.ae1 import build_ae1
    from anomaly_utils.models.ae2 import build_ae2
    from anomaly_utils.scoring.scorer import Scorer, ScoringConfig

    rng = np.random.default_rng(0)
    full = rng.integers(0, 255, (n_images, 256, 256, 3), dtype=np.uint8)

    def normalised(size: int) -> dict:
        # The per-pixel statistics' values do not change the cost; their shape does.
        return {"normalize": True, "norm_mean": np.zeros((size, size)).tolist(),
                "norm_std": np.ones((size, size)).tolist()}

    setups = {
        "AE-1 (64x64 RGB, squared error, mean)": (
            build_ae1(), ScoringConfig(model="ae1", image_size=64, map_kind="l2",
                                              score_method="mean", eval_size=128), 3),
        "AE-2 default (128x128 RGB, patches 64 stride 16, SSIM+GMS+low-pass, sigma 8, normalised)": (
            build_ae2(patch_size=64, channels=3, latent_dim=16, bottleneck="spatial"),
            ScoringConfig(model="ae2", image_size=128, map_kind="0.5*ssim+0.5*gms+1*lowpass",
                          score_method="max",
                          smooth_sigma=8.0, patch_size=64, stride=16, eval_size=128,
                          **normalised(128)), 3),
        "AE-2 real preset (64x64 gray whole tiles, GMS+L1, sigma 1, normalised, max)": (
            build_ae2(patch_size=64, channels=1, latent_dim=16, bottleneck="spatial"),
            ScoringConfig(model="ae2", image_size=64, color_mode="grayscale",
                          map_kind="gms+l1", score_method="max", smooth_sigma=1.0,
                          patch_size=64, stride=16, eval_size=128, **normalised(64)), 1),
        "AE-2 the same with the 1-SSIM+L1 map (sigma 2, top-1 %)": (
            build_ae2(patch_size=64, channels=1, latent_dim=16, bottleneck="spatial"),
            ScoringConfig(model="ae2", image_size=64, color_mode="grayscale",
                          map_kind="ssim+l1", score_method="topk", smooth_sigma=2.0,
                          patch_size=64, stride=16, eval_size=128, **normalised(64)), 1),
        "AE-2 256x256 gray, patches 64 stride 16, L2, sigma 4, normalised (earlier preset)": (
            build_ae2(patch_size=64, channels=1, latent_dim=16, bottleneck="spatial"),
            ScoringConfig(model="ae2", image_size=256, color_mode="grayscale", map_kind="l2",
                          score_method="topk", smooth_sigma=4.0, patch_size=64, stride=16,
                          eval_size=128, **normalised(256)), 1),
    }
    rows = []
    for name, (model, config, channels) in setups.items():
        scorer = Scorer(model, config)

        def score(scorer=scorer, size=config.image_size, channels=channels):
            images = np.stack([resize_image(image[..., :channels], size) for image in full])
            return scorer.score(images)

        seconds = best_time(score, repeat=2)
        rows.append({"setup": name, "images": n_images, "seconds": seconds,
                     "images_per_s": n_images / seconds})
    return rows


def main() -> list[dict]:
    rows = measure()
    print(table(rows, "Scoring from 256x256 uint8 images to scores and maps (default settings)"))
    write_result("scoring", {"rows": rows})
    return rows


if __name__ == "__main__":
    main()
