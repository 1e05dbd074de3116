"""Measures this machine's matrix-multiply peak (GFLOP/s) in fp32 and bf16.

    python benchmarks/matmul_probe.py [--json out.json]

The peak is the best of a few large square matmuls through TensorFlow (oneDNN),
i.e. the ceiling that convolution-heavy training can approach.
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(__file__))

from common import print_hardware, timed, write_json  # noqa: E402


def make_probe(dtype="float32", n=2048):
    """A callable `(repeats, warmup) -> GFLOP/s` over one traced n x n matmul.

    Built once, so it can be called again and again beside a benchmark (bench_models.py
    probes between every model's timed slot) without retracing.
    """
    import tensorflow as tf

    a = tf.random.normal((n, n), dtype=tf.float32)
    b = tf.random.normal((n, n), dtype=tf.float32)
    if dtype != "float32":
        a, b = tf.cast(a, dtype), tf.cast(b, dtype)
    # A scalar out of the product: fetching it waits for the matmul, not for a copy.
    matmul = tf.function(lambda: tf.matmul(a, b)[0, 0])

    def measure(repeats=5, warmup=2):
        seconds = timed(lambda: matmul().numpy(), repeats=repeats, warmup=warmup)
        return 2.0 * n ** 3 / seconds / 1e9

    return measure


def probe(dtype="float32", n=2048, repeats=5):
    return make_probe(dtype, n)(repeats, warmup=2)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", default=None)
    parser.add_argument("--size", type=int, default=2048)
    args = parser.parse_args(argv)
    print_hardware()
    result = {dtype: round(probe(dtype, args.size), 1) for dtype in ("float32", "bfloat16")}
    for dtype, gflops in result.items():
        print(f"matmul peak {dtype}: {gflops} GFLOP/s")
    write_json(args.json, {"matmul_gflops": result})
    return result


if __name__ == "__main__":
    main()
