"""Before vs after the redesign, paired in one run: training and inference throughput.

    git worktree add /tmp/kr_release d919d32          # release 0.1.0's last commit
    python benchmarks/bench_before_after.py --before /tmp/kr_release [--rounds 1] [--json out.json]

Each measurement runs in its own fresh process (the two versions are different
packages); a round runs every variant once, in a rotated order, so machine drift
hits them alike, and every ratio is taken within a round. Variants:

    keras.applications ResNet50     the reference (v1 layout), same compile
    keras-hub ResNet50              when keras_hub imports
    before:resnet50[_v1]            release 0.1.0 (its compiled kernels on, its default)
    after:resnet50[_v1]             this checkout, plain core (the default path)
    after+cpu:resnet50[_v1]         this checkout + keras_resnet.contrib.cpu.accelerate

for ResNet-50 (224 px, batch 32) in float32 and mixed_bfloat16, training
(`train_on_batch`) and inference (`predict_on_batch`), plus ResNet-9-half
(32 px, batch 512) training, the main job's network. Throughput is images/s
over `--steps` timed steps after two warm-up steps (tracing and the kernel
build excluded).
"""

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _worker(args):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import numpy as np
    import tensorflow as tf

    keras.mixed_precision.set_global_policy(args.precision)
    size, batch = (32, 512) if args.model == "resnet9_half" else (224, 32)
    if args.variant == "keras.applications":
        model = keras.applications.ResNet50(weights=None, input_shape=(size, size, 3))
    elif args.variant == "keras-hub":
        from bench_models import keras_hub_resnet50

        model = keras_hub_resnet50(size)
    else:
        import keras_resnet as kr

        options = {} if args.model == "resnet9_half" else {"input_shape": (size, size, 3)}
        model = kr.create_model(args.model, **options)
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), loss="categorical_crossentropy",
                  jit_compile=False)
    status = None
    if args.variant == "after+cpu":
        from keras_resnet.contrib import cpu

        status = cpu.accelerate(model)
    classes = model.output_shape[-1]
    rng = np.random.default_rng(0)
    x = tf.constant(rng.uniform(0, 255, (batch, size, size, 3)).astype("float32"))
    y = tf.constant(np.eye(classes, dtype="float32")[rng.integers(0, classes, batch)])
    out = {"variant": args.variant, "model": args.model, "precision": args.precision, "status": status}
    if args.variant not in ("keras.applications", "keras-hub"):
        import keras_resnet

        out["package"] = os.path.dirname(os.path.dirname(keras_resnet.__file__))
    if not args.infer_only:
        for _ in range(2):
            model.train_on_batch(x, y)
        start = time.perf_counter()
        for _ in range(args.steps):
            logs = model.train_on_batch(x, y, return_dict=True)
        float(logs["loss"])
        out["train_img_s"] = round(batch * args.steps / (time.perf_counter() - start), 2)
    if args.model != "resnet9_half" or args.infer_only:
        out["infer_img_s"] = _predict_img_s(model.predict_on_batch, x, args.steps)
        if args.variant == "after":
            # What exports and `evaluate` run: BatchNorm folded once (not in the release).
            from keras_resnet import fold_batchnorm

            folded = fold_batchnorm(model)
            step = tf.function(lambda images: folded(images, training=False))
            out["infer_folded_img_s"] = _predict_img_s(lambda images: step(images).numpy(), x, args.steps)
    print("RESULT " + json.dumps(out), flush=True)


def _predict_img_s(predict, x, steps):
    for _ in range(2):
        predict(x)
    start = time.perf_counter()
    for _ in range(steps):
        predict(x)
    return round(int(x.shape[0]) * steps / (time.perf_counter() - start), 2)


def _variants(have_hub):
    plans = []
    for precision in ("float32", "mixed_bfloat16"):
        peers = ["keras.applications"] + (["keras-hub"] if have_hub else [])
        plans += [(v, "resnet50_v1" if v in ("keras.applications", "keras-hub") else None, precision)
                  for v in peers]
        for model in ("resnet50", "resnet50_v1") if precision == "float32" else ("resnet50",):
            plans += [(v, model, precision) for v in ("before", "after", "after+cpu")]
    plans += [(v, "resnet9_half", "mixed_bfloat16") for v in ("before", "after", "after+cpu")]
    return [(v, m or "resnet50", p) for v, m, p in plans]


def _run(variant, model, precision, before, steps, infer_only=False):
    env = dict(os.environ)
    path = before if variant == "before" else HERE
    env["PYTHONPATH"] = path + os.pathsep + env.get("PYTHONPATH", "")
    command = [sys.executable, os.path.abspath(__file__), "--worker", "--variant", variant, "--model", model, "--precision", precision,
               "--steps", str(steps)] + (["--infer-only"] if infer_only else [])
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
    for line in result.stdout.splitlines():
        if line.startswith("RESULT "):
            out = json.loads(line[7:])
            if variant == "before":
                out.pop("infer_folded_img_s", None)  # the release had no fold_batchnorm
            out["variant"] = variant
            return out
    raise RuntimeError(f"{variant} {model} {precision} failed:\n{result.stderr[-3000:]}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", help="A checkout of the release to compare against.")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--json", default=None)
    parser.add_argument("--only", default=None, help="Only variants whose model contains this text.")
    parser.add_argument("--infer-only", action="store_true", help="Time inference only (no training steps).")
    parser.add_argument("--precisions", default="float32,mixed_bfloat16", help="Comma-separated.")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="after", help=argparse.SUPPRESS)
    parser.add_argument("--model", default="resnet50", help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="float32", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return _worker(args)
    if not args.before or not os.path.isdir(os.path.join(args.before, "keras_resnet")):
        parser.error(f"--before must be a checkout holding keras_resnet/. Received: --before={args.before!r}")
    from common import hardware

    try:
        import keras_hub  # noqa: F401
        have_hub = True
    except Exception:
        have_hub = False
    precisions = tuple(args.precisions.split(","))
    plans = [p for p in _variants(have_hub) if (not args.only or args.only in p[1]) and p[2] in precisions]
    rows = []
    for r in range(args.rounds):
        order = plans[r % len(plans):] + plans[:r % len(plans)]
        for variant, model, precision in order:
            row = _run(variant, model, precision, args.before, args.steps, args.infer_only)
            row["round"] = r
            rows.append(row)
            print(json.dumps(row), flush=True)
    report = {"hardware": hardware(), "rows": rows, "summary": summarize(rows)}
    print(json.dumps(report["summary"], indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


def summarize(rows):
    """Per round: each variant's throughput over keras.applications' and over `before`'s."""
    import statistics

    out = {}
    for kind in ("train_img_s", "infer_img_s", "infer_folded_img_s"):
        for row in rows:
            if kind not in row:
                continue
            same = [r for r in rows if r["round"] == row["round"] and r["precision"] == row["precision"]
                    and kind in r]
            ref = [r[kind] for r in same if r["variant"] == "keras.applications"]
            ref32 = [r[kind] for r in rows if r["round"] == row["round"] and r["precision"] == "float32"
                     and r["variant"] == "keras.applications" and kind in r]
            before = [r[kind] for r in same if r["variant"] == "before" and r["model"] == row["model"]]
            key = f"{row['variant']}:{row['model']}:{row['precision']}:{kind}"
            entry = out.setdefault(key, {"img_s": [], "vs_keras_applications": [],
                                         "vs_keras_applications_fp32": [], "vs_before": []})
            entry["img_s"].append(row[kind])
            if ref:
                entry["vs_keras_applications"].append(row[kind] / ref[0])
            if ref32:
                entry["vs_keras_applications_fp32"].append(row[kind] / ref32[0])
            if before:
                entry["vs_before"].append(row[kind] / before[0])
    return {k: {name: round(statistics.median(v), 3) for name, v in e.items() if v} for k, e in out.items()}


if __name__ == "__main__":
    main()
