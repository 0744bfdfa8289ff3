"""Training throughput of AE-1 and AE-2 at their default sizes, per Keras backend, with and without XLA.

The script runs one child process per backend (``--backends``; by default every one of
TensorFlow, JAX and PyTorch whose module is installed), each with ``KERAS_BACKEND`` set, so
that a backend's numbers are measured in a process that has loaded no other backend (under
JAX and PyTorch, TensorFlow is never imported). The children run one after the other.

In each child, for each model, batch size and ``jit_compile`` setting: compile with Adam,
run a few warm-up steps (tracing/compilation, not timed), then time ``--steps`` training
steps on a fixed in-memory numpy batch. ``--jit off`` compiles with Keras's default
``jit_compile="auto"`` only (what the lab uses), which on a CPU means no XLA on TensorFlow,
``jax.jit`` on JAX (Keras jits JAX's train step unless told ``False``) and eager PyTorch;
``--jit both`` times ``jit_compile=False`` and ``True`` instead (``False`` on JAX runs the
step op by op, ``True`` on PyTorch is ``torch.compile``). Each row records the value asked
for (``jit_compile_requested``) and the one Keras used (``jit_compile``).

FLOPs per image are counted from the layers (2 x MACs for Conv2D, Conv2DTranspose and
Dense; x3 for forward + backward); the SSIM loss and the optimizer update are not counted,
so the FLOP/s figure is a lower bound of the work done.

Threads: each child gets ``TF_NUM_INTRAOP_THREADS`` = ``OMP_NUM_THREADS`` = the core count
and ``TF_NUM_INTEROP_THREADS`` = 1 (as the lab's sweeps give a job that has the machine to
itself), unless the caller's environment sets them (``bench_threads`` does); JAX's CPU
client uses one thread per core by default. The values are recorded in the JSON.

Usage: python benchmarks/bench_training.py [--backends tensorflow jax] [--steps 5]
       [--batch-sizes 16 32 64] [--jit both|off]
   or: python -m benchmarks bench_training
Writes runs/bench/training.json and prints a table.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from anomaly_utils.artifacts import write_json  # noqa: E402

OUT = ROOT / "runs" / "bench" / "training.json"
BACKENDS = ("tensorflow", "jax", "torch")
THREAD_VARIABLES = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS",
                    "XLA_FLAGS")
HEADER = f"{'backend':<12}{'model':<30}{'batch':>6}{'jit':>7}{'img/s':>10}{'GFLOP/s':>10}" \
         f"{'warmup s':>10}"


def forward_flops_per_image(model) -> int:
    """2 x multiply-accumulates of every Conv2D, Conv2DTranspose and Dense layer, per image."""
    import keras

    total = 0
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.Conv2DTranspose):
            _, h, w, c_in = layer.input.shape  # every input pixel scatters a k x k x c_out block
            kh, kw = layer.kernel_size
            total += 2 * h * w * kh * kw * c_in * layer.filters
        elif isinstance(layer, keras.layers.Conv2D):
            _, h, w, c_out = layer.output.shape
            kh, kw = layer.kernel_size
            total += 2 * h * w * kh * kw * layer.input.shape[-1] * c_out
        elif isinstance(layer, keras.layers.Dense):
            total += 2 * layer.input.shape[-1] * layer.units
    return total


# --- child: one backend, in a process started with KERAS_BACKEND set ---------------------

def _models() -> dict:
    from anomaly_utils.models.ae1 import build_ae1
    from anomaly_utils.models.ae2 import build_ae2

    return {
        "AE-1 64x64 RGB": build_ae1,
        "AE-2 64x64 RGB (lab default)": functools.partial(
            build_ae2, patch_size=64, channels=3, latent_dim=16, bottleneck="spatial"),
        "AE-2 128x128 gray (paper)": build_ae2,
    }


def measure(name: str, build, batch_size: int, jit: bool | str, steps: int,
            warmup: int = 2) -> dict:
    """Time ``steps`` training steps after ``warmup`` untimed ones; ``jit`` goes to compile."""
    import keras
    import numpy as np

    from anomaly_utils.models.losses import default_loss

    # The builders seed the initial weights (seed=0); Python's and numpy's generators are
    # seeded for anything else. keras.utils.set_random_seed would also import TensorFlow.
    random.seed(0)
    np.random.seed(0)
    model = build()
    shape = model.input_shape[1:]
    x = np.random.default_rng(0).random((batch_size, *shape), dtype=np.float32)
    model.compile(keras.optimizers.Adam(1e-4), loss=default_loss(model), jit_compile=jit)
    start = time.perf_counter()
    for _ in range(warmup):
        model.train_on_batch(x, x)
    warmup_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        loss = model.train_on_batch(x, x)
    float(np.asarray(loss))  # wait for the last step
    seconds = time.perf_counter() - start
    images_per_s = steps * batch_size / seconds
    flops = 3 * forward_flops_per_image(model)
    return {"backend": keras.config.backend(), "model": name, "batch_size": batch_size,
            "jit_compile": bool(model.jit_compile), "jit_compile_requested": jit,
            "steps": steps, "warmup_steps": warmup, "seconds": seconds,
            "warmup_seconds": warmup_s, "images_per_s": images_per_s,
            "train_flops_per_image": flops, "achieved_gflops_per_s": images_per_s * flops / 1e9}


def _jit_settings(mode: str) -> tuple:
    """``off``: Keras's default ``"auto"`` (what the lab compiles with); ``both``: False and True."""
    return ("auto",) if mode == "off" else (False, True)


def _row_line(row: dict) -> str:
    return (f"{row['backend']:<12}{row['model']:<30}{row['batch_size']:>6}"
            f"{row['jit_compile']!s:>7}{row['images_per_s']:>10.1f}"
            f"{row['achieved_gflops_per_s']:>10.1f}{row['warmup_seconds']:>10.1f}")


def child(args: argparse.Namespace) -> None:
    """Measure every model for the backend in ``KERAS_BACKEND``; write the rows to ``args.child``."""
    import keras

    backend = keras.config.backend()
    module = sys.modules.get(backend)
    info = {"backend": backend, "keras": keras.__version__,
            "backend_version": getattr(module, "__version__", None),
            "threads": {k: os.environ.get(k) for k in THREAD_VARIABLES}}
    if backend == "jax":
        import jaxlib

        info["jaxlib"] = jaxlib.__version__
    try:
        info["devices"] = keras.distribution.list_devices()
    except (NotImplementedError, AttributeError, ValueError) as exc:
        info["devices"] = f"not listed: {exc!r:.80}"
    results = []
    for name, build in _models().items():
        for batch_size in args.batch_sizes:
            for jit in _jit_settings(args.jit):
                try:
                    row = measure(name, build, batch_size, jit, args.steps)
                except Exception as exc:  # noqa: BLE001 - report and go on with other settings
                    print(f"{backend:<12}{name:<30}{batch_size:>6}{jit!s:>7}  failed: {exc!r:.100}",
                          flush=True)
                    results.append({"backend": backend, "model": name, "batch_size": batch_size,
                                    "jit_compile_requested": jit, "error": repr(exc)})
                    continue
                results.append(row)
                print(_row_line(row), flush=True)
    info["tensorflow_imported"] = "tensorflow" in sys.modules
    Path(args.child).write_text(json.dumps({**info, "results": results}, default=float))


# --- parent: one child per backend --------------------------------------------------------

def child_environment(backend: str) -> dict[str, str]:
    """The child's environment: ``KERAS_BACKEND`` and thread counts for a 1-job machine."""
    threads = str(max(1, os.cpu_count() or 1))
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2"}
    for key, value in (("TF_NUM_INTRAOP_THREADS", threads), ("TF_NUM_INTEROP_THREADS", "1"),
                       ("OMP_NUM_THREADS", threads)):
        env.setdefault(key, value)  # a caller's setting (bench_threads) wins
    return env


def run_child(backend: str, args: argparse.Namespace) -> dict:
    """Run this script with ``--child`` under ``backend``; its JSON, or an error entry."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rows.json"
        command = [sys.executable, str(Path(__file__).resolve()), "--child", str(out),
                   "--steps", str(args.steps), "--jit", args.jit,
                   "--batch-sizes", *map(str, args.batch_sizes)]
        done = subprocess.run(command, env=child_environment(backend), cwd=ROOT, check=False)
        if done.returncode != 0 or not out.is_file():
            return {"backend": backend, "error": f"child exited with status {done.returncode}",
                    "results": []}
        return json.loads(out.read_text())


def fastest(results: list[dict]) -> dict[str, dict[str, dict]]:
    """``{backend: {model: {batch_size, jit_compile, images_per_s}}}`` of the fastest rows."""
    best: dict[tuple[str, str], dict] = {}
    for row in results:
        key = (row["backend"], row["model"])
        if "images_per_s" in row and row["images_per_s"] > best.get(key, {}).get(
                "images_per_s", 0):
            best[key] = row
    out: dict[str, dict[str, dict]] = {}
    for (backend, model), row in best.items():
        out.setdefault(backend, {})[model] = {k: row[k] for k in (
            "batch_size", "jit_compile", "images_per_s")}
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=None,
                        help="Keras backends to measure (default: those installed)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--jit", choices=("both", "off"), default="both",
                        help="off: only Keras's default jit_compile='auto' (on a CPU: no XLA on "
                             "TensorFlow, jax.jit on JAX, eager PyTorch); both: False and True")
    parser.add_argument("--out", type=Path, default=OUT, help="result file (JSON)")
    parser.add_argument("--child", metavar="JSON", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        child(args)
        return
    requested = args.backends or list(BACKENDS)
    backends = []
    for backend in requested:
        if importlib.util.find_spec(backend) is None:
            print(f"skipped {backend}: not installed", flush=True)
        else:
            backends.append(backend)
    print(HEADER, flush=True)
    children = [run_child(backend, args) for backend in backends]
    results = [row for c in children for row in c["results"]]
    best = fastest(results)
    for backend, models in best.items():
        for name, row in models.items():
            print(f"fastest {backend} {name}: batch {row['batch_size']}, "
                  f"jit_compile={row['jit_compile']} ({row['images_per_s']:.1f} img/s)")
    for c in children:
        if "error" in c:
            print(f"{c['backend']}: {c['error']}")
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    write_json(args.out, {
        "cpu_count": os.cpu_count(), "platform": platform.platform(),
        "load_average_at_end": load,
        "keras": next((c["keras"] for c in children if "keras" in c), None),
        "backends": {c["backend"]: {k: v for k, v in c.items() if k not in ("backend", "results")}
                     for c in children},
        "skipped_backends": [b for b in requested if b not in backends],
        "settings": {"steps": args.steps, "batch_sizes": args.batch_sizes, "jit": args.jit},
        "results": results,
        "fastest": best})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
