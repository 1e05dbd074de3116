"""Where a ResNet-50 step's time goes, from a TensorFlow profiler trace (issue 9).

    python benchmarks/profile_resnet50.py [--model resnet50] [--precision float32]
                                          [--mode train|infer] [--steps 3]
                                          [--logdir DIR] [--json out.json]

Builds a keras_resnet model (224 px, batch 32), warms it up, then records
`--steps` compiled train steps (`train_on_batch`) or predict steps
(`predict_on_batch`) with `tf.profiler.experimental`. The trace is written to
`--logdir` (open it in TensorBoard's Profile tab: `tensorboard --logdir DIR`),
and this script also reads it back itself (the `XSpace` protobuf that
TensorFlow ships, no TensorBoard plugin needed) and prints the time per
TensorFlow op type: convolutions (forward and both gradients), BatchNorm,
element-wise ops, optimizer updates, and so on. Op times are summed over the
executor's threads (two ops can run at once, each on the shared intra-op
pool), so shares are of the op time, and the wall time of the step is printed
beside them. (On the 2-core test machine the profiled float32 training step ran at
8.2 img/s, the same as `bench_models.py` in that session.)
"""

import argparse
import collections
import glob
import os
import re
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import forward_gflops, hardware, print_hardware, train_gflops, write_json  # noqa: E402

# Op types grouped into what a reader asks about.
GROUPS = [  # first match wins: backward convolutions before the forward pattern
    ("Winograd transforms (keras_resnet)", r"KerasResnetWinograd"),
    ("Winograd batched matmul", r"BatchMatMul"),
    ("BatchNorm (+ add) (+ ReLU) kernels (keras_resnet)", r"KerasResnetBatchNormAct"),
    ("convolution backward (filter)", r"Conv2DBackpropFilter"),
    ("convolution backward (input)", r"Conv2DBackpropInput"),
    ("convolution forward", r"Conv2D|DepthwiseConv2dNative"),
    ("BatchNorm (forward and gradient)", r"FusedBatchNorm"),
    # The classifier, and in float32 training the 1x1 convs' kernel gradients (pointwise_conv).
    ("matmul (classifier; 1x1 kernel gradients)", r"MatMul"),
    ("ReLU and its gradient", r"Relu"),
    ("element-wise (add, mul, slice, cast, ...)", r"^(AddV2|AddN|Add|Mul|Sub|Cast|Neg|Square|Rsqrt|"
                                                  r"RealDiv|BiasAdd.*|Select.*|Maximum|Minimum|Sqrt|"
                                                  r"Slice|Tile|DivNoNan)$"),
    ("optimizer updates", r"ResourceApply|AssignVariable|AssignAddVariable|AssignSub"),
    ("pooling and padding", r"Pool|Pad|Mean"),
    ("reductions, softmax, loss", r"Sum|Softmax|Max$|ArgMax|Log|CrossEntropy"),
]
# Executor and profiler bookkeeping events that wrap the op events.
WRAPPERS = {"Process", "Run", "Record", "StartRegion", "StopRegion", "PartitionedCall",
            "StatefulPartitionedCall", "While", "If"}


def op_type(event_name):
    # Executor events are named "<op name>:<op type>".
    return event_name.rsplit(":", 1)[-1] if ":" in event_name else None


def read_op_times(logdir):
    """Sum of event durations (seconds) per TensorFlow op type in the trace."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    files = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
    if not files:
        raise FileNotFoundError(f"No *.xplane.pb under {logdir!r}: did the profiler run?")
    space = xplane_pb2.XSpace()
    with open(max(files, key=os.path.getmtime), "rb") as f:
        space.ParseFromString(f.read())
    totals = collections.Counter()
    for plane in space.planes:
        if not plane.name.startswith("/host:CPU"):
            continue
        names = {k: v.name for k, v in plane.event_metadata.items()}
        for line in plane.lines:
            for event in line.events:
                kind = op_type(names.get(event.metadata_id, ""))
                # Skip the function-level and executor wrapper events.
                if kind and re.fullmatch(r"_?[A-Z][A-Za-z0-9_]*", kind) and kind not in WRAPPERS:
                    totals[kind] += event.duration_ps * 1e-12
    return totals


def group_times(totals):
    grouped = collections.Counter()
    for kind, seconds in totals.items():
        for group, pattern in GROUPS:
            if re.search(pattern, kind):
                grouped[group] += seconds
                break
        else:
            grouped["other"] += seconds
    return grouped


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--precision", default="float32")
    parser.add_argument("--mode", choices=("train", "infer"), default="train")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--logdir", default=None)
    parser.add_argument("--json", default=None)
    parser.add_argument("--inter-op-threads", type=int, default=None,
                        help="tf.config.threading inter-op pool size (default: TensorFlow's).")
    args = parser.parse_args(argv)

    import keras
    import numpy as np
    import tensorflow as tf

    if args.inter_op_threads is not None:  # before the first op, or TensorFlow refuses
        tf.config.threading.set_inter_op_parallelism_threads(args.inter_op_threads)

    import keras_resnet as kr

    info = hardware()
    print_hardware(info)
    keras.mixed_precision.set_global_policy(args.precision)
    keras.utils.set_random_seed(0)
    model = kr.create_model(args.model, input_shape=(args.image_size, args.image_size, 3))
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), loss="categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (args.batch_size, args.image_size, args.image_size, 3)).astype("float32")
    y = keras.utils.to_categorical(rng.integers(0, 1000, args.batch_size), 1000)
    step = (lambda: model.train_on_batch(x, y)) if args.mode == "train" else (
        lambda: model.predict_on_batch(x))
    for _ in range(2):  # trace and warm up outside the profile
        step()
    logdir = args.logdir or tempfile.mkdtemp(prefix="kr_profile_")
    tf.profiler.experimental.start(logdir)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    wall = (time.perf_counter() - start) / args.steps
    tf.profiler.experimental.stop()

    totals = read_op_times(logdir)
    grouped = group_times(totals)
    busy = sum(grouped.values()) / args.steps
    key = "resnet50@224"
    gflop = (train_gflops(key) if args.mode == "train" else forward_gflops(key)) * args.batch_size
    print(f"\n{args.model} {args.mode} {args.precision}, batch {args.batch_size}: "
          f"{wall:.2f} s per step under the profiler ({args.batch_size / wall:.2f} img/s, "
          f"{gflop / wall:.0f} GFLOP/s), op time summed over threads {busy:.2f} s per step")
    print(f"Trace: {logdir}  (tensorboard --logdir {logdir}, Profile tab)\n")
    print("| where the time goes | s per step (summed over threads) | share |")
    print("| --- | ---: | ---: |")
    rows = []
    for group, seconds in grouped.most_common():
        share = seconds / args.steps / busy
        rows.append(dict(group=group, seconds_per_step=seconds / args.steps, share=share))
        print(f"| {group} | {seconds / args.steps:.3f} | {share:.1%} |")
    top = [dict(op=k, seconds_per_step=v / args.steps) for k, v in totals.most_common(12)]
    print("\nTop op types:", ", ".join(f"{t['op']} {t['seconds_per_step']:.3f}s" for t in top))
    if args.json:
        write_json(args.json, dict(hardware=info, model=args.model, mode=args.mode,
                                   precision=args.precision, batch=args.batch_size,
                                   steps=args.steps, wall_seconds_per_step=wall,
                                   inter_op_threads=tf.config.threading.get_inter_op_parallelism_threads(),
                                   busy_seconds_per_step=busy, groups=rows, top_ops=top,
                                   logdir=logdir, command=" ".join(sys.argv)))


if __name__ == "__main__":
    main()
