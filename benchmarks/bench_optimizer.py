"""Times one optimizer step over a model's variables: Keras's SGD and AdamW vs keras_resnet's fused ones.

    python benchmarks/bench_optimizer.py [--model resnet50] [--rounds 6] [--quick] [--json out.json]

`apply_gradients` of SGD-Nesterov (momentum 0.9) and of AdamW (weight decay
0.05) over every trainable variable, compiled with tf.function, the same random
gradients for all; Keras's and keras_resnet's version of each alternate round
by round (this machine is noisy) and the report gives the median milliseconds
per step and the median of per-round ratios.
The step is memory-bound (it streams each variable, its momentum and its
gradient), so the saving is what one fused kernel per variable avoids.
"""

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(__file__))

from common import hardware, print_hardware, write_json  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="resnet50", help="a registered keras_resnet model")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps per round and optimizer")
    parser.add_argument("--quick", action="store_true", help="2 rounds of 2 steps (a smoke run).")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.steps = 2, 2
    if args.rounds < 1 or args.steps < 1:
        parser.error(f"--rounds and --steps must be >= 1. Received: rounds={args.rounds}, steps={args.steps}")

    import numpy as np
    import tensorflow as tf
    import keras
    import keras_resnet
    from keras_resnet import optimizers

    info = hardware()
    print_hardware(info)
    model = keras_resnet.create_model(args.model)
    variables = model.trainable_variables
    params = int(sum(np.prod(v.shape) for v in variables))
    grads = [tf.random.normal(v.shape, seed=i) for i, v in enumerate(variables)]
    pairs = {"SGD": dict(momentum=0.9, nesterov=True), "AdamW": dict(weight_decay=0.05)}
    steps = {}
    for kind, options in pairs.items():
        for module in (keras.optimizers, optimizers):
            optimizer = getattr(module, kind)(0.01, **options)
            optimizer.build(variables)
            name = f"{'keras_resnet' if module is optimizers else 'keras'}.optimizers.{kind}"
            steps[name] = tf.function(lambda optimizer=optimizer: optimizer.apply_gradients(zip(grads, variables)))
            steps[name]()  # trace and warm up
    ms = {name: [] for name in steps}
    for r in range(args.rounds):
        for name in (list(steps) if r % 2 == 0 else list(steps)[::-1]):
            start = time.perf_counter()
            for _ in range(args.steps):
                steps[name]()
            variables[0].numpy()  # wait for the last update
            ms[name].append((time.perf_counter() - start) / args.steps * 1000)
    speedups = {kind: float(np.median([k / f for k, f in zip(ms[f"keras.optimizers.{kind}"],
                                                              ms[f"keras_resnet.optimizers.{kind}"])]))
                for kind in pairs}
    report = {
        "command": "benchmarks/bench_optimizer.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "hardware": info, "model": args.model, "params": params, "rounds": args.rounds,
        "ms_per_step": {name: float(np.median(v)) for name, v in ms.items()},
        "ms_per_step_rounds": ms, "speedup_median": speedups,
    }
    print(f"{args.model}: {len(variables)} variables, {params:,} parameters; one optimizer step, "
          f"median of {args.rounds} rounds")
    for name, value in report["ms_per_step"].items():
        print(f"  {name:30s} {value:8.1f} ms")
    for kind, ratio in speedups.items():
        print(f"  {kind} speedup (median of per-round ratios): {ratio:.2f}x")
    write_json(args.json, report)


if __name__ == "__main__":
    main()
