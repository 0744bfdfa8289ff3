"""GPU check of the backend seams on JAX: the SSIM map's precision guard, the mixed-precision
choice and XLA's deterministic-ops flag.

Self-contained: needs numpy, keras and jax (scikit-image if present; scipy is not needed), and
no TensorFlow. It imports the lab's ``similarity`` and ``precision`` modules from the
repository root, so it runs from a bare checkout:

1. checks that importing those modules loads neither TensorFlow nor OpenCV (beyond what
   Keras loads itself);
2. for each size, SSIM maps of a batch of float32 image pairs (uniform noise, and a smooth
   texture with a blurred noisy copy) against a float64 reference (skimage's
   ``structural_similarity`` when importable, else the float64 numpy SSIM below), with the
   matmuls at the backend's default precision (``none``: TF32 on an Ampere or later GPU),
   with the guard ``ssim_map`` uses on JAX (``highest``), and with the three-product TF32
   split the TensorFlow and PyTorch backends use (``split``); max abs error and time per batch;
3. prints the dtype policy ``use_mixed_precision_on_gpu`` picks and whether a JAX process
   starts with ``--xla_gpu_deterministic_ops=true`` in XLA_FLAGS (as ``set_global_seed`` sets).

Usage (from the repository root)::

    KERAS_BACKEND=jax python benchmarks/gpu_seam_check.py [--sizes 128 256] [--batch 32]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ["KERAS_BACKEND"] = "jax"
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

# Keras itself imports OpenCV where it is installed (keras.src.visualization); what counts is
# what the lab's modules add on top of it.
HEAVY = ("tensorflow", "cv2")
LOADED_BY_KERAS = {name: name in sys.modules for name in HEAVY}

from anomaly_utils.models import precision, similarity  # noqa: E402

LOADED_BY_LAB = {name: name in sys.modules and not LOADED_BY_KERAS[name] for name in HEAVY}

SIGMA, RADIUS = 1.5, 5


def reference_ssim(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, str]:
    """(N, H, W) float64 SSIM map, channel mean, as skimage computes it (Gaussian window,
    sigma 1.5, 11 taps, 'reflect' border, population covariance), and its source."""
    try:
        from skimage.metrics import structural_similarity
    except ImportError:
        return numpy_ssim(x, y), "float64 numpy (scikit-image not importable)"
    maps = [structural_similarity(a, b, gaussian_weights=True, sigma=SIGMA,
                                  use_sample_covariance=False, data_range=1.0,
                                  channel_axis=-1, full=True)[1].mean(-1)
            for a, b in zip(x.astype(np.float64), y.astype(np.float64), strict=True)]
    return np.stack(maps), "scikit-image structural_similarity, float64"


def numpy_ssim(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The same SSIM in float64 numpy: separable blur with scipy's 'reflect' border, which is
    numpy's 'symmetric' padding."""
    offsets = np.arange(-RADIUS, RADIUS + 1)
    taps = np.exp(-0.5 * (offsets / SIGMA) ** 2)
    taps /= taps.sum()

    def blur(a: np.ndarray) -> np.ndarray:
        for axis in (1, 2):
            pad = [(0, 0)] * a.ndim
            pad[axis] = (RADIUS, RADIUS)
            padded = np.pad(a, pad, mode="symmetric")
            n = a.shape[axis]
            a = sum(w * np.take(padded, np.arange(k, k + n), axis=axis)
                    for k, w in enumerate(taps))
        return a

    x, y = x.astype(np.float64), y.astype(np.float64)
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x * mu_x
    var_y = blur(y * y) - mu_y * mu_y
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    ssim = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)
            / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2)))
    return ssim.mean(-1)


def image_pairs(kind: str, n: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray,
                                                                                np.ndarray]:
    """(n, size, size, 3) float32 pairs in [0, 1]."""
    if kind == "uniform":
        return (rng.random((n, size, size, 3), dtype=np.float32),
                rng.random((n, size, size, 3), dtype=np.float32))
    freq = np.fft.fftfreq(size)
    lowpass = np.exp(-(freq[:, None] ** 2 + freq[None, :] ** 2) * (2 * np.pi * 2) ** 2 / 2)
    noise = rng.standard_normal((n, 3, size, size))
    x = np.real(np.fft.ifft2(np.fft.fft2(noise) * lowpass)).transpose(0, 2, 3, 1)
    x = (x - x.min()) / np.ptp(x)
    y = np.clip(x + 0.05 * rng.standard_normal(x.shape), 0, 1)
    return x.astype(np.float32), y.astype(np.float32)


def split_matmul(a, b, precise):
    """The TF32 split of the TensorFlow and PyTorch backends, forced on JAX."""
    a_hi, a_lo = similarity._split_tf32(a)
    b_hi, b_lo = similarity._split_tf32(b)
    return (keras.ops.matmul(a_hi, b_hi) + keras.ops.matmul(a_hi, b_lo)
            + keras.ops.matmul(a_lo, b_hi))


@contextlib.contextmanager
def matmul_replaced(replacement):
    saved = similarity._matmul
    similarity._matmul = replacement or saved
    try:
        yield
    finally:
        similarity._matmul = saved


def compiled(variant: str, x, y):
    """A jitted SSIM map for ``variant``, traced on (x, y)."""
    precise = variant != "none"
    fn = jax.jit(lambda a, b: similarity._ssim_ops(a, b, 1.0, SIGMA, RADIUS, precise=precise))
    with matmul_replaced(split_matmul if variant == "split" else None):
        fn(x, y).block_until_ready()
    return fn


def seconds_per_call(fn, x, y, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(x, y).block_until_ready()
        times.append(time.perf_counter() - start)
    return min(times)


def xla_accepts_determinism_flag() -> str:
    """Start a JAX process with the flag set_global_seed adds; XLA aborts on unknown flags.

    Run before this process starts its own backend; the probe does not preallocate GPU memory.
    """
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_gpu_deterministic_ops=true".strip()
    probe = subprocess.run([sys.executable, "-c", "import jax, jax.numpy as jnp; "
                            "print(jax.devices()[0].platform, float(jnp.ones(8).sum()))"],
                           env={**os.environ, "XLA_FLAGS": flags, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}, capture_output=True,
                           text=True, timeout=300)
    if probe.returncode == 0:
        return f"yes ({probe.stdout.strip()})"
    return f"NO, rc {probe.returncode}: {probe.stderr.strip()[-300:]}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=10, help="timed calls; the best is kept")
    args = parser.parse_args(argv)

    determinism = xla_accepts_determinism_flag()
    device = jax.devices()[0]
    print(f"jax {jax.__version__}, keras {keras.__version__} ({keras.backend.backend()}), "
          f"device {device.platform}: {getattr(device, 'device_kind', device)}")
    print(f"loaded by importing keras: {LOADED_BY_KERAS}; "
          f"added by importing the lab's similarity and precision: {LOADED_BY_LAB}")
    print(f"guard on by default (similarity._float32_matmul_rounds): "
          f"{similarity._float32_matmul_rounds()}")
    print(f"gpu_compute_capability: {precision.gpu_compute_capability()}; "
          f"use_mixed_precision_on_gpu: {precision.use_mixed_precision_on_gpu()}")
    keras.mixed_precision.set_global_policy("float32")

    rng = np.random.default_rng(0)
    reference_source = None
    print(f"\n{'size':>5} {'images':>8} {'variant':>8} {'max_abs_err':>12} "
          f"{'ms/batch' + str(args.batch):>13}")
    for size in args.sizes:
        for kind in ("uniform", "texture"):
            x_np, y_np = image_pairs(kind, args.batch, size, rng)
            reference, reference_source = reference_ssim(x_np, y_np)
            x, y = jax.device_put(x_np), jax.device_put(y_np)
            for variant in ("none", "highest", "split"):
                fn = compiled(variant, x, y)
                error = np.abs(np.asarray(fn(x, y), np.float64) - reference).max()
                ms = 1e3 * seconds_per_call(fn, x, y, args.repeats)
                print(f"{size:>5} {kind:>8} {variant:>8} {error:>12.2e} {ms:>13.2f}",
                      flush=True)
            start = time.perf_counter()
            public = similarity.ssim_map(x_np, y_np)
            seconds = time.perf_counter() - start
            print(f"{size:>5} {kind:>8} {'ssim_map':>8} "
                  f"{np.abs(public - reference).max():>12.2e} {1e3 * seconds:>13.2f}"
                  "  (numpy in and out, first call compiles)")
    print(f"\nreference: {reference_source}")
    print(f"XLA accepts --xla_gpu_deterministic_ops=true: {determinism}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
