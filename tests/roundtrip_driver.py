"""Driver for tests/test_precision_roundtrip.py: each call runs in its own process.

    python tests/roundtrip_driver.py train PRECISION DATA.npz WORKDIR MODEL_KEY...
        Trains each model a few steps through the CLI (`keras_resnet.cli.main`)
        under PRECISION, then writes WORKDIR/<key>/reference.npz: the trained
        model's outputs on a fixed batch, computed in the training process.

    python tests/roundtrip_driver.py verify DATA.npz WORKDIR FINETUNE_PRECISION MODEL_KEY...
        In a fresh process whose global policy is the default: `evaluate`,
        `predict` and `export` through the CLI, then `keras.saving.load_model`
        + `predict` / `model(x, training=False)` and the exported SavedModel's
        signatures, each compared with reference.npz; then fine-tunes the
        first model (`train --weights .../model.keras`) under
        FINETUNE_PRECISION. Prints one JSON line:
        {key: {"cli": {...}, "max_abs_diff": {...}}, "finetune": {...}}.

The model keys name one model of each block kind (see MODELS).
"""

import io
import json
import os
import sys
from contextlib import redirect_stdout

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# One registered model of each block kind, small enough for the default test tier.
MODELS = {
    "basic": ["--model", "resnet20"],
    "bottleneck": ["--model", "resnet20", "--model-option", "block=\"bottleneck\""],
    "preact": ["--model", "preact_resnet20"],
    "resnext_se": ["--model", "resnet20", "--model-option", "block=\"bottleneck\"",
                   "--model-option", "groups=4", "--model-option", "base_width=16",
                   "--model-option", "se_ratio=0.25"],
    "resnet9": ["--model", "resnet9_half"],
}
BATCH = 16


def reference_batch(data_path):
    import numpy as np

    with np.load(data_path) as f:
        return f["x_test"][:BATCH].astype("float32")


def train(precision, data_path, workdir, keys):
    import numpy as np

    from keras_resnet import cli, training

    trained = {}
    original = training.train

    def capture(config, **kwargs):
        result = original(config, **kwargs)
        trained["model"] = result.model
        return result

    training.train = capture
    x = reference_batch(data_path)
    for key in keys:
        run = os.path.join(workdir, key)
        argv = ["train", "--dataset", data_path, "--epochs", "1", "--steps-per-epoch", "2",
                "--batch-size", "16", "--precision", precision, "--output", run,
                "--verbose", "0", "--tta-flip", "false", *MODELS[key]]
        with redirect_stdout(io.StringIO()):
            code = cli.main(argv)
        if code != 0:
            raise SystemExit(f"train {key} under {precision} exited {code}")
        model = trained.pop("model")
        np.savez(os.path.join(run, "reference.npz"), x=x,
                 call=np.asarray(model(x, training=False), "float32"),
                 predict=np.asarray(model.predict(x, verbose=0), "float32"))


def _cli(argv):
    from keras_resnet import cli

    out = io.StringIO()
    with redirect_stdout(out):
        code = cli.main(argv)
    return {"exit": code, "stdout": out.getvalue()}


def verify(data_path, workdir, finetune_precision, keys):
    import keras
    import numpy as np
    import tensorflow as tf

    import keras_resnet  # noqa: F401  (registers the layers for load_model)

    report = {"global_policy": keras.mixed_precision.global_policy().name}
    for key in keys:
        run = os.path.join(workdir, key)
        ref = np.load(os.path.join(run, "reference.npz"))
        x = ref["x"]
        png = os.path.join(run, "sample.png")
        tf.io.write_file(png, tf.io.encode_png(tf.cast(x[0], tf.uint8)))
        export_dir = os.path.join(run, "exported")
        cli_results = {
            "evaluate": _cli(["evaluate", run, "--dataset", data_path, "--batch-size", "8"]),
            "predict": _cli(["predict", run, png, "--top-k", "3"]),
            "export": _cli(["export", run, "--output", export_dir]),
        }
        model = keras.saving.load_model(os.path.join(run, "model.keras"))
        outputs = {
            "load_model_predict": model.predict(x, verbose=0),
            "load_model_call": model(x, training=False),
        }
        if cli_results["export"]["exit"] == 0:
            served = tf.saved_model.load(json.loads(cli_results["export"]["stdout"])["saved_model"])
            outputs["serving_predict_images"] = served.signatures["predict_images"](
                images=tf.constant(x))["probabilities"]
            encoded = tf.stack([tf.io.encode_png(tf.cast(image, tf.uint8)) for image in x])
            outputs["serving_default"] = served.signatures["serving_default"](
                image_bytes=encoded)["probabilities"]
        report[key] = {
            "cli": cli_results,
            "compute_dtype": model.get_layer("conv1_conv").compute_dtype,
            "max_abs_diff": {name: float(np.max(np.abs(np.asarray(value, "float32") - ref["call"])))
                             for name, value in outputs.items()},
            "top1_agreement": {name: float(np.mean(np.argmax(np.asarray(value), -1)
                                                   == np.argmax(ref["call"], -1)))
                               for name, value in outputs.items()},
        }
    # Fine-tuning from the first model, under another precision than it trained in.
    source = os.path.join(workdir, keys[0], "model.keras")
    target = os.path.join(workdir, f"finetune_{finetune_precision}")
    report["finetune"] = _cli(["train", "--dataset", data_path, "--weights", source,
                               "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "16",
                               "--precision", finetune_precision, "--output", target,
                               "--verbose", "0", "--tta-flip", "false", *MODELS[keys[0]]])
    if report["finetune"]["exit"] == 0:
        with open(os.path.join(target, "metrics.json")) as f:
            report["finetune"]["precision"] = json.load(f)["precision"]
    print(json.dumps(report))


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    if command == "train":
        train(args[0], args[1], args[2], args[3:])
    elif command == "verify":
        verify(args[0], args[1], args[2], args[3:])
    else:
        raise SystemExit(f"unknown command {command!r}")
