"""Training with 1x1 kernel gradients as one MatMul and as TensorFlow's conv gradient (issue 9).

    python benchmarks/ablate_pointwise_gradient.py [--models resnet50_v1] [--rounds 8]
        [--batch-size 32] [--precision float32] [--json out.json]

The kernel gradient of a 1x1 stride-1 convolution is `x^T dy` over all pixels.
oneDNN's filter-gradient kernel computed it at 200-350 GFLOP/s on ResNet-50's 1x1
shapes on a Zen 5 EPYC, where a MatMul over `[N*H*W, C]` views ran at 330-400.
The same model's training step (`train_on_batch`, SGD, 224 px), traced two ways
and sharing weights:

    matmul   the default in float32: `keras_resnet.layers.pointwise_conv` (forward
             and input gradient TensorFlow's, kernel gradient one MatMul)
    conv     `keras_resnet.layers.convolution_filter_gradients()`: TensorFlow's
             Conv2DBackpropFilter

Steps alternate round by round (`common.paired_train_steps`); the speed-up is the
median of the per-round ratios. The first step's losses of both are printed (they
must agree to float32 round-off). bfloat16 keeps TensorFlow's gradient (0.98x).
"""

import argparse
import os
import statistics
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import hardware, paired_train_steps, print_hardware, write_json  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="resnet50_v1")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--precision", default="float32", choices=["float32", "mixed_bfloat16"])
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    import keras
    import numpy as np

    import keras_resnet as kr
    from keras_resnet import kernels
    from keras_resnet.layers import convolution_filter_gradients

    info = hardware()
    print_hardware(info)
    if kernels.load() is None:
        sys.exit(f"keras_resnet's kernels are unavailable here ({kernels.unavailable_reason()}): "
                 "the biases are kept without them, nothing to compare.")
    keras.mixed_precision.set_global_policy(args.precision)
    side = args.image_size
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (args.batch_size, side, side, 3)).astype("float32")
    labels = np.arange(args.batch_size) % 1000
    results = {}
    for name in args.models.split(","):
        pair = {}
        for variant in ("matmul", "conv"):
            keras.utils.set_random_seed(0)
            model = kr.create_model(name, input_shape=(side, side, 3), classifier_activation=None)
            model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                          loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
            pair[variant] = model
        pair["conv"].set_weights(pair["matmul"].get_weights())
        first = {"matmul": float(pair["matmul"].train_on_batch(x, labels))}  # traces the default
        with convolution_filter_gradients():
            first["conv"] = float(pair["conv"].train_on_batch(x, labels))  # traced (cached) conv
        print(f"{name}: first-step loss matmul {first['matmul']:.6f}, conv {first['conv']:.6f}",
              flush=True)
        pair["matmul"].train_on_batch(x, labels)
        pair["conv"].train_on_batch(x, labels)
        seconds = paired_train_steps(pair, x, labels, args.rounds)
        per_round = [b / u for u, b in zip(seconds["matmul"], seconds["conv"])]
        results[name] = {
            "first_step_loss": first,
            "matmul_step_s": round(statistics.median(seconds["matmul"]), 3),
            "conv_step_s": round(statistics.median(seconds["conv"]), 3),
            "matmul_img_s": round(args.batch_size / statistics.median(seconds["matmul"]), 2),
            "conv_img_s": round(args.batch_size / statistics.median(seconds["conv"]), 2),
            "speedup_median": round(statistics.median(per_round), 3),
            "speedup_range": [round(min(per_round), 3), round(max(per_round), 3)],
            "seconds": {k: [round(s, 3) for s in v] for k, v in seconds.items()},
        }
        r = results[name]
        print(f"{name} {args.precision} training, batch {args.batch_size}: matmul {r['matmul_img_s']} "
              f"img/s, conv {r['conv_img_s']} img/s; speed-up {r['speedup_median']:.3f} "
              f"(per-round range {r['speedup_range'][0]:.3f}-{r['speedup_range'][1]:.3f})", flush=True)
    write_json(args.json, {"results": results, "precision": args.precision, "rounds": args.rounds,
                           "batch_size": args.batch_size, "image_size": side, "hardware": info,
                           "command": " ".join([sys.executable] + sys.argv)})


if __name__ == "__main__":
    main()
