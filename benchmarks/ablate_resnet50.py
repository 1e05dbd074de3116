"""Where a ResNet-50 training step's time goes: an ablation in one run (issue 9).

    python benchmarks/ablate_resnet50.py [--steps 3] [--batch-size 32] [--json out.json]

The same keras_resnet ResNet-50 (v1.5, 224 px, batch 32, SGD) trained with
`train_on_batch` in four forms, interleaved round by round:

    float32 / mixed_bfloat16      the precision policy
    BatchNorm / no normalization  `normalization=None` removes every BatchNorm
                                  (convolutions get biases instead)

Removing BatchNorm shows what BatchNorm (and, under mixed precision, the casts
around it, since Keras runs it in float32) costs; comparing with the matmul peak
of `matmul_probe.py` shows how far the convolutions themselves are from it. An
ablation, not a trace: it attributes time by removing work, so it needs no
profiler plugin and prints the same table on any machine.
"""

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import hardware, print_hardware, train_gflops, write_json  # noqa: E402


def build(precision, normalization, batch):
    import keras
    import numpy as np
    import tensorflow as tf

    import keras_resnet as kr

    keras.mixed_precision.set_global_policy(precision)
    try:
        keras.utils.set_random_seed(0)
        model = kr.create_model("resnet50", normalization=normalization)
        model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), loss="categorical_crossentropy")
    finally:
        keras.mixed_precision.set_global_policy("float32")
    rng = np.random.default_rng(0)
    x = tf.constant(rng.uniform(0, 255, (batch, 224, 224, 3)).astype("float32"))
    y = tf.constant(np.eye(1000, dtype="float32")[rng.integers(0, 1000, batch)])
    return model, x, y


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=3, help="Timed steps per variant and round.")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    info = hardware()
    print_hardware(info)

    variants = {}
    for precision in ("float32", "mixed_bfloat16"):
        for norm in ("batch", None):
            name = f"{precision}, {'BatchNorm' if norm else 'no normalization'}"
            model, x, y = build(precision, norm, args.batch_size)
            start = time.perf_counter()
            for _ in range(2):
                model.train_on_batch(x, y)
            print(f"  warm-up {name:34s} {time.perf_counter() - start:6.1f} s", flush=True)
            variants[name] = (model, x, y, [])
    for r in range(args.rounds):
        for name, (model, x, y, rates) in variants.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                logs = model.train_on_batch(x, y, return_dict=True)
            float(logs["loss"])
            rates.append(args.batch_size * args.steps / (time.perf_counter() - start))
        print(f"  round {r + 1}: " + ", ".join(f"{n} {v[3][-1]:.2f}" for n, v in variants.items()), flush=True)

    gflop = train_gflops("resnet50@224")
    rows = {name: round(statistics.median(v[3]), 2) for name, v in variants.items()}
    print("\n| ResNet-50 training step | img/s | ms per image | GFLOP/s (24.5 GFLOP/img) |")
    print("| --- | ---: | ---: | ---: |")
    for name, rate in rows.items():
        print(f"| {name} | {rate} | {1000 / rate:.0f} | {rate * gflop:.0f} |")
    shares = {}
    for precision in ("float32", "mixed_bfloat16"):
        with_bn = rows[f"{precision}, BatchNorm"]
        without = rows[f"{precision}, no normalization"]
        shares[precision] = round(1 - with_bn / without, 3)
        print(f"{precision}: BatchNorm (with its casts) takes {100 * shares[precision]:.0f}% of the step "
              f"({1000 / with_bn - 1000 / without:.0f} of {1000 / with_bn:.0f} ms per image)")
    write_json(args.json, {"img_s": rows, "batchnorm_share": shares, "hardware": info,
                           "batch": args.batch_size, "command": " ".join([sys.executable] + sys.argv)})


if __name__ == "__main__":
    main()
