"""keras_resnet's fused BatchNorm kernels on and off: one model's training step, paired.

    python benchmarks/ablate_kernels.py [--model resnet9_half] [--image-size 32] [--batch 512]
                                        [--precision float32|mixed_bfloat16] [--rounds 6]
                                        [--json out.json]

Builds the model twice from the same seed, traces one `train_on_batch` with keras_resnet's
kernels (`keras_resnet.kernels`) and one with TensorFlow's ops (`kernels.disabled()`), then
times one step of each per round, alternating which goes first, and reports the median of
the per-round time ratios (TensorFlow's / the kernels': above 1 means the kernels are
faster). Any model of the registry; `bench_memory_bound.py` does the same for ResNet-50 v1
at 224 px beside its per-op timings.
"""

import argparse
import contextlib
import os
import statistics
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import hardware, paired_train_steps, print_hardware, write_json  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="resnet9_half")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--precision", default="float32", choices=["float32", "mixed_bfloat16"])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if min(args.batch, args.rounds) < 1:
        parser.error(f"--batch and --rounds must be >= 1. Received: batch={args.batch}, rounds={args.rounds}")

    import keras
    import numpy as np
    import tensorflow as tf

    import keras_resnet as kr
    from keras_resnet import kernels

    info = hardware()
    print_hardware(info)
    if kernels.load() is None:
        raise SystemExit(f"keras_resnet's kernels are unavailable here: {kernels.unavailable_reason()}")
    keras.mixed_precision.set_global_policy(args.precision)
    rng = np.random.default_rng(0)
    shape = (args.batch, args.image_size, args.image_size, 3)
    x = tf.constant(rng.normal(0, 1, shape).astype("float32"))
    y = tf.constant(rng.integers(0, 10, args.batch))
    models = {}
    for mode in ("tensorflow", "kernels"):
        keras.utils.set_random_seed(0)
        model = kr.create_model(args.model, input_shape=shape[1:], num_classes=10)
        model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                      loss="sparse_categorical_crossentropy")
        with kernels.disabled() if mode == "tensorflow" else contextlib.nullcontext():
            model.train_on_batch(x, y)  # traces the step with or without the kernels
        model.train_on_batch(x, y)
        models[mode] = model
    # The A/B is only an A/B if the kernels are in one step and not the other.
    for mode, model in models.items():
        with kernels.disabled() if mode == "tensorflow" else contextlib.nullcontext():
            graph = tf.function(lambda x: model(x, training=True)).get_concrete_function(x).graph
        count = sum(op.type == "KerasResnetBatchNormAct" for op in graph.get_operations())
        if (count > 0) != (mode == "kernels"):
            raise SystemExit(f"{args.model} traced {count} keras_resnet kernel ops with mode={mode!r}: "
                             f"this model or precision does not run through the kernels")
    seconds = paired_train_steps(models, x, y, args.rounds)
    ratio = statistics.median(t / k for t, k in zip(seconds["tensorflow"], seconds["kernels"]))
    ms = {mode: round(1e3 * statistics.median(s), 1) for mode, s in seconds.items()}
    print(f"{args.model} {args.image_size} px, batch {args.batch}, {args.precision}: train step "
          f"TensorFlow's ops {ms['tensorflow']} ms, keras_resnet's kernels {ms['kernels']} ms; "
          f"paired speed-up {ratio:.3f}x (median of {args.rounds} rounds)")
    write_json(args.json, {"command": " ".join([sys.executable] + sys.argv), "hardware": info,
                           "model": args.model, "image_size": args.image_size, "batch": args.batch,
                           "precision": args.precision, "step_ms_median": ms,
                           "step_seconds_rounds": seconds, "speedup_paired": ratio})
    return ratio


if __name__ == "__main__":
    main()
