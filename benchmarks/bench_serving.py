"""Serving speed of the exported SavedModel against keras.applications' export.

    python benchmarks/bench_serving.py [--quick] [--json PATH]

Exports, in one process and from the same random weights:

    kr_fp32        keras_resnet ResNet-50 v1 (`create_model("resnet50_v1")`) via
                   `keras_resnet.export(..., fold_batchnorm=False)`, float32
    kr_fold        the same with `fold_batchnorm=True` (BatchNorm folded into
                   the convolutions at export time): what `keras_resnet.export`
                   does by default for a float32 model (`fold_batchnorm="auto"`)
    kr_bf16        the same model built under the `mixed_bfloat16` policy, exported with
                   the default `fold_batchnorm="auto"` (its weight casts fold away)
    keras_apps     `keras.applications.ResNet50(weights=None)` exported with
                   `model.export` (its `serve` endpoint)

then loads every SavedModel with `tf.saved_model.load` and times its tensor
signature (float32 images at the model size: the work TF Serving does per
request, minus the network) at batch 1 (latency) and batch 32 (throughput),
interleaving the variants round by round so that machine noise hits all of
them alike. `kr_fp32_bytes` also times `serving_default` on JPEG bytes
(decode + resize + model). It also reports whether TensorFlow's grappler
folds BatchNorm by itself at load time: it runs grappler's default
optimisation on the plain export's graph and counts the BatchNorm `Rsqrt`
ops left (variables are not constants, so it cannot).

Timings are best-of and median of `--rounds` calls; `--quick` is a smoke run
(few rounds, batch 8).
"""

import argparse
import collections
import io
import os
import shutil
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from common import hardware, print_hardware, write_json  # noqa: E402


def grappler_op_counts(concrete_fn, ops=("Rsqrt", "FusedBatchNormV3", "Conv2D", "_FusedConv2D")):
    """Op counts of `concrete_fn`'s graph after grappler's default optimisation
    (what the runtime applies when it loads and runs the function)."""
    import tensorflow as tf
    from tensorflow.core.protobuf import config_pb2
    from tensorflow.python.grappler import tf_optimizer

    graph = concrete_fn.graph
    meta = tf.compat.v1.train.export_meta_graph(graph_def=graph.as_graph_def(add_shapes=True), graph=graph)
    meta.collection_def["train_op"].node_list.value.extend(t.op.name for t in concrete_fn.outputs)
    optimized = tf_optimizer.OptimizeGraph(config_pb2.ConfigProto(), meta)
    nodes = list(optimized.node) + [n for f in optimized.library.function for n in f.node_def]
    counts = collections.Counter(n.op for n in nodes)
    return {op: counts.get(op, 0) for op in ops}


def saved_model_bytes(path):
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, files in os.walk(path) for f in files)


def export_all(work, image_size):
    """Exports the variants; returns {name: (saved_model_dir, signature_key)}."""
    import keras
    import numpy as np

    import keras_resnet as kr

    h, w = image_size
    keras.utils.set_random_seed(0)
    kwargs = {"input_shape": (h, w, 3)} if (h, w) != (224, 224) else {}
    model = kr.create_model("resnet50_v1", **kwargs)
    # Random ResNet-50 logits are huge and the softmax saturates to one-hot,
    # which would hide any numerical difference between the variants: scale the
    # classifier so the logits have a std of about 2 (same FLOPs, same graph).
    features = keras.Model(model.inputs, model.get_layer("avg_pool").output)
    pixels = np.random.default_rng(1).uniform(0, 255, (8, h, w, 3)).astype("float32")
    mean, std = kr.NORMALIZATION_STATS["imagenet"]
    dense = model.get_layer("predictions")
    logits = features.predict((pixels - mean) / std, verbose=0) @ dense.kernel.numpy()
    dense.kernel.assign(dense.kernel.numpy() * (2.0 / max(float(logits.std()), 1e-6)))
    out = {}
    t = time.time()
    # The registry's ResNet-50 v1 has no normalisation inside (keras.applications'
    # neither: its caffe preprocessing runs in the client); exporting with the
    # ImageNet statistics is the realistic served model, and costs keras_resnet
    # a Normalization layer that keras_apps does not run.
    common = dict(warmup=False, normalization="imagenet")
    out["kr_fp32"] = (kr.export(model, os.path.join(work, "kr_fp32"), fold_batchnorm=False, **common)
                      ["saved_model"], "predict_images")
    out["kr_fold"] = (kr.export(model, os.path.join(work, "kr_fold"), fold_batchnorm=True, **common)
                      ["saved_model"], "predict_images")
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        bf16 = kr.create_model("resnet50_v1", **kwargs)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    bf16.set_weights(model.get_weights())
    out["kr_bf16"] = (kr.export(bf16, os.path.join(work, "kr_bf16"), **common)["saved_model"], "predict_images")
    apps = keras.applications.ResNet50(weights=None, input_shape=(h, w, 3))
    apps_dir = os.path.join(work, "keras_apps")
    apps.export(apps_dir, format="tf_saved_model", verbose=False)
    out["keras_apps"] = (apps_dir, "serve")
    print(f"exported {len(out)} SavedModels in {time.time() - t:.0f}s", flush=True)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", default=None, help="Write the results here.")
    parser.add_argument("--quick", action="store_true", help="Smoke run: 3 rounds, batch 8.")
    parser.add_argument("--rounds", type=int, default=None, help="Timed calls per variant and batch size.")
    parser.add_argument("--batch", type=int, default=None, help="Throughput batch size (default 32).")
    parser.add_argument("--image-size", type=int, default=224, help="Square input size (default 224).")
    parser.add_argument("--keep", default=None, help="Keep the exports in this directory.")
    args = parser.parse_args(argv)
    rounds = args.rounds or (3 if args.quick else 20)
    batch = args.batch or (8 if args.quick else 32)
    size = (args.image_size, args.image_size)

    import numpy as np
    import tensorflow as tf
    from PIL import Image

    info = hardware()
    print_hardware(info)
    work = args.keep or tempfile.mkdtemp(prefix="bench_serving_")
    os.makedirs(work, exist_ok=True)
    try:
        exports = export_all(work, size)
        fns, loaded = {}, {}
        for name, (path, key) in exports.items():
            loaded[name] = tf.saved_model.load(path)
            fn = loaded[name].signatures[key]
            arg = list(fn.structured_input_signature[1])[0]
            fns[name] = (lambda f, a: (lambda x: f(**{a: x})))(fn, arg)
        serve_bytes = loaded["kr_fp32"].signatures["serving_default"]
        fns["kr_fp32_bytes"] = lambda x: serve_bytes(image_bytes=x)

        rng = np.random.default_rng(0)
        inputs = {}
        for n in (1, batch):
            pixels = rng.integers(0, 256, (n,) + size + (3,)).astype("uint8")
            jpegs = []
            for p in pixels:
                buf = io.BytesIO()
                Image.fromarray(p).save(buf, "JPEG", quality=90)
                jpegs.append(buf.getvalue())
            inputs[n] = {"float": tf.constant(pixels, tf.float32), "bytes": tf.constant(jpegs)}

        def call(name, n):
            x = inputs[n]["bytes" if name.endswith("_bytes") else "float"]
            out = fns[name](x)
            next(iter(out.values())).numpy()

        times = {name: {1: [], batch: []} for name in fns}
        for name in fns:  # warm up: trace, grappler, allocator
            for n in (1, batch):
                call(name, n)
                call(name, n)
        for _ in range(rounds):
            for n in (1, batch):
                for name in fns:  # interleaved: every round times every variant
                    start = time.perf_counter()
                    call(name, n)
                    times[name][n].append(time.perf_counter() - start)

        results = []
        for name in fns:
            b1, bn = times[name][1], times[name][batch]
            entry = {
                "name": name,
                "latency_b1_ms_median": round(1e3 * statistics.median(b1), 2),
                "latency_b1_ms_best": round(1e3 * min(b1), 2),
                f"throughput_b{batch}_img_s_median": round(batch / statistics.median(bn), 2),
                f"throughput_b{batch}_img_s_best": round(batch / min(bn), 2),
            }
            if name in exports:
                entry["saved_model_mb"] = round(saved_model_bytes(exports[name][0]) / 1e6, 1)
            results.append(entry)
        by = {r["name"]: r for r in results}
        tkey = f"throughput_b{batch}_img_s_median"

        def ratio(a, b, key, invert=False):
            x, y = by[a][key], by[b][key]
            return round((y / x) if invert else (x / y), 3)

        ratios = {
            # > 1: keras_resnet is faster than keras.applications' export.
            "kr_fp32_vs_keras_apps_latency_speedup": ratio("kr_fp32", "keras_apps", "latency_b1_ms_median", True),
            "kr_fp32_vs_keras_apps_throughput": ratio("kr_fp32", "keras_apps", tkey),
            "kr_fold_vs_kr_fp32_latency_speedup": ratio("kr_fold", "kr_fp32", "latency_b1_ms_median", True),
            "kr_fold_vs_kr_fp32_throughput": ratio("kr_fold", "kr_fp32", tkey),
            "kr_fold_vs_keras_apps_throughput": ratio("kr_fold", "keras_apps", tkey),
            "kr_bf16_vs_kr_fp32_latency_speedup": ratio("kr_bf16", "kr_fp32", "latency_b1_ms_median", True),
            "kr_bf16_vs_kr_fp32_throughput": ratio("kr_bf16", "kr_fp32", tkey),
            "bytes_vs_tensor_throughput": ratio("kr_fp32_bytes", "kr_fp32", tkey),
        }
        grappler = {}
        for name in ("kr_fp32", "kr_fold", "keras_apps"):
            path, key = exports[name]
            grappler[name] = grappler_op_counts(loaded[name].signatures[key])
        # Agreement: the variants compute the same function (bf16 approximately).
        x = inputs[batch]["float"]
        ref = fns["kr_fp32"](x)["probabilities"].numpy()
        agreement = {}
        for name in ("kr_fold", "kr_bf16"):
            got = fns[name](x)["probabilities"].numpy()
            agreement[name] = {"max_abs_diff": float(np.abs(got - ref).max()),
                               "top1_agreement": float((got.argmax(-1) == ref.argmax(-1)).mean())}
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    print(f"\nResNet-50 at {size[0]}x{size[1]}, {rounds} interleaved rounds; latency = batch 1, "
          f"throughput = batch {batch} (median; best in brackets)")
    print(f"{'variant':16s} {'latency ms':>18s} {'img/s':>18s} {'SavedModel MB':>14s}")
    for r in results:
        print(f"{r['name']:16s} {r['latency_b1_ms_median']:9.1f} ({r['latency_b1_ms_best']:6.1f}) "
              f"{r[tkey]:9.1f} ({r[f'throughput_b{batch}_img_s_best']:6.1f}) {r.get('saved_model_mb', ''):>14}")
    print("ratios:", ratios)
    print("after grappler (BatchNorm Rsqrt left = not folded at load time):", grappler)
    print("vs kr_fp32 probabilities:", agreement)
    write_json(args.json, {"hardware": info, "image_size": list(size), "batch": batch, "rounds": rounds,
                           "results": results, "ratios": ratios, "grappler_after_load": grappler,
                           "agreement_vs_fp32": agreement, "command": " ".join([sys.executable] + sys.argv)})


if __name__ == "__main__":
    main()
