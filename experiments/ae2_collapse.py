"""Does AE-2 learn on a dataset, and at which learning rate?

Trains the default AE-2 (128 px images, 64 px crops, spatial latent, SSIM + L1/2, 1,280 crops
an epoch with the default rectangle corruption) for a few epochs per configuration and prints,
after every epoch, the training loss, the mean standard deviation of the output on 64 fixed
validation crops, and their L1 error. A collapsed model's output standard deviation stays
near 0 while the crops' is several hundredths.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python experiments/ae2_collapse.py data/elpv/poly \\
        --configs default lr3e-4 clip l1 --epochs 12
"""

from __future__ import annotations

import argparse
import time

import keras
import numpy as np

from anomaly_utils.data.loading import load_dataset
from anomaly_utils.models.ae2 import build_ae2
from anomaly_utils.models.losses import make_ae2_loss
from anomaly_utils.seeding import set_global_seed
from anomaly_utils.training.collapse import batches
from anomaly_utils.training.datasets import patch_dataset, set_dataset_epoch, val_patch_dataset

# name: (learning rate, SSIM weight, L1 weight, gradient-norm clip)
CONFIGS = {"default": (1e-3, 1.0, 0.5, None), "lr3e-4": (3e-4, 1.0, 0.5, None),
           "lr1e-4": (1e-4, 1.0, 0.5, None), "clip": (1e-3, 1.0, 0.5, 1.0),
           "l1": (1e-3, 0.0, 1.0, None)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--epochs", type=int, default=12)
    args = parser.parse_args()
    ds = load_dataset(args.data_dir, image_size=128, color_mode="auto", val_fraction=0.1,
                      seed=0, allow_missing_masks=True)
    val = val_patch_dataset(ds.val_images, 64, batch_size=32, seed=0)
    crops = np.concatenate([np.asarray(targets) for _, targets in batches(val)])[:64]
    print(f"crops' std {crops.std(axis=(1, 2, 3)).mean():.3f}")
    for name in args.configs:
        rate, ssim_weight, l1_weight, clip = CONFIGS[name]
        set_global_seed(0)
        model = build_ae2(patch_size=64, channels=crops.shape[-1], latent_dim=16,
                          bottleneck="spatial", seed=0)
        model.compile(optimizer=keras.optimizers.Adam(rate, clipnorm=clip),
                      loss=make_ae2_loss(ssim_weight=ssim_weight, l1_weight=l1_weight))
        train = patch_dataset(ds.train_images, 64, 1280, 32, seed=0, corrupt=0.5)
        start, cells = time.perf_counter(), []
        for epoch in range(args.epochs):
            set_dataset_epoch(train, epoch)
            loss = model.fit(train, epochs=1, verbose=0).history["loss"][0]
            out = model.predict(crops, verbose=0)
            cells.append(f"{loss:.3f}/{out.std(axis=(1, 2, 3)).mean():.3f}/"
                         f"{np.abs(out - crops).mean():.3f}")
        print(f"{name} ({time.perf_counter() - start:.0f} s) loss/output std/L1: "
              + " ".join(cells), flush=True)


if __name__ == "__main__":
    main()
