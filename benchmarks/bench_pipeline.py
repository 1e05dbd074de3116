"""Input-pipeline throughput next to training throughput (issue 3: the pipeline must
deliver at least 5x the images/s of the model it feeds).

    python benchmarks/bench_pipeline.py [--quick] [--seconds 5] [--json out.json]
        [--train-img-s resnet20=500 --train-img-s resnet50=8]

Pipelines, built with `keras_resnet.data.make_pipelines` exactly as training does:

  cifar10      the real CIFAR-10 (TFDS_DATA_DIR, else ../shared/tensorflow_datasets),
               `cifar` augmentation, batch 128: the first epoch (read, decode, fill the
               cache) and the cached steady state.
  jpeg224      synthetic 500x375 JPEG photos written to a temporary folder, `imagenet`
               augmentation (random-resized crop + flip) at 224 px, batch 64: decoding
               every image (cache=False, the ImageNet-scale case) and cached.

Training throughput comes from --train-img-s, else it is measured briefly with
`bench_models.measure` (ResNet-20 at 32 px, ResNet-50 at 224 px) in the precision
`precision="auto"` would train with here (bf16 only where the CPU has bf16 instructions).
Each pipeline figure is the images delivered per second by one iterator over
`--seconds` after a short warm-up, on all cores; on a machine shared with other
jobs it is a lower bound.
"""

import argparse
import os
import shutil
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

from common import hardware, print_hardware, write_json  # noqa: E402

TARGET_RATIO = 5.0


def tfds_dir():
    """The tfds folder holding the real CIFAR-10, or None."""
    shared = os.path.join(os.path.dirname(HERE), "..", "shared", "tensorflow_datasets")
    for candidate in (os.environ.get("TFDS_DATA_DIR"), shared):
        if candidate and os.path.isdir(os.path.join(candidate, "cifar10")):
            return os.path.abspath(candidate)
    return None


def throughput(ds, seconds, warmup_batches=3, max_images=None):
    """Images per second delivered by one iterator over `ds`."""
    it = iter(ds)
    for _ in range(warmup_batches):
        next(it)
    images, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds and (max_images is None or images < max_images):
        images += int(next(it)[0].shape[0])
    return images / (time.perf_counter() - start)


def first_epoch(ds, num_images):
    """Images per second over the first `num_images` (includes filling buffers and the cache)."""
    it = iter(ds)
    images, start = 0, time.perf_counter()
    while images < num_images:
        images += int(next(it)[0].shape[0])
    return images / (time.perf_counter() - start)


def write_jpegs(root, count, size=(500, 375), classes=2, seed=0):
    """Photo-like JPEGs (smooth colour fields plus grain; ~40-80 KB like ImageNet's)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(count):
        folder = os.path.join(root, f"class{i % classes}")
        os.makedirs(folder, exist_ok=True)
        coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize(size, Image.BICUBIC)
        pixels = np.asarray(coarse, np.int16) + rng.integers(-12, 13, (size[1], size[0], 3))
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
            os.path.join(folder, f"{i:05d}.jpg"), "JPEG", quality=90)


def bench_cifar(seconds, quick):
    from keras_resnet import data

    root = tfds_dir()
    if root is None:
        return {"skipped": "real CIFAR-10 not found (set TFDS_DATA_DIR)"}
    limit = 10_000 if quick else None
    train, _, info = data.make_pipelines("cifar10", 128, augment="cifar", data_dir=root, max_examples=limit)
    first = first_epoch(train, info.num_train)
    steady = throughput(train, seconds)
    return {"dataset": "cifar10", "augment": "cifar", "batch": 128, "num_train": info.num_train,
            "first_epoch_img_s": round(first, 1), "cached_img_s": round(steady, 1)}


def bench_jpeg224(seconds, quick):
    from keras_resnet import data

    count = 128 if quick else 512
    root = tempfile.mkdtemp(prefix="bench_jpegs_")
    try:
        write_jpegs(root, count)
        results = {"dataset": f"{count} synthetic 500x375 JPEGs", "augment": "imagenet", "batch": 64,
                   "image_size": 224}
        for key, cache in (("decode_every_image_img_s", False), ("cached_img_s", True)):
            train, _, _ = data.make_pipelines(root, 64, image_size=224, augment="imagenet", cache=cache,
                                              validation_split=0.0)
            results[key] = round(throughput(train, seconds), 1)
        return results
    finally:
        shutil.rmtree(root, ignore_errors=True)


def training_throughput(given, quick):
    """`{"resnet20": img/s, "resnet50": img/s}` from --train-img-s, else measured briefly."""
    from keras_resnet.distribute import resolve_precision

    out = dict(given)
    precision = resolve_precision("auto")
    models = {"resnet20": "keras_resnet resnet20", "resnet50": "keras_resnet resnet50"}
    for key, name in models.items():
        if key in out:
            continue
        if quick and key == "resnet50":
            continue  # a minute of compile + steps; pass --train-img-s resnet50=N instead
        from bench_models import measure

        result = measure(name, precision, batch=32 if key == "resnet50" else 128,
                         train_steps=2, repeats=1)
        out[key] = result["train_img_s"]
        out[f"{key}_measured_precision"] = precision
    return out


def parse_given(items):
    out = {}
    for item in items or ():
        key, _, value = item.partition("=")
        if key not in ("resnet20", "resnet50") or not value:
            raise SystemExit(f"--train-img-s expects resnet20=N or resnet50=N. Received: {item!r}")
        out[key] = float(value)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="Measuring time per pipeline.")
    parser.add_argument("--quick", action="store_true",
                        help="10k CIFAR images, 128 JPEGs, 2 s each; ResNet-50 training not measured.")
    parser.add_argument("--train-img-s", action="append", metavar="MODEL=IMG_S",
                        help="Training throughput to compare with (resnet20=..., resnet50=...).")
    parser.add_argument("--json", default=None, help="Also write the results here.")
    args = parser.parse_args(argv)
    seconds = 2.0 if args.quick else args.seconds

    hw = hardware()
    print_hardware(hw)
    try:
        load = os.getloadavg()[0]
        print(f"Load average (1 min) before the run: {load:.2f} on {os.cpu_count()} cores")
    except OSError:
        load = None
    cifar = bench_cifar(seconds, args.quick)
    jpeg = bench_jpeg224(seconds, args.quick)
    training = training_throughput(parse_given(args.train_img_s), args.quick)

    rows = []
    if "skipped" not in cifar:
        rows += [("CIFAR-10, cifar aug, first epoch", cifar["first_epoch_img_s"], "resnet20"),
                 ("CIFAR-10, cifar aug, cached", cifar["cached_img_s"], "resnet20")]
    rows += [("224 px JPEG, imagenet aug, decode", jpeg["decode_every_image_img_s"], "resnet50"),
             ("224 px JPEG, imagenet aug, cached", jpeg["cached_img_s"], "resnet50")]
    ratios = {}
    print(f"\n| pipeline | img/s | fed model | model train img/s | ratio | >= {TARGET_RATIO:g}x |")
    print("| --- | ---: | --- | ---: | ---: | --- |")
    for label, img_s, model in rows:
        train_img_s = training.get(model)
        if train_img_s is not None and f"{model}_measured_precision" in training:
            model = f"{model} ({training[model + '_measured_precision']}, measured)"
        ratio = img_s / train_img_s if train_img_s else None
        ratios[label] = round(ratio, 1) if ratio else None
        print(f"| {label} | {img_s:,.0f} | {model} | {train_img_s or 'n/a'} | "
              f"{f'{ratio:.1f}x' if ratio else 'n/a'} | {'yes' if ratio and ratio >= TARGET_RATIO else 'no' if ratio else '?'} |")
    if "skipped" in cifar:
        print(f"cifar10: skipped ({cifar['skipped']})")
    write_json(args.json, {"hardware": hw, "load_average_1min": load, "cifar10": cifar, "jpeg224": jpeg,
                           "training_img_s": training, "ratios": ratios, "target_ratio": TARGET_RATIO,
                           "quick": args.quick})


if __name__ == "__main__":
    main()
