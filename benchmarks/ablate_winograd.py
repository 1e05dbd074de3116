"""Inference with Winograd F(4x4, 3x3) convolutions and without, in one run (issue 9).

    python benchmarks/ablate_winograd.py [--models resnet50_v1,resnet50,resnet18]
        [--rounds 6] [--batch-size 32] [--train-steps 8] [--json out.json]

The same keras_resnet models (224 px, float32, `predict_on_batch`), traced two ways:

    winograd   the default: every folded 3x3 stride-1 convolution with 128+ channels
               and 64+ output tiles in the batch runs as
               `keras_resnet.kernels.winograd_conv` (two transforms around one batched
               matmul: 4x fewer multiply-adds)
    direct     `keras_resnet.layers.direct_convolutions()`: TensorFlow's oneDNN
               convolution for every layer, as before

A float32 matmul probe (`matmul_probe.make_probe`) runs before each round and after
every variant; each variant's throughput is also given as a share of the mean of
the probes on either side, using the model's *direct* FLOP count (so Winograd can
exceed 100%: it does fewer multiplies than the count). Every round times every
variant once, in rotated order; ratios are medians of per-round ratios. Both
variants share weights; their logits are compared.

With `--train-steps N`, each model's training step (`train_on_batch`, SGD, batch
statistics) is also timed both ways, N alternating rounds
(`common.paired_train_steps`): in training the same layers run Winograd in the
forward pass and for the input's gradient.
"""

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_models import probes_beside  # noqa: E402
from common import (FORWARD_GMACS, forward_gflops, hardware, paired_train_steps,  # noqa: E402
                    print_hardware, write_json)
from matmul_probe import make_probe  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="resnet50_v1,resnet50,resnet18")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--batches", type=int, default=3, help="Timed predict batches per round.")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--probe", type=int, default=1, help="Matmul probes beside every variant (1/0).")
    parser.add_argument("--train-steps", type=int, default=0,
                        help="Also time N paired training steps per model (0: inference only).")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    import keras
    import numpy as np

    import keras_resnet as kr
    from keras_resnet import kernels
    from keras_resnet.layers import direct_convolutions

    info = hardware()
    print_hardware(info)
    if kernels.load() is None:
        sys.exit(f"keras_resnet's kernels are unavailable here ({kernels.unavailable_reason()}): "
                 "nothing to compare.")
    keras.mixed_precision.set_global_policy("float32")
    side = args.image_size
    x = np.random.default_rng(0).uniform(0, 255, (args.batch_size, side, side, 3)).astype("float32")
    variants, flops = {}, {}
    for name in args.models.split(","):
        keras.utils.set_random_seed(0)
        winograd = kr.create_model(name, input_shape=(side, side, 3), classifier_activation=None)
        direct = kr.create_model(name, input_shape=(side, side, 3), classifier_activation=None)
        direct.set_weights(winograd.get_weights())
        want = np.asarray(winograd.predict_on_batch(x), "float32")  # traces the default form
        with direct_convolutions():
            got = np.asarray(direct.predict_on_batch(x), "float32")  # traced (and cached) direct
        diff = float(np.abs(want - got).max() / np.abs(got).max())
        print(f"{name}: max |winograd - direct| / max |logit| = {diff:.2e}", flush=True)
        info[f"{name}_max_rel_diff"] = diff
        variants[f"{name} winograd"] = (winograd, [], [])
        variants[f"{name} direct"] = (direct, [], [])
        key = f"{name}@{side}"
        flops[name] = forward_gflops(key) if key in FORWARD_GMACS else None

    probe = make_probe("float32") if args.probe else None
    names = list(variants)
    probes = []
    for r in range(args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        samples = [probe(3, 1)] if probe else []
        for name in order:
            model, times, _ = variants[name]
            model.predict_on_batch(x)  # the other variants ran in between: one untimed batch
            start = time.perf_counter()
            for _ in range(args.batches):
                model.predict_on_batch(x)
            times.append(args.batch_size * args.batches / (time.perf_counter() - start))
            if probe:
                samples.append(probe(3, 0))
        if probe:
            for name, beside in zip(order, probes_beside(samples)):
                variants[name][2].append(beside)
            probes.append([round(s, 1) for s in samples])
        print(f"  round {r + 1}: " + ", ".join(f"{n} {variants[n][1][-1]:.1f}" for n in names)
              + (f" (probes {min(samples):.0f}-{max(samples):.0f} GFLOP/s)" if probe else ""),
              flush=True)

    results, ratios = [], {}
    for name in names:
        _, times, beside = variants[name]
        row = {"name": name, "infer_img_s": round(statistics.median(times), 2),
               "rounds": [round(v, 2) for v in times]}
        gflops = flops[name.split(" ")[0]]
        if beside and gflops:
            shares = [t * gflops / p for t, p in zip(times, beside)]
            row["infer_pct_peak"] = round(100 * statistics.median(shares), 1)
            row["probe_gflops_rounds"] = [round(p, 1) for p in beside]
        results.append(row)
    for model_name in args.models.split(","):
        a, b = variants[f"{model_name} winograd"][1], variants[f"{model_name} direct"][1]
        per_round = [p / q for p, q in zip(a, b)]
        ratios[f"{model_name} winograd / direct"] = {
            "median": round(statistics.median(per_round), 3),
            "min": round(min(per_round), 3), "max": round(max(per_round), 3)}
    print("\n| variant | infer img/s | % of the paired fp32 probe (direct FLOPs) |\n| --- | ---: | ---: |")
    for r in results:
        print(f"| {r['name']} | {r['infer_img_s']} | {r.get('infer_pct_peak', '')} |")
    for k, v in ratios.items():
        print(f"ratio {k}: {v['median']:.3f} (per-round range {v['min']:.3f}-{v['max']:.3f})")
    train = {}
    for model_name in args.models.split(",") if args.train_steps else []:
        pair = {}
        for variant in ("winograd", "direct"):
            model = variants[f"{model_name} {variant}"][0]
            model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                          loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
            pair[variant] = model
        labels = np.arange(args.batch_size) % 1000
        pair["winograd"].train_on_batch(x, labels)  # traces the default form
        with direct_convolutions():
            pair["direct"].train_on_batch(x, labels)  # traced (and cached) direct
        seconds = paired_train_steps(pair, x, labels, args.train_steps)
        per_round = [d / w for w, d in zip(seconds["winograd"], seconds["direct"])]
        train[model_name] = {
            "winograd_step_s": round(statistics.median(seconds["winograd"]), 3),
            "direct_step_s": round(statistics.median(seconds["direct"]), 3),
            "speedup_median": round(statistics.median(per_round), 3),
            "speedup_min": round(min(per_round), 3), "speedup_max": round(max(per_round), 3)}
        print(f"train {model_name}: step {train[model_name]['winograd_step_s']} s Winograd, "
              f"{train[model_name]['direct_step_s']} s direct; paired speed-up "
              f"{train[model_name]['speedup_median']:.3f} (range {min(per_round):.3f}-"
              f"{max(per_round):.3f})", flush=True)
    write_json(args.json, {"results": results, "ratios": ratios, "train": train,
                           "batch": args.batch_size,
                           "image_size": side, "rounds": args.rounds, "probes": probes,
                           "hardware": info, "command": " ".join([sys.executable] + sys.argv)})
    return results, ratios


if __name__ == "__main__":
    main()
