"""`python -m benchmarks [NAME ...]`: run the benchmarks (all by default) in one process order.

Each prints its table and writes runs/bench/<name>.json; the summary at the end collects
the headline ratios against the targets.
"""

from __future__ import annotations

import importlib
import json
import sys

ORDER = ("bench_ceiling", "bench_ssim", "bench_training", "bench_threads", "bench_fit_overhead",
         "bench_inference", "bench_scoring", "bench_floor", "bench_head", "bench_pipeline",
         "bench_run", "bench_sweep_cluster")


def _load(name: str) -> dict | None:
    from benchmarks.common import BENCH_DIR

    path = BENCH_DIR / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def summary() -> str:
    """The headline numbers against the targets, from runs/bench/*.json."""
    from benchmarks.common import table

    rows = []
    ceiling = _load("ceiling")
    ssim = _load("ssim")
    if ssim:
        for r in ssim["rows"]:
            rows.append({"measure": f"fast SSIM vs tf.image.ssim, {r['size']}px x{r['n_pairs']}",
                         "value": f"{r['speedup_vs_tf_image_ssim']:.2f}x", "target": ">= 10x"})
            if "max_speedup_vs_tf_image_ssim_with_library_blurs" in r:
                rows.append({"measure": f"  bound: tf.image.ssim / cv2 blurs alone, {r['size']}px",
                             "value": f"{r['max_speedup_vs_tf_image_ssim_with_library_blurs']:.2f}x",
                             "target": "(limit)"})
            rows.append({"measure": f"fast SSIM max |diff| vs skimage, {r['size']}px",
                         "value": f"{r['max_abs_diff_vs_skimage']:.1e}", "target": "<= 1e-4"})
    inference = _load("inference")
    if inference:
        r = inference["rows"][0]
        rows.append({"measure": "AE-2 sliding window, batched vs per-patch predict",
                     "value": f"{r['speedup']:.1f}x (max diff {r['max_abs_diff']:.0e})",
                     "target": ">= 3x, <= 1e-5"})
    pipeline = _load("pipeline")
    if pipeline:
        rows.append({"measure": "training from disk / from memory",
                     "value": f"{pipeline['disk_over_memory']:.2f}", "target": ">= 0.95"})
        if "ae2_fit_pipeline_over_arrays" in pipeline:
            rows.append({"measure": "AE-2 fit from patch_dataset / from fixed arrays",
                         "value": f"{pipeline['ae2_fit_pipeline_over_arrays']:.2f}",
                         "target": "(reported)"})
    training = _load("training")
    if training:
        best: dict[tuple[str, str], dict] = {}
        for r in training["results"]:
            key = (r.get("backend", "tensorflow"), r["model"])  # files from before backends
            if r.get("achieved_gflops_per_s", 0) > best.get(key, {}).get(
                    "achieved_gflops_per_s", 0):
                best[key] = r
        for (backend, model), r in best.items():
            value = f"{r['images_per_s']:.1f} img/s = {r['achieved_gflops_per_s']:.0f} GFLOP/s"
            if ceiling:
                value += (f" = {r['achieved_gflops_per_s'] / ceiling['tf_matmul_gflops']:.0%}"
                          " of matmul ceiling")
            rows.append({"measure": f"training {model} on {backend}: best of batch/jit "
                                    f"(batch {r['batch_size']}, jit {r['jit_compile']})",
                         "value": value, "target": "reported"})
    head = _load("head")
    if head:
        share = head["fraction_of_ceiling"]
        rows.append({"measure": "segmentation head training, 64x64 RGB crops (fit / bare step)",
                     "value": f"{head['fit_images_per_s']:.0f} / {head['step_images_per_s']:.0f}"
                              f" img/s" + (f", step {share:.0%} of matmul ceiling"
                                           if share else ""), "target": "reported"})
        rows.append({"measure": "AE-2 + head full map, 256x256 RGB",
                     "value": f"{head['map_256_images_per_s']:.1f} img/s (head "
                              f"{head['head_share_of_map_time']:.0%} of it)",
                     "target": "reported"})
    floor = _load("floor")
    if floor:
        rows.append({"measure": "floor's nearest-pixel maps, busy cores: BLAS pool / one thread",
                     "value": f"{floor['pool_over_one_thread_busy']:.1f}x",
                     "target": "(one thread kept)"})
        rows.append({"measure": "floor's choice without / with the map memo",
                     "value": f"{floor['without_over_with_memo']:.2f}x", "target": "(reported)"})
    overhead = _load("fit_overhead")
    if overhead:
        values = " / ".join(f"{r['epoch s (mean)']:.2f} s" for r in overhead["rows"])
        settings = " / ".join(r["setting"] for r in overhead["rows"])
        rows.append({"measure": f"AE-1 epoch: {settings}", "value": values,
                     "target": "(before/after)"})
    sweep = _load("sweep_cluster")
    if sweep:
        rows.append({"measure": "4-configuration tiny sweep, serial / local:2 wall time",
                     "value": f"{sweep['serial_over_cluster']:.2f}x", "target": "(overhead)"})
    run = _load("run")
    if run:
        rows.append({"measure": "make run on the defaults", "value":
                     f"{run['total_seconds']:.0f} s, peak RSS {run['peak_rss_gib']:.2f} GiB",
                     "target": "<= 600 s, < 4 GiB"})
    return table(rows, "Summary against the targets")


def main(names: list[str]) -> int:
    chosen = [n if n.startswith("bench_") else f"bench_{n}" for n in names] or list(ORDER)
    for name in chosen:
        print(f"\n=== {name} ===", flush=True)
        sys.argv = [name]  # each script parses its own options; run it with its defaults
        importlib.import_module(f"benchmarks.{name}").main()
    print()
    print(summary())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
