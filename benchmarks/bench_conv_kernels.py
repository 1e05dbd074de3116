"""Where ResNet-50's training FLOPs run: each convolution kernel's GFLOP/s against the matmul peak.

    python benchmarks/bench_conv_kernels.py [--batch 32] [--quick] [--json out.json]

Times TensorFlow's forward convolution and both of its gradients (input and
filter) one by one, for the shapes ResNet-50 trains at 224 px, beside the
same-run matmul probe (`matmul_probe.py`). For the 1x1 convolutions it also
times the same arithmetic as a MatMul over `[N*H*W, C]` (forward + both
gradients), the obvious rewrite if the convolution kernels were the slow part.
If every kernel runs near the peak, the gap between a training step and the
peak is in the memory-bound ops between them (BatchNorm, ReLU, adds), which is
what `profile_resnet50.py` attributes it to.
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(__file__))

from common import best_call_seconds, hardware, print_hardware, write_json  # noqa: E402

# (label, input size, in channels, out channels, kernel, stride): ResNet-50 v1.5 at 224 px.
SHAPES = [
    ("stem 7x7/2", 224, 3, 64, 7, 2),
    ("conv2 1x1 256->64", 56, 256, 64, 1, 1),
    ("conv2 3x3 64->64", 56, 64, 64, 3, 1),
    ("conv2 1x1 64->256", 56, 64, 256, 1, 1),
    ("conv3 3x3/2 128", 56, 128, 128, 3, 2),
    ("conv3 3x3 128->128", 28, 128, 128, 3, 1),
    ("conv3 1x1 512->128", 28, 512, 128, 1, 1),
    ("conv4 3x3 256->256", 14, 256, 256, 3, 1),
    ("conv4 1x1 1024->256", 14, 1024, 256, 1, 1),
    ("conv5 3x3 512->512", 7, 512, 512, 3, 1),
    ("conv5 1x1 512->2048", 7, 512, 2048, 1, 1),
]


def measure(batch, size, cin, cout, k, stride, repeats):
    import tensorflow as tf

    x = tf.random.normal([batch, size, size, cin])
    w = tf.random.normal([k, k, cin, cout]) * 0.05
    out = size // stride
    dy = tf.random.normal([batch, out, out, cout])
    strides = [1, stride, stride, 1]
    # Each function returns a scalar of a slice so that nothing but the op is timed.
    forward = tf.function(lambda x, w: tf.nn.conv2d(x, w, strides, "SAME")[0, 0, 0, 0])
    grad_input = tf.function(lambda x, w, dy: tf.raw_ops.Conv2DBackpropInput(
        input_sizes=tf.shape(x), filter=w, out_backprop=dy, strides=strides, padding="SAME")[0, 0, 0, 0])
    grad_filter = tf.function(lambda x, w, dy: tf.raw_ops.Conv2DBackpropFilter(
        input=x, filter_sizes=tf.shape(w), out_backprop=dy, strides=strides, padding="SAME")[0, 0, 0, 0])
    gflop = 2 * batch * out * out * cin * cout * k * k / 1e9
    row = {"gflop": gflop,
           "forward": gflop / best_call_seconds(forward, (x, w), repeats),
           "grad_input": gflop / best_call_seconds(grad_input, (x, w, dy), repeats),
           "grad_filter": gflop / best_call_seconds(grad_filter, (x, w, dy), repeats)}
    if k == 1 and stride == 1:
        x2, w2, dy2 = tf.reshape(x, [-1, cin]), tf.reshape(w, [cin, cout]), tf.reshape(dy, [-1, cout])
        as_matmul = tf.function(lambda x2, w2, dy2: tf.matmul(x2, w2)[0, 0]
                                + tf.matmul(dy2, w2, transpose_b=True)[0, 0]
                                + tf.matmul(x2, dy2, transpose_a=True)[0, 0])
        row["as_matmul_3_passes"] = 3 * gflop / best_call_seconds(as_matmul, (x2, w2, dy2), repeats)
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=4, help="best of this many, per kernel")
    parser.add_argument("--quick", action="store_true", help="batch 2, 1 repeat (a smoke run)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.repeats = 2, 1
    if args.batch < 1 or args.repeats < 1:
        parser.error(f"--batch and --repeats must be >= 1. Received: batch={args.batch}, repeats={args.repeats}")
    from matmul_probe import probe

    info = hardware()
    print_hardware(info)
    peak = probe("float32", 512 if args.quick else 2048)
    print(f"matmul peak float32: {peak:.1f} GFLOP/s (same run); batch {args.batch}; GFLOP/s per kernel:")
    print(f"{'shape':22s} {'forward':>8s} {'grad in':>8s} {'grad w':>8s} {'as MatMul':>9s}")
    rows = {}
    for label, *shape in SHAPES:
        row = rows[label] = measure(args.batch, *shape, repeats=args.repeats)
        mm = f"{row['as_matmul_3_passes']:9.0f}" if "as_matmul_3_passes" in row else f"{'':9s}"
        print(f"{label:22s} {row['forward']:8.0f} {row['grad_input']:8.0f} {row['grad_filter']:8.0f} {mm}")
    write_json(args.json, {
        "command": "benchmarks/bench_conv_kernels.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "hardware": info, "batch": args.batch, "matmul_peak_float32": peak, "gflops_per_kernel": rows})


if __name__ == "__main__":
    main()
