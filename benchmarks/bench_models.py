"""Training and inference throughput: keras_resnet against keras.applications, in one run.

    python benchmarks/bench_models.py [--precision float32|mixed_bfloat16] [--rounds N]
                                      [--quick] [--json out.json]

Models (batch 32, synthetic data, the same SGD + cross-entropy compile for all):

    keras.applications ResNet50   224 px, weights=None: the reference
    keras_resnet resnet50_v1      224 px, the identical layout (conv biases, stride on the 1x1)
    keras_resnet resnet50         224 px, the default v1.5 layout (torchvision: no conv biases,
                                  stride on the 3x3)
    keras_resnet resnet20         32 px, CIFAR ResNet-20 (no keras.applications counterpart)
    keras_resnet resnet9_half     32 px, ResNet-9 at half width (the cifar10_fast net)
    keras-hub ResNet50            224 px, keras-hub's ResNetBackbone in its ResNet-50 layout +
                                  the same head; only when keras_hub imports (`--keras-hub 0`
                                  skips it)

Training is `model.train_on_batch` (the compiled `train_step` that `model.fit` runs) and
inference `model.predict_on_batch` (the compiled `predict_step`); keras_resnet models are
also timed through `keras_resnet.fold_batchnorm` (BatchNorms folded and Winograd filters
transformed once, for fixed weights), a separate column. Every model is built and
warmed up (tracing excluded) first; then each round times every model once, in a rotated
order, so machine noise and drift hit all models alike. Throughput is the median over
rounds; each ratio keras_resnet / keras.applications is the median of the per-round ratios
(both measured within the same round). The issue asks for ratio >= 1.0 in float32 for the
same architecture (resnet50_v1).

Share of the matmul peak, paired: a matmul probe (`matmul_probe.make_probe`, the precision's
compute dtype) runs before the first model of every round and after each model, in this
process; each model's round is set against the mean of the probes on either side of it, and
the reported `train_pct_peak` / `infer_pct_peak` is the median of those per-round shares. On
a VM whose speed drifts by 20-40% within an hour, a probe taken minutes earlier (the suite's
separate `matmul_probe.py`) can move a "% of peak" by more than anything in the model;
`--probe 0` turns the paired probe off.

`--quick` is a smoke run (one round, one step, 64 px ResNet-50s): it checks the script, its
numbers are not the benchmark. The full run takes about 6-8 minutes on 2 CPU cores at
float32 (ResNet-50 trains at ~6-9 img/s there); mixed_bfloat16 is much slower on CPUs without
native bf16 (AVX512-BF16/AMX).
"""

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import forward_gflops, hardware, print_hardware, train_gflops, write_json  # noqa: E402
from keras_resnet.hostinfo import StealMeter, steal_warning  # noqa: E402

REFERENCE = "keras.applications ResNet50"
SAME_ARCH = "keras_resnet resnet50_v1"
KERAS_HUB = "keras-hub ResNet50"
SMALL = {"keras_resnet resnet20": "resnet20@32", "keras_resnet resnet9_half": "resnet9_half@32"}
MODELS = (REFERENCE, SAME_ARCH, "keras_resnet resnet50", *SMALL)


def short_name(name):
    """`resnet50_v1` for keras_resnet models, the full name for the peers."""
    return name.split()[-1] if name.startswith("keras_resnet") else name


def keras_hub_available():
    try:
        import keras_hub  # noqa: F401
    except Exception:  # not installed, or installed without its optional deps
        return False
    return True


def keras_hub_resnet50(image_size):
    """keras-hub's ResNet-50 (the `resnet_50_imagenet` preset's layout, built from its
    config: presets download weights) + the same average-pool head as keras.applications."""
    import keras
    import keras_hub

    backbone = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[7],
        stackwise_num_filters=[64, 128, 256, 512], stackwise_num_blocks=[3, 4, 6, 3],
        stackwise_num_strides=[1, 2, 2, 2], block_type="bottleneck_block",
        use_pre_activation=False, image_shape=(image_size, image_size, 3))
    inputs = keras.Input((image_size, image_size, 3))
    x = keras.layers.GlobalAveragePooling2D()(backbone(inputs))
    outputs = keras.layers.Dense(1000, activation="softmax", dtype="float32")(x)
    return keras.Model(inputs, outputs, name="keras_hub_resnet50")


def build(name, image_size):
    import keras

    import keras_resnet as kr

    if name == REFERENCE:
        model = keras.applications.ResNet50(weights=None, input_shape=(image_size, image_size, 3))
    elif name == KERAS_HUB:
        model = keras_hub_resnet50(image_size)
    elif name in SMALL:
        model = kr.create_model(name.split()[-1])
    else:
        model = kr.create_model(name.split()[-1], input_shape=(image_size, image_size, 3))
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                  loss="categorical_crossentropy")
    return model


class Bench:
    """One model, its synthetic batch, and its timed train/predict steps."""

    def __init__(self, name, image_size, batch, train_steps, infer_batches):
        import numpy as np
        import tensorflow as tf

        self.name = name
        self.small = name in SMALL
        self.size = 32 if self.small else image_size
        self.model = build(name, self.size)
        classes = self.model.output_shape[-1]
        rng = np.random.default_rng(0)
        self.x = tf.constant(rng.uniform(0, 255, (batch, self.size, self.size, 3)).astype("float32"))
        self.y = tf.constant(np.eye(classes, dtype="float32")[rng.integers(0, classes, batch)])
        self.batch = batch
        # ResNet-20 steps are ~100x cheaper: more of them for a comparable timing window.
        scale = 16 if self.small else 1
        self.train_steps = train_steps * scale
        self.infer_batches = infer_batches * scale
        self.train, self.infer = [], []
        # keras_resnet models are also timed through `fold_batchnorm` (weights
        # folded once, for fixed-weight inference); not keras.applications / keras-hub.
        self.snapshot = None
        self.infer_snapshot = []
        self.probe = []  # GFLOP/s of the matmul probes around each round (their mean)

    def warmup(self, steps=2):
        """Traces the train and predict functions and runs past the first-step allocations."""
        start = time.perf_counter()
        for _ in range(steps):
            self.model.train_on_batch(self.x, self.y)
        for _ in range(steps):
            self.model.predict_on_batch(self.x)
        if self.name.startswith("keras_resnet"):
            import tensorflow as tf

            from keras_resnet import fold_batchnorm

            folded = fold_batchnorm(self.model)
            self.snapshot = tf.function(lambda x: folded(x, training=False))
            for _ in range(steps):
                self.snapshot(self.x).numpy()
        return time.perf_counter() - start

    def round(self):
        start = time.perf_counter()
        for _ in range(self.train_steps):
            logs = self.model.train_on_batch(self.x, self.y, return_dict=True)
        float(logs["loss"])  # make sure the step finished
        self.train.append(self.batch * self.train_steps / (time.perf_counter() - start))
        start = time.perf_counter()
        for _ in range(self.infer_batches):
            self.model.predict_on_batch(self.x)
        self.infer.append(self.batch * self.infer_batches / (time.perf_counter() - start))
        if self.snapshot is not None:
            start = time.perf_counter()
            for _ in range(self.infer_batches):
                self.snapshot(self.x).numpy()
            self.infer_snapshot.append(self.batch * self.infer_batches / (time.perf_counter() - start))

    def pct_peak(self, kind):
        """Median over rounds of this round's throughput x FLOPs / the probe beside it."""
        key = self.flops_key()
        if key is None or not self.probe or not getattr(self, kind):
            return None
        gflops = train_gflops(key) if kind == "train" else forward_gflops(key)
        shares = [100 * img_s * gflops / peak for img_s, peak in zip(getattr(self, kind), self.probe)]
        return round(statistics.median(shares), 1)

    def flops_key(self):
        if self.small:
            return SMALL[self.name]
        if self.size != 224:
            return None
        # keras.applications' ResNet50 and keras_resnet's resnet50_v1 are v1 (fewer MACs).
        v1 = self.name.endswith("resnet50_v1") or self.name.startswith("keras.applications")
        return "resnet50_v1@224" if v1 else "resnet50@224"

    def result(self, precision):
        return {
            "name": self.name, "precision": precision, "batch": self.batch, "image_size": self.size,
            "flops_key": self.flops_key(),
            "train_img_s": round(statistics.median(self.train), 2),
            "infer_img_s": round(statistics.median(self.infer), 2),
            "train_img_s_rounds": [round(v, 2) for v in self.train],
            "infer_img_s_rounds": [round(v, 2) for v in self.infer],
            "params": int(self.model.count_params()),
            "probe_gflops_rounds": [round(v, 1) for v in self.probe],
            "train_pct_peak": self.pct_peak("train"),
            "infer_pct_peak": self.pct_peak("infer"),
            "infer_snapshot_img_s": (round(statistics.median(self.infer_snapshot), 2)
                                     if self.infer_snapshot else None),
            "infer_snapshot_img_s_rounds": [round(v, 2) for v in self.infer_snapshot],
            "infer_snapshot_pct_peak": self.pct_peak("infer_snapshot"),
        }


def measure(name, precision, batch=32, train_steps=2, repeats=1, image_size=224):
    """One model alone, briefly (what bench_pipeline.py compares its pipelines to).

    Returns the same dict as `Bench.result`; not the paired benchmark of `main`.
    """
    import keras

    keras.mixed_precision.set_global_policy(precision)
    keras.utils.set_random_seed(0)
    bench = Bench(name, image_size, batch, train_steps, infer_batches=1)
    bench.warmup(1)
    for _ in range(repeats):
        bench.round()
    return bench.result(precision)


def select_models(spec, available):
    """The reference plus the models named in `spec` (short names), in suite order."""
    wanted = {w.strip() for w in spec.split(",") if w.strip()}
    known = {short_name(m): m for m in MODELS + (KERAS_HUB,)}
    known["keras.applications"] = REFERENCE
    known["keras-hub"] = KERAS_HUB
    unknown = sorted(wanted - set(known))
    if unknown:
        raise SystemExit(f"Unknown model in --models. Received: {unknown}. Valid: {sorted(known)}")
    chosen = {known[w] for w in wanted} | {REFERENCE}
    return tuple(m for m in available if m in chosen)


def probes_beside(samples):
    """The probe for each of a round's slots: the mean of the probe taken just before it
    and the one just after (`samples` = one probe before the first model, then one after
    each model)."""
    return [(before + after) / 2 for before, after in zip(samples, samples[1:])]


def paired_ratio(ours, ref):
    """Median and range of the per-round ratios (both measured in the same round)."""
    ratios = [a / b for a, b in zip(ours, ref)]
    return round(statistics.median(ratios), 3), round(min(ratios), 3), round(max(ratios), 3)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--precision", default="float32",
                        choices=["float32", "mixed_bfloat16", "mixed_float16"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5, help="Rounds over all models (default 5).")
    parser.add_argument("--train-steps", type=int, default=2, help="Timed train steps per round (ResNet-50).")
    parser.add_argument("--infer-batches", type=int, default=3, help="Timed predict batches per round.")
    parser.add_argument("--image-size", type=int, default=None, help="ResNet-50 input side (224).")
    parser.add_argument("--quick", action="store_true",
                        help="Smoke run: 1 round, 1 step, 64 px ResNet-50s (not the benchmark).")
    parser.add_argument("--json", default=None, help="Write the results here.")
    parser.add_argument("--models", default=None,
                        help="Comma-separated subset, by short name (keras.applications, resnet50_v1, "
                             "resnet50, resnet20, resnet9_half, keras-hub); the reference is always "
                             "timed, since every ratio is against it.")
    parser.add_argument("--inter-op-threads", type=int, default=None,
                        help="tf.config.threading inter-op pool size (default: TensorFlow's, 0 = "
                             "one per core); 1 runs one op at a time, each on every core.")
    parser.add_argument("--intra-op-threads", type=int, default=None,
                        help="tf.config.threading intra-op pool size (default: TensorFlow's).")
    parser.add_argument("--probe", type=int, default=1,
                        help="Probe the matmul peak beside every model's round (1, default) for a "
                             "paired share of the peak, or not (0).")
    parser.add_argument("--keras-hub", type=int, default=1,
                        help="Also time keras-hub's ResNet50 when keras_hub imports (1) or not (0).")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.train_steps, args.infer_batches = 1, 1, 1
        args.image_size = args.image_size or 64
    image_size = args.image_size or 224

    import keras
    import tensorflow as tf

    # Must precede the first op: TensorFlow fixes its thread pools when it starts executing.
    if args.inter_op_threads is not None:
        tf.config.threading.set_inter_op_parallelism_threads(args.inter_op_threads)
    if args.intra_op_threads is not None:
        tf.config.threading.set_intra_op_parallelism_threads(args.intra_op_threads)
    info = hardware()
    info.update(load_average_start=[round(v, 2) for v in os.getloadavg()],
                tf_intra_op_threads=tf.config.threading.get_intra_op_parallelism_threads(),
                tf_inter_op_threads=tf.config.threading.get_inter_op_parallelism_threads())
    print_hardware(info)
    print(f"Precision {args.precision}, batch {args.batch_size}, ResNet-50 at {image_size} px, "
          f"{args.rounds} rounds x ({args.train_steps} train steps + {args.infer_batches} predict "
          f"batches); load average {info['load_average_start']}"
          + ("  [--quick: smoke run, not the benchmark]" if args.quick else ""), flush=True)

    keras.mixed_precision.set_global_policy(args.precision)
    keras.utils.set_random_seed(0)
    benches = []
    models = MODELS + ((KERAS_HUB,) if args.keras_hub and keras_hub_available() else ())
    if args.keras_hub and KERAS_HUB not in models:
        print("  keras-hub is not installed: skipping its ResNet50 (pip install keras-hub)")
    if args.models:
        models = select_models(args.models, models)
    for name in models:
        bench = Bench(name, image_size, args.batch_size, args.train_steps, args.infer_batches)
        print(f"  warm-up {name:30s} {bench.warmup(1 if args.quick else 2):6.1f} s", flush=True)
        benches.append(bench)

    probe = None
    if args.probe:
        from matmul_probe import make_probe

        probe_dtype = {"float32": "float32", "mixed_bfloat16": "bfloat16",
                       "mixed_float16": "float16"}[args.precision]
        probe_size = 512 if args.quick else 2048
        measure = make_probe(probe_dtype, probe_size)
        measure(1, warmup=2)  # trace it outside the timed rounds

        def probe():
            return measure(3, warmup=0)

    steal = StealMeter()  # share of the CPU the hypervisor took during the timed rounds
    for r in range(args.rounds):
        order = benches[r % len(benches):] + benches[:r % len(benches)]  # rotate the order
        samples = [probe()] if probe else []
        for bench in order:
            bench.round()
            if probe:
                samples.append(probe())
        for bench, peak in zip(order, probes_beside(samples)):
            bench.probe.append(peak)
        print(f"  round {r + 1}/{args.rounds}: " + ", ".join(
            f"{short_name(b.name)} {b.train[-1]:.1f}/{b.infer[-1]:.1f}" for b in benches)
            + " img/s (train/infer)", flush=True)

    results = [b.result(args.precision) for b in benches]
    by_name = {b.name: b for b in benches}
    ref = by_name[REFERENCE]
    ratios, ranges = {}, {}
    for name in (SAME_ARCH, "keras_resnet resnet50", KERAS_HUB):
        if name not in by_name:
            continue
        for kind in ("train", "infer"):
            key = f"{short_name(name)} / keras.applications {kind}"
            median, low, high = paired_ratio(getattr(by_name[name], kind), getattr(ref, kind))
            ratios[key], ranges[key] = median, [low, high]
    if KERAS_HUB in by_name and "keras_resnet resnet50" in by_name:  # the same v1.5 layout (25,557,032 params) in keras-hub
        for kind in ("train", "infer"):
            key = f"resnet50 / keras-hub ResNet50 {kind}"
            median, low, high = paired_ratio(getattr(by_name["keras_resnet resnet50"], kind),
                                             getattr(by_name[KERAS_HUB], kind))
            ratios[key], ranges[key] = median, [low, high]

    def cell(value):
        return "n/a" if value is None else value

    print(f"\n| model | precision | image | train img/s | infer img/s | infer img/s, fold_batchnorm |"
          f"\n| --- | --- | ---: | ---: | ---: | ---: |")
    for r in results:
        print(f"| {r['name']} | {r['precision']} | {r['image_size']} | {r['train_img_s']} | "
              f"{r['infer_img_s']} | {cell(r['infer_snapshot_img_s'])} |")
    if probe:
        print(f"\n| model | train % of the paired {probe_dtype} matmul probe | infer % | infer %, "
              f"fold_batchnorm |\n| --- | ---: | ---: | ---: |")
        for r in results:
            print(f"| {r['name']} | {r['train_pct_peak']} | {r['infer_pct_peak']} | "
                  f"{cell(r['infer_snapshot_pct_peak'])} |")
    print()
    for key, value in ratios.items():
        low, high = ranges[key]
        print(f"ratio {key}: {value:.3f}  (per-round range {low:.3f}-{high:.3f})")
    same = [ratios.get(f"resnet50_v1 / keras.applications {k}") for k in ("train", "infer")]
    verdict = None
    if args.precision == "float32" and not args.quick and None not in same:
        verdict = all(v >= 1.0 for v in same)
        print(f"same architecture at least as fast (ratio >= 1.0, float32): "
              f"{'yes' if verdict else 'NO'} (train {same[0]:.3f}, infer {same[1]:.3f})")
    info["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    info["cpu_steal_fraction"] = steal.fraction()
    warning = steal_warning(info["cpu_steal_fraction"])
    if warning:
        print("WARNING: " + warning)
    write_json(args.json, {"results": results, "ratios": ratios, "ratio_ranges": ranges,
                           "same_architecture_at_least_as_fast": verdict, "quick": args.quick,
                           "rounds": args.rounds, "hardware": info,
                           "paired_probe": ({"dtype": probe_dtype, "n": probe_size, "best_of": 3}
                                            if probe else None),
                           "command": " ".join([sys.executable] + sys.argv)})


if __name__ == "__main__":
    main()
