"""The machine's own ceiling: float32 matmul FLOP/s (TensorFlow, numpy) and memory bandwidth.

Training throughput elsewhere is reported as a fraction of these numbers, measured in the
same `make bench` run.
"""

from __future__ import annotations

import numpy as np

from benchmarks.common import best_time, table, write_result


def measure() -> dict:
    import tensorflow as tf

    n = 2048
    flops = 2 * n**3
    a_np = np.random.default_rng(0).random((n, n), dtype=np.float32)
    b_np = np.random.default_rng(1).random((n, n), dtype=np.float32)
    numpy_s = best_time(lambda: a_np @ b_np)
    a_tf, b_tf = tf.constant(a_np), tf.constant(b_np)
    tf_s = best_time(lambda: tf.linalg.matmul(a_tf, b_tf).numpy())
    big = np.ones(256 * 1024 * 1024 // 4, np.float32)  # 256 MiB
    out = np.empty_like(big)
    copy_s = best_time(lambda: np.copyto(out, big))
    return {
        "matmul_n": n,
        "tf_matmul_gflops": flops / tf_s / 1e9,
        "numpy_matmul_gflops": flops / numpy_s / 1e9,
        "memory_copy_gbps": 2 * big.nbytes / copy_s / 1e9,  # read + write
    }


def main() -> dict:
    result = measure()
    print(table([{"measure": k, "value": v} for k, v in result.items()], "Machine ceiling"))
    write_result("ceiling", result)
    return result


if __name__ == "__main__":
    main()
