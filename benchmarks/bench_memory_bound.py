"""Where the rest of a ResNet-50 training step goes: the memory-bound ops against memory bandwidth.

    python benchmarks/bench_memory_bound.py [--batch 32] [--precision float32|mixed_bfloat16]
                                            [--no-xla] [--quick] [--json out.json]

`--precision mixed_bfloat16` does all of the below with bfloat16 activations and
gradients (half the bytes per element; the BatchNorm statistics stay float32),
against the bfloat16 matmul probe: the default precision on CPUs with native bf16.

`bench_conv_kernels.py` shows the convolutions run at the matmul peak, so the
float32 training step's distance from that peak is the work between them:
BatchNorm statistics and gradients, ReLU, the residual adds and the sums of
gradients where a block's input feeds both its shortcut and its branch. This
script times that work layer type by layer type, exactly as keras_resnet
trains it (`FusedBatchNormalization` in training mode, `keras.layers.Add`,
ReLU; forward and backward, one `tf.function` each), for every shape of
ResNet-50 v1 (`resnet50_v1`, the keras.applications layout) at 224 px, and sets
it against two same-run measurements:

* a memory-bandwidth probe (the faster of `2 * x` and `x + y` over tensors the
  size of the largest activation);
* the least memory traffic a standalone kernel could do the same work in
  (counted per op below, in whole-tensor reads and writes), divided by that
  bandwidth. Standalone: a kernel that computed the BatchNorm statistics or
  gradient sums inside the convolutions' epilogues could go lower still; no
  CPU library offers that for training.

It also times a real `resnet50_v1` training step and the matmul probe in the
same run, and prints what the step's efficiency against the matmul peak would
be if all of this work ran at the traffic lower bound (perfectly fused
standalone kernels, which TensorFlow does not have on CPU). With
XLA (on by default, `--no-xla` to skip) each op is also timed compiled by XLA,
the one automatic fuser TensorFlow has.

Each op is timed twice more, the same way: with TensorFlow's own ops
(`keras_resnet.kernels.disabled()`: FusedBatchNormV3, AddV2, Relu and their
gradients, what keras_resnet ran before its kernels) and through keras_resnet's
fused CPU kernels (`keras_resnet.kernels`, what the blocks now train with in
float32 on a CPU), and so is the whole training step: two models, their steps
interleaved round by round, so the speed-up is a same-run paired ratio.

Not counted (each small or already fused): the stem's padding and max-pool and
their gradients (about one more stem BatchNorm's worth), the convolution
biases of the v1 layout (oneDNN fuses BiasAdd into the convolution and its
gradient into the filter gradient), the optimizer update (one fused kernel per
variable, `bench_optimizer.py`), global pooling and the classifier. Ops timed
alone cannot overlap as they do inside a step, so the totals are estimates.
"""

import argparse
import contextlib
import os
import statistics
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import (best_call_seconds, hardware, paired_train_steps, print_hardware,  # noqa: E402
                    train_gflops, write_json)

# Least whole-tensor reads + writes for each op's forward and backward pass
# (in tensors of the step's element size, 4 bytes in float32 and 2 in bfloat16; two-pass
# BatchNorm: statistics must be complete before normalising).
#   bn:          fwd read x (stats), read x + write y = 3;
#                bwd read dy, x (the two channel sums), read dy, x + write dx = 5.
#   bn_relu:     the same 8: the ReLU mask can be recomputed from x and the statistics.
#   bn_add_relu: fwd read x (stats), read x, s + write y = 4; bwd read dy, y, x +
#                write ds (= dy * mask) and the sums, read ds, x + write dx = 7.
#   grad_sum:    a block input's gradient, shortcut's + branch's: read 2, write 1.
TRAFFIC = {"bn": 8, "bn_relu": 8, "bn_add_relu": 11, "grad_sum": 3}


def resnet50_v1_layers(image_size=224):
    """(op, (h, w, c), count) for each memory-bound op of a ResNet-50 v1 training step.

    v1 (keras.applications) strides in each stage's first 1x1 convolution, so
    every BatchNorm of a stage runs at the stage's output resolution.
    """
    def side(stride_total):
        return -(-image_size // stride_total)

    counts = {}

    def add(op, hw, c, n=1):
        key = (op, (hw, hw, c))
        counts[key] = counts.get(key, 0) + n

    add("bn_relu", side(2), 64)  # stem
    in_channels, in_side = 64, side(4)
    for stage, (filters, blocks) in enumerate([(64, 3), (128, 4), (256, 6), (512, 3)]):
        hw = side(4 * 2 ** stage)
        for block in range(blocks):
            add("bn_relu", hw, filters, 2)
            add("bn_add_relu", hw, 4 * filters)
            if block == 0:
                add("bn", hw, 4 * filters)  # projection shortcut
                add("grad_sum", in_side, in_channels)
            else:
                add("grad_sum", hw, 4 * filters)
        in_channels, in_side = 4 * filters, hw
    return [(op, shape, n) for (op, shape), n in counts.items()]


def _op_step(op, batch, shape, jit, fused_kernels=False, dtype="float32"):
    """A `tf.function` running `op`'s forward and backward pass once, and its inputs.

    `fused_kernels`: the BatchNorm (+ add) (+ ReLU) as the blocks run it through
    `keras_resnet.kernels` (one op each way); otherwise TensorFlow's ops, traced
    under `keras_resnet.kernels.disabled()` by the caller."""
    import keras
    import tensorflow as tf

    from keras_resnet.layers import FusedBatchNormalization

    x, s, dy = (tf.cast(tf.random.normal((batch, *shape)), dtype) for _ in range(3))
    if op == "grad_sum":
        # The slice stays outside the compiled sum: XLA would otherwise compute one element.
        total = tf.function(lambda x, s: x + s, jit_compile=jit)
        return tf.function(lambda x, s, dy: total(x, s)[0, 0, 0, 0]), (x, s, dy)
    bn = FusedBatchNormalization(epsilon=1.001e-5)
    bn.build((batch, *shape))
    add, relu = keras.layers.Add(), keras.layers.ReLU()

    def forward(x, s):
        if fused_kernels:
            return bn.kernel_training_call(x, residual=s if op == "bn_add_relu" else None,
                                           relu=op != "bn")
        y = bn(x, training=True)
        if op == "bn_add_relu":
            y = add([s, y])
        return relu(y) if op != "bn" else y

    forward = tf.function(forward, jit_compile=True) if jit else forward

    @tf.function
    def step(x, s, dy):
        with tf.GradientTape() as tape:
            tape.watch([x, s])
            y = forward(x, s)
        grads = tape.gradient(y, [x, s, bn.gamma, bn.beta], output_gradients=dy)
        # One element of the output and of each gradient: nothing but the op is
        # timed, yet everything has to be computed in full (y too: the next
        # convolution reads it, so XLA must not drop the normalisation pass).
        return tf.add_n([tf.cast(y[0, 0, 0, 0], tf.float32)] + [
            tf.cast(g[0] if g.shape.rank == 1 else g[0, 0, 0, 0], tf.float32)
            for g in grads if g is not None])

    return step, (x, s, dy)


def bandwidth_probe(elements, repeats):
    """GB/s moved by the faster of `2 * x` (one read, one write per element) and
    `x + y` (two reads, one write) over `elements` float32s each: the element-wise
    kernels TensorFlow already has, so the bound below is one they reach."""
    import tensorflow as tf

    x = tf.random.normal((elements,))
    y = tf.random.normal((elements,))
    scale = tf.function(lambda x, y: (2.0 * x)[0])
    add = tf.function(lambda x, y: (x + y)[0])
    return max(2 * 4 * elements / best_call_seconds(scale, (x, y), repeats) / 1e9,
               3 * 4 * elements / best_call_seconds(add, (x, y), repeats) / 1e9)


def step_seconds(batch, image_size, steps, with_kernels):
    """Median seconds of a `resnet50_v1` `train_on_batch` (in the global precision policy) (as bench_models.py
    builds it), traced with TensorFlow's ops and, when `with_kernels`, with
    keras_resnet's kernels too: two models, one step of each per round,
    alternating which goes first. Returns ({"tf": s, "kernels": s}, median of
    the per-round time ratios tf / kernels)."""
    import numpy as np
    import tensorflow as tf

    from bench_models import SAME_ARCH, build
    from keras_resnet import kernels

    rng = np.random.default_rng(0)
    x = tf.constant(rng.uniform(0, 255, (batch, image_size, image_size, 3)).astype("float32"))
    y = tf.constant(np.eye(1000, dtype="float32")[rng.integers(0, 1000, batch)])
    models = {}
    for mode in ("tf", "kernels") if with_kernels else ("tf",):
        models[mode] = build(SAME_ARCH, image_size)
        with contextlib.nullcontext() if mode == "kernels" else kernels.disabled():
            models[mode].train_on_batch(x, y)  # traces the step
        models[mode].train_on_batch(x, y)
    times = paired_train_steps(models, x, y, steps)
    ratio = (statistics.median(t / k for t, k in zip(times["tf"], times["kernels"]))
             if with_kernels else None)
    return {mode: statistics.median(t) for mode, t in times.items()}, ratio


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=4, help="best of this many, per op")
    parser.add_argument("--steps", type=int, default=3, help="timed resnet50_v1 train steps")
    parser.add_argument("--precision", default="float32", choices=["float32", "mixed_bfloat16"])
    parser.add_argument("--no-xla", action="store_true", help="skip the XLA-compiled timings")
    parser.add_argument("--quick", action="store_true",
                        help="batch 2, 64 px, 1 repeat, 1 step, no XLA (a smoke run)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.image_size, args.repeats, args.steps, args.no_xla = 2, 64, 1, 1, True
    if min(args.batch, args.repeats, args.steps) < 1 or args.image_size < 32:
        parser.error("--batch, --repeats and --steps must be >= 1 and --image-size >= 32. Received: "
                     f"batch={args.batch}, repeats={args.repeats}, steps={args.steps}, "
                     f"image_size={args.image_size}")
    import keras

    from matmul_probe import probe

    keras.mixed_precision.set_global_policy(args.precision)
    dtype = "bfloat16" if args.precision == "mixed_bfloat16" else "float32"
    itemsize = 2 if dtype == "bfloat16" else 4
    info = hardware()
    print_hardware(info)
    layers = resnet50_v1_layers(args.image_size)
    largest = max(args.batch * h * w * c for _, (h, w, c), _ in layers)
    bandwidth = bandwidth_probe(largest, args.repeats + 2)
    peak = probe(dtype, 512 if args.quick else 2048)
    print(f"memory bandwidth ({largest * 4 / 1e6:.0f} MB tensors, 2*x or x+y): {bandwidth:.1f} GB/s; "
          f"matmul peak {dtype}: {peak:.1f} GFLOP/s (same run); batch {args.batch}, "
          f"{args.image_size} px, {args.precision}")
    from keras_resnet import kernels

    with_kernels = kernels.load() is not None
    if not with_kernels:
        print(f"keras_resnet's kernels unavailable ({kernels.unavailable_reason()}): "
              "timing TensorFlow's ops only")
    print(f"{'op':12s} {'shape':>14s} {'n':>3s} {'TF ms':>8s} {'kernel ms':>9s} {'XLA ms':>8s} "
          f"{'bound ms':>8s} {'bound / TF':>10s} {'bound / kernel':>14s}")
    rows, tf_total, kernel_total, xla_total, bound_total = [], 0.0, 0.0, 0.0, 0.0
    for op, shape, count in layers:
        megabytes = TRAFFIC[op] * itemsize * args.batch * shape[0] * shape[1] * shape[2] / 1e6
        bound = megabytes / bandwidth  # MB / (GB/s) = ms

        def ms(jit=False, fused_kernels=False):
            step = _op_step(op, args.batch, shape, jit, fused_kernels, dtype)
            with contextlib.nullcontext() if fused_kernels else kernels.disabled():
                return 1e3 * best_call_seconds(*step, args.repeats)

        tf_ms = ms()
        # The gradient sums are TensorFlow's AddN either way.
        kernel_ms = (ms(fused_kernels=True) if op != "grad_sum" else tf_ms) if with_kernels else None
        xla_ms = None if args.no_xla else ms(jit=True)
        rows.append({"op": op, "shape": list(shape), "count": count, "tf_ms": tf_ms,
                     "kernel_ms": kernel_ms, "xla_ms": xla_ms, "bound_ms": bound,
                     "least_traffic_mb": megabytes})
        tf_total += count * tf_ms
        bound_total += count * bound
        kernel_total = None if kernel_ms is None else kernel_total + count * kernel_ms
        xla_total = None if xla_ms is None else xla_total + count * xla_ms
        xla_text = f"{xla_ms:8.1f}" if xla_ms is not None else f"{'-':>8s}"
        kernel_text = f"{kernel_ms:9.1f}" if kernel_ms is not None else f"{'-':>9s}"
        kernel_share = f"{bound / kernel_ms:14.0%}" if kernel_ms else f"{'-':>14s}"
        print(f"{op:12s} {str(shape):>14s} {count:3d} {tf_ms:8.1f} {kernel_text} {xla_text} "
              f"{bound:8.1f} {bound / tf_ms:10.0%} {kernel_share}")
    steps, step_ratio = step_seconds(args.batch, args.image_size, args.steps, with_kernels)
    step = steps["tf"] * 1e3
    kernel_step = steps["kernels"] * 1e3 if with_kernels else None
    conv_at_peak = train_gflops("resnet50@224") * (args.image_size / 224) ** 2 * args.batch / peak * 1e3
    efficiency = conv_at_peak / step
    # Perfect fusion would replace the measured memory-bound time by its bound.
    # The ops timed alone can add up to more than they take inside the step
    # (there they overlap, and each call here pays its own dispatch), so the
    # estimate is withheld when the remainder would not be positive.
    fused_step = step - tf_total + bound_total
    fused_efficiency = conv_at_peak / fused_step if step > tf_total else None
    summary = {
        "step_ms": step, "conv_flops_at_matmul_peak_ms": conv_at_peak,
        "memory_bound_tf_ms": tf_total, "memory_bound_xla_ms": xla_total,
        "memory_bound_kernels_ms": kernel_total, "step_kernels_ms": kernel_step,
        "step_speedup_kernels_paired": step_ratio,
        "train_efficiency_kernels": conv_at_peak / kernel_step if kernel_step else None,
        "memory_bound_least_traffic_ms": bound_total,
        "train_efficiency": efficiency, "train_efficiency_if_at_traffic_bound": fused_efficiency,
    }
    print(f"totals per training step: TF {tf_total:.0f} ms"
          + (f", XLA {xla_total:.0f} ms" if xla_total is not None else "")
          + f", traffic lower bound {bound_total:.0f} ms ({bound_total / tf_total:.0%} of TF's)")
    if kernel_total is not None:
        print(f"  keras_resnet's kernels: {kernel_total:.0f} ms ({tf_total / kernel_total:.2f}x "
              f"faster than TF's ops; the traffic bound is {bound_total / kernel_total:.0%} of it)")
    print(f"resnet50_v1 {args.precision} train step with TensorFlow's ops {step:.0f} ms; its FLOPs at "
          f"the matmul peak {conv_at_peak:.0f} ms: {efficiency:.0%} of peak; memory-bound ops "
          f"{tf_total / step:.0%} of the step (timed alone)")
    if kernel_step is not None:
        print(f"resnet50_v1 {args.precision} train step with keras_resnet's kernels {kernel_step:.0f} ms: "
              f"{conv_at_peak / kernel_step:.0%} of peak; paired speed-up {step_ratio:.3f}x "
              f"(median of {args.steps} interleaved rounds)")
    if fused_efficiency is None:
        print("no fusion estimate: the ops timed alone add up to more than the whole step")
    else:
        print(f"with every memory-bound op at its traffic lower bound: {fused_step:.0f} ms, "
              f"{fused_efficiency:.0%} of peak")
    write_json(args.json, {
        "command": "benchmarks/bench_memory_bound.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "hardware": info, "batch": args.batch, "image_size": args.image_size,
        "precision": args.precision, "bandwidth_gb_s": bandwidth, f"matmul_peak_{dtype}": peak,
        "bytes_per_element": itemsize, "traffic_per_op": TRAFFIC,
        "ops": rows, "summary": summary})


if __name__ == "__main__":
    main()
