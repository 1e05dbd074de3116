"""Inference with and without the residual-sum fold, in one run (issue 9).

    python benchmarks/ablate_inference.py [--rounds 5] [--batch-size 32] [--json out.json]

The same keras_resnet ResNet-50s (`resnet50_v1`, the keras.applications layout,
and `resnet50`, v1.5), 224 px, `predict_on_batch`, traced two ways:

    folded     the default: every conv + BatchNorm pair in a residual block is folded
               into one convolution + bias (`keras_resnet.layers.folded_conv_batchnorm`),
               so TensorFlow's oneDNN remapper fuses conv + bias + ReLU, and conv + bias
               + residual add + ReLU for each block's last convolution
    unfolded   `keras_resnet.layers.unfolded_inference()`, the previous behaviour: each
               BatchNorm stays a FusedBatchNormV3 after its conv (a biased conv's bias
               moved into the moving mean), the add and ReLU run apart

Every round times every variant once, in rotated order; the ratio is the median of
the per-round ratios. Both variants share weights, so their outputs are compared too.
"""

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import forward_gflops, hardware, print_hardware, write_json  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, default=3, help="Timed predict batches per round.")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--precision", default="float32")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    import keras
    import numpy as np

    import keras_resnet as kr
    from keras_resnet.layers import unfolded_inference

    info = hardware()
    print_hardware(info)
    keras.mixed_precision.set_global_policy(args.precision)
    rng = np.random.default_rng(0)
    side = args.image_size
    x = rng.uniform(0, 255, (args.batch_size, side, side, 3)).astype("float32")
    variants = {}
    for name in ("resnet50_v1", "resnet50"):
        keras.utils.set_random_seed(0)
        folded = kr.create_model(name, input_shape=(side, side, 3), classifier_activation=None)
        unfolded = kr.create_model(name, input_shape=(side, side, 3), classifier_activation=None)
        unfolded.set_weights(folded.get_weights())
        want = folded.predict_on_batch(x)  # traces the folded form
        with unfolded_inference():
            got = unfolded.predict_on_batch(x)  # traced (and cached) unfolded
        want, got = np.asarray(want, "float32"), np.asarray(got, "float32")
        diff = float(np.abs(want - got).max() / np.abs(want).max())  # logits, relative
        print(f"{name}: max |folded - unfolded| / max |logit| = {diff:.2e}", flush=True)
        variants[f"{name} folded"] = (folded, [])
        variants[f"{name} unfolded"] = (unfolded, [])
        info[f"{name}_max_abs_diff"] = diff

    names = list(variants)
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            model, times = variants[name]
            start = time.perf_counter()
            for _ in range(args.batches):
                model.predict_on_batch(x)
            times.append(args.batch_size * args.batches / (time.perf_counter() - start))
        print(f"  round {r + 1}: " + ", ".join(f"{n} {variants[n][1][-1]:.1f}" for n in names), flush=True)

    results, ratios = [], {}
    for name in names:
        results.append({"name": name, "infer_img_s": round(statistics.median(variants[name][1]), 2),
                        "rounds": [round(v, 2) for v in variants[name][1]]})
    for model_name in ("resnet50_v1", "resnet50"):
        a, b = variants[f"{model_name} folded"][1], variants[f"{model_name} unfolded"][1]
        ratios[f"{model_name} folded / unfolded"] = round(statistics.median(p / q for p, q in zip(a, b)), 3)
    print("\n| variant | infer img/s |\n| --- | ---: |")
    for r in results:
        print(f"| {r['name']} | {r['infer_img_s']} |")
    for k, v in ratios.items():
        print(f"ratio {k}: {v:.3f}")
    if side == 224:
        print(f"(ResNet-50 forward: {forward_gflops('resnet50@224'):.2f} GFLOP per image)")
    write_json(args.json, {"results": results, "ratios": ratios, "precision": args.precision,
                           "batch": args.batch_size, "rounds": args.rounds, "hardware": info,
                           "command": " ".join([sys.executable] + sys.argv)})


if __name__ == "__main__":
    main()
