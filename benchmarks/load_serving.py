"""Load test of the serving SavedModel under mixed good and hostile requests.

    python benchmarks/load_serving.py                       # 8 callers x 200 requests
    python benchmarks/load_serving.py --callers 2 --requests 5 --json out.json

Two processes. The first (this script, with keras) builds a small model,
exports it with the default request limits, writes the request bytes
(`hostile_images.py`: garbage, empty, truncated, header bombs, an over-limit
JPEG, a GIF with a huge later frame, bitfield BMPs with RGBA/ABGR masks, a
request of 5,000 tiny images, a good image batched with garbage) and the
reference prediction of every good request (the Keras model on the same
decode and eval resize). The second loads the SavedModel with
`tf.saved_model.load` where `keras` cannot be imported (a `keras` package that
raises ImportError comes first on `sys.path`), as TF Serving would run it, and
sends the requests from concurrent threads, each caller its own seeded mix.

Reports requests/s, p50/p99 latency, outcomes by kind (answered correctly,
answered wrongly, InvalidArgument, any other error) and the serving
process's peak RSS. Every good request must be answered correctly and every
hostile one refused with InvalidArgument: the script exits 1 otherwise.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
IMAGE_SIZE = (32, 32)
TINY_REQUEST = 5000   # images in the "many tiny images" request (over max_batch_size)
HUGE_SIDE = 6000      # the allowed-but-huge JPEG: 36 megapixels, under the default max_pixels
TOLERANCE = 1e-4      # served vs reference probabilities


# ----------------------------------------------------------------- building (keras)
def _tiny_model():
    import keras_resnet as kr

    return kr.ResNet(IMAGE_SIZE + (3,), 10, stages=[(1, 8, 1), (1, 16, 2)], block="basic", stem="cifar",
                     stem_filters=8, preprocessing="cifar10")


def _gradient_jpeg(side):
    """A large smooth JPEG built without a full-size numpy array."""
    import io

    from PIL import Image

    grey = Image.linear_gradient("L").resize((side, side))
    out = io.BytesIO()
    Image.merge("RGB", (grey, grey.rotate(90), grey.transpose(Image.FLIP_LEFT_RIGHT))).save(out, "JPEG", quality=80)
    return out.getvalue()


def build(work, huge_side=HUGE_SIDE):
    """Exports the model and writes `work/requests/<kind>.json` (hex-encoded
    images) and `work/manifest.json`: per kind, whether it must be answered
    (with its reference probabilities) or refused."""
    import numpy as np
    import tensorflow as tf

    import hostile_images as h
    import keras_resnet as kr
    from keras_resnet.image_guard import DEFAULT_MAX_BATCH_SIZE, DEFAULT_MAX_PIXELS
    from keras_resnet.preprocessing import eval_resize

    model = _tiny_model()
    path = kr.export(model, os.path.join(work, "serve"), warmup=False)["saved_model"]
    pictures = [h.colourful(*IMAGE_SIZE, seed=i) for i in range(3)]
    tiny = h.encode(h.colourful(8, 8), "PNG")
    good = {
        "png": [h.encode(pictures[0], "PNG")],
        "jpeg_batch": [h.encode(p, "JPEG") for p in pictures],
        "gif": [h.encode(pictures[1], "GIF")],
        "bmp_bgra_bitfields": [h.bmp32(pictures[2], h.BGRA_MASKS)],
        "tiny_batch_at_the_limit": [tiny] * DEFAULT_MAX_BATCH_SIZE,
        "jpeg_huge_allowed": [_gradient_jpeg(huge_side)],
    }
    hostile = {kind: [data] for kind, data in h.hostile_requests(DEFAULT_MAX_PIXELS).items()}
    hostile["many_tiny_images"] = [tiny] * TINY_REQUEST
    hostile["good_with_garbage"] = [good["png"][0], b"not an image"]

    known = {}

    def reference(images):
        """The Keras model on TensorFlow's decode and the shared eval resize."""
        for b in set(images) - set(known):
            decoded = tf.io.decode_image(b, channels=3, expand_animations=False)
            known[b] = model.predict(eval_resize(decoded[None], IMAGE_SIZE).numpy(), verbose=0)[0]
        return np.stack([known[b] for b in images])

    manifest = {"saved_model": path, "kinds": {}}
    os.makedirs(os.path.join(work, "requests"), exist_ok=True)
    for kind, images in list(good.items()) + list(hostile.items()):
        with open(os.path.join(work, "requests", kind + ".json"), "w") as f:
            json.dump([b.hex() for b in images], f)
        entry = {"expect": "answer" if kind in good else "invalid", "images": len(images)}
        if kind in good:
            entry["reference"] = reference(images).tolist()
        manifest["kinds"][kind] = entry
    with open(os.path.join(work, "manifest.json"), "w") as f:
        json.dump(manifest, f)
    return manifest


# ------------------------------------------------------------ serving (no keras)
def _first_line(error):
    """The guard's own message of a TF error (not 'Graph execution error:')."""
    import re

    text = getattr(error, "message", None) or str(error)
    found = re.search(r"assertion failed: \[(.*)\]\s*$", text, re.M)
    if found:
        return found.group(1)[:200]
    lines = [line.strip() for line in text.splitlines() if line.strip() and "Graph execution error" not in line]
    return (lines[0] if lines else type(error).__name__)[:200]


def _percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))] if values else None


def peak_rss_mb():
    """This process's own peak RSS. Linux's `ru_maxrss` carries the parent's peak
    across fork/vfork + exec (a test process's gigabytes), so read the address
    space's high-water mark, `VmHWM`, where there is one."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def serve(work, callers, requests, seed=0, hostile_share=0.5):
    """Loads the SavedModel (keras must not be importable here) and runs the
    callers; returns the report."""
    import numpy as np
    import tensorflow as tf

    keras_importable = True
    try:
        import keras  # noqa: F401
    except ImportError:
        keras_importable = False
    with open(os.path.join(work, "manifest.json")) as f:
        manifest = json.load(f)
    kinds = manifest["kinds"]
    payloads = {}
    for kind in kinds:
        with open(os.path.join(work, "requests", kind + ".json")) as f:
            payloads[kind] = tf.constant([bytes.fromhex(x) for x in json.load(f)])
    references = {k: np.asarray(v["reference"], np.float32) for k, v in kinds.items() if "reference" in v}
    serve_fn = tf.saved_model.load(manifest["saved_model"]).signatures["serving_default"]
    good = sorted(k for k, v in kinds.items() if v["expect"] == "answer")
    bad = sorted(k for k, v in kinds.items() if v["expect"] == "invalid")

    outcomes = {k: {"correct": 0, "wrong": 0, "invalid": 0, "other_error": 0} for k in kinds}
    examples = {}
    latencies = []
    lock = threading.Lock()

    def caller(index):
        rng = np.random.default_rng([seed, index])
        # Every kind at least once per caller when there is room, then a seeded mix.
        plan = list(good + bad)[:requests] if requests >= len(kinds) else []
        plan += [str(rng.choice(bad)) if rng.random() < hostile_share else str(rng.choice(good))
                 for _ in range(requests - len(plan))]
        rng.shuffle(plan)
        for kind in plan:
            start = time.perf_counter()
            try:
                out = serve_fn(image_bytes=payloads[kind])["probabilities"].numpy()
                result = ("correct" if kind in references and out.shape == references[kind].shape
                          and float(np.abs(out - references[kind]).max()) <= TOLERANCE else "wrong")
            except tf.errors.InvalidArgumentError as e:
                result, error = "invalid", e
            except Exception as e:  # noqa: BLE001 - counted and reported
                result, error = "other_error", e
            seconds = time.perf_counter() - start
            with lock:
                latencies.append(seconds)
                outcomes[kind][result] += 1
                if result != "correct" and kind not in examples:
                    examples[kind] = (result, _first_line(error) if result != "wrong"
                                      else "probabilities differ from the reference")

    start = time.perf_counter()
    threads = [threading.Thread(target=caller, args=(i,)) for i in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    expected = {k: ("correct" if v["expect"] == "answer" else "invalid") for k, v in kinds.items()}
    failures = {k: {r: n for r, n in counts.items() if n and r != expected[k]} for k, counts in outcomes.items()}
    failures = {k: v for k, v in failures.items() if v}
    return {
        "callers": callers, "requests_per_caller": requests, "requests": len(latencies),
        "seconds": round(elapsed, 3), "requests_per_second": round(len(latencies) / elapsed, 2),
        "latency_p50_ms": round(1000 * _percentile(latencies, 50), 2),
        "latency_p99_ms": round(1000 * _percentile(latencies, 99), 2),
        "outcomes": outcomes, "unexpected": failures, "messages": examples,
        "peak_rss_mb": peak_rss_mb(),
        "keras_importable": keras_importable, "tensorflow": tf.__version__,
    }


def keras_blocker(work):
    """A directory whose `keras` package refuses to import: first on the serving
    process's sys.path, it stands for a machine without keras."""
    folder = os.path.join(work, "no_keras")
    os.makedirs(os.path.join(folder, "keras"), exist_ok=True)
    with open(os.path.join(folder, "keras", "__init__.py"), "w") as f:
        f.write('raise ImportError("keras is not installed here (load_serving.py blocks it)")\n')
    return folder


def run_server_process(work, callers, requests, seed=0, timeout=1800):
    """`serve` in a fresh process where keras cannot be imported; its report."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=os.pathsep.join([keras_blocker(work), HERE]))
    proc = subprocess.run([sys.executable, os.path.join(HERE, "load_serving.py"), "--serve", work,
                           "--callers", str(callers), "--requests", str(requests), "--seed", str(seed)],
                          capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"the serving process failed (exit {proc.returncode}): {proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--callers", type=int, default=8)
    parser.add_argument("--requests", type=int, default=200, help="per caller")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", help="a folder for the export and the requests (default: a temporary one)")
    parser.add_argument("--json", help="write the report here")
    parser.add_argument("--serve", metavar="WORK", help=argparse.SUPPRESS)  # the serving process
    args = parser.parse_args(argv)
    if args.serve:
        print(json.dumps(serve(args.serve, args.callers, args.requests, args.seed)))
        return 0
    sys.path.insert(0, HERE)
    from common import hardware, write_json

    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or tmp
        build(work)
        report = run_server_process(work, args.callers, args.requests, args.seed)
    report["hardware"] = hardware()
    print(json.dumps({k: v for k, v in report.items() if k != "hardware"}, indent=2))
    write_json(args.json, report)
    if report["unexpected"] or report["keras_importable"]:
        print(f"FAILED: unexpected outcomes {report['unexpected']}"
              + (" (keras was importable in the serving process)" if report["keras_importable"] else ""),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
