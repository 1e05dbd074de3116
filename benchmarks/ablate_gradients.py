"""Training with and without one of keras_resnet's cheaper convolution gradients, in one run (issue 9).

    python benchmarks/ablate_gradients.py --change bias|pointwise [--models resnet50_v1]
        [--rounds 8] [--batch-size 32] [--precision float32] [--json out.json]

The same model's training step (`train_on_batch`, SGD, 224 px), traced two ways
and sharing weights: keras_resnet's default ("ours") and with one change undone
("theirs"):

    --change bias       keras.applications' ResNet-50 layout (`resnet50_v1`) has a bias
                        on every convolution, each followed by a BatchNorm. In training
                        the batch mean takes such a bias back out, so it changes no
                        output and its gradient is zero; computing it costs a BiasAdd
                        and, in the backward pass, a reduction that oneDNN fuses into
                        the filter gradient (`Conv2DBackpropFilterWithBias`). Ours
                        leaves it out (exact zero gradient, moving mean still with the
                        bias); theirs is `layers.biased_training_convolutions()`.
    --change pointwise  the kernel gradient of a float32 1x1 stride-1 convolution: ours
                        one MatMul over `[N*H*W, C]` views (`layers.pointwise_conv`),
                        theirs TensorFlow's Conv2DBackpropFilter
                        (`layers.convolution_filter_gradients()`). bfloat16 keeps
                        TensorFlow's either way (measured 0.98x), so use float32.

Steps alternate round by round (`common.paired_train_steps`); the speed-up is the
median of the per-round ratios theirs / ours. The first step's losses of both are
printed (they must agree to float32 round-off).
"""

import argparse
import os
import statistics
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import hardware, paired_train_steps, print_hardware, write_json  # noqa: E402

CHANGES = {  # --change: the context manager that traces "theirs"
    "bias": "biased_training_convolutions",
    "pointwise": "convolution_filter_gradients",
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--change", required=True, choices=sorted(CHANGES))
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
    from keras_resnet import kernels, layers

    info = hardware()
    print_hardware(info)
    if args.change == "bias" and kernels.load() is None:
        sys.exit(f"keras_resnet's kernels are unavailable here ({kernels.unavailable_reason()}): "
                 "the biases are kept without them, nothing to compare.")
    theirs_context = getattr(layers, CHANGES[args.change])
    keras.mixed_precision.set_global_policy(args.precision)
    side = args.image_size
    x = np.random.default_rng(0).uniform(0, 255, (args.batch_size, side, side, 3)).astype("float32")
    labels = np.arange(args.batch_size) % 1000
    results = {}
    for name in args.models.split(","):
        pair = {}
        for variant in ("ours", "theirs"):
            keras.utils.set_random_seed(0)
            model = kr.create_model(name, input_shape=(side, side, 3), classifier_activation=None)
            model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                          loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
            pair[variant] = model
        pair["theirs"].set_weights(pair["ours"].get_weights())
        first = {"ours": float(pair["ours"].train_on_batch(x, labels))}  # traces the default
        with theirs_context():
            first["theirs"] = float(pair["theirs"].train_on_batch(x, labels))  # traced and cached
        print(f"{name}: first-step loss ours {first['ours']:.6f}, theirs {first['theirs']:.6f}",
              flush=True)
        seconds = paired_train_steps(pair, x, labels, args.rounds)
        per_round = [t / o for o, t in zip(seconds["ours"], seconds["theirs"])]
        results[name] = {
            "first_step_loss": first,
            **{f"{v}_img_s": round(args.batch_size / statistics.median(seconds[v]), 2)
               for v in ("ours", "theirs")},
            "speedup_median": round(statistics.median(per_round), 3),
            "speedup_range": [round(min(per_round), 3), round(max(per_round), 3)],
            "seconds": {k: [round(s, 3) for s in v] for k, v in seconds.items()},
        }
        r = results[name]
        print(f"{name} {args.precision} training, batch {args.batch_size}, --change {args.change}: "
              f"ours {r['ours_img_s']} img/s, theirs {r['theirs_img_s']} img/s; speed-up "
              f"{r['speedup_median']:.3f} (per-round range {r['speedup_range'][0]:.3f}-"
              f"{r['speedup_range'][1]:.3f})", flush=True)
    write_json(args.json, {"change": args.change, "results": results, "precision": args.precision,
                           "rounds": args.rounds, "batch_size": args.batch_size, "image_size": side,
                           "hardware": info, "command": " ".join([sys.executable] + sys.argv)})


if __name__ == "__main__":
    main()
