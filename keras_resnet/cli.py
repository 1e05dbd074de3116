"""`keras-resnet` command line: argument parsing only; the work lives in the library.

    keras-resnet train --recipe cifar10_fast --output runs/fast
    keras-resnet evaluate runs/fast
    keras-resnet predict runs/fast photo.jpg more_photos/
    keras-resnet export runs/fast --output exported/ --format saved_model
    keras-resnet models
"""

import argparse
import dataclasses
import json
import logging
import os
import sys
import typing

from keras_resnet.recipes import DEFAULT_RECIPE, RECIPES, TrainConfig

_FLAG_HELP = {
    "recipe": f"Recipe to start from: {', '.join(sorted(RECIPES))}.",
    "model": "Registered model name (see `keras-resnet models`).",
    "weights": ("Start from these weights: a tag of the model (torchvision_v1, torchvision_v2, timm_a1, "
                "timm_ra2, ...: see docs/models.md), 'imagenet' (keras.applications, the _v1/_v2 "
                "models), an http(s) URL, or a .keras/.weights.h5/.safetensors/.pth file. Downloads "
                "are cached in ~/.keras/keras_resnet."),
    "offline": "Never download: a tensorflow-datasets dataset that is not prepared is an error.",
    "dataset": "tfds name (cifar10, tf_flowers, ...), an image folder, or an .npz file.",
    "data_dir": "tensorflow-datasets data directory (default: $TFDS_DATA_DIR).",
    "output": "Run directory; rerunning with the same one resumes an unfinished run.",
    "precision": "float32, mixed_bfloat16, mixed_float16 or auto (bf16 on bf16 CPUs/TPU, fp16 on GPU).",
    "strategy": "auto, default, one_device, mirrored, multi_worker or tpu.",
    "schedule": "cosine, piecewise, onecycle or constant.",
    "steps_per_epoch": "Steps per epoch (default: train examples // batch size).",
    "batch_size": "Global batch size (split across replicas).",
    "learning_rate": "Base learning rate at --reference-batch-size (scaled linearly).",
    "backup_every_steps": "Also back up every N steps (default: every epoch).",
    "max_train_examples": "Use only the first N training examples (smoke runs).",
    "lr_boundaries": "Piecewise boundaries in steps, comma separated.",
}


def _parse_bool(text):
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _optional(kind):
    def parse(text):
        return None if text.lower() in ("none", "null", "") else kind(text)
    parse.__name__ = kind.__name__
    return parse


def _ints(text):
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints, got {text!r}") from None


def _key_value(text):
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        value = json.loads(value)
    except json.JSONDecodeError:
        pass
    return key, value


def _add_train_flags(parser):
    """One flag per TrainConfig field, typed from the dataclass annotations."""
    hints = typing.get_type_hints(TrainConfig)
    for field in dataclasses.fields(TrainConfig):
        name = field.name
        flag = "--" + name.replace("_", "-")
        help_text = _FLAG_HELP.get(name, name.replace("_", " ").capitalize() + ".")
        hint = hints[name]
        if name in ("model_options",):
            parser.add_argument("--model-option", dest="model_options", action="append",
                                type=_key_value, metavar="KEY=VALUE", default=argparse.SUPPRESS,
                                help="Extra ResNet option, e.g. --model-option se_ratio=0.25 (repeatable).")
            continue
        if name in ("unfreeze_schedule", "stage_lr_multipliers"):
            parser.add_argument(flag, dest=name, type=str, default=argparse.SUPPRESS, help=(
                "Fine-tuning: 'gradual', or JSON such as '{\"0\": [\"head\"], \"2\": [\"conv5\"]}'."
                if name == "unfreeze_schedule" else
                "Fine-tuning: 'decay:0.5' or JSON such as '{\"conv5\": 1.0, \"conv4\": 0.5}'."))
            continue
        if name == "lr_boundaries":
            parser.add_argument(flag, dest=name, type=_ints, default=argparse.SUPPRESS, help=help_text)
            continue
        base = typing.get_args(hint)[0] if typing.get_origin(hint) is typing.Union else hint
        kind = {bool: _parse_bool, int: int, float: float, str: str}.get(base, str)
        # A bool flag alone means true (`--offline`); `--offline false` also parses.
        bool_form = dict(nargs="?", const=True) if base is bool else {}
        parser.add_argument(flag, dest=name, type=_optional(kind) if base is not bool else kind,
                            default=argparse.SUPPRESS, metavar=name.upper(), **bool_form,
                            help=f"{help_text} (recipe default: {field.default!r})"
                            if field.default is not dataclasses.MISSING else help_text)


def build_parser():
    from keras_resnet.image_guard import DEFAULT_MAX_BATCH_SIZE, DEFAULT_MAX_PIXELS, DEFAULT_MAX_REQUEST_PIXELS

    parser = argparse.ArgumentParser(
        prog="keras-resnet", description="Train, evaluate, predict with and export Keras ResNets.")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="Train a model (resumes when --output holds an unfinished run).")
    _add_train_flags(p)
    p.add_argument("--cpu-kernels", action="store_true", default=False, help=(
        "Train with keras_resnet.contrib.cpu's compiled BatchNorm+ReLU kernel (CPU only; compiled "
        "and cached on first use; the saved model and exports are unchanged)."))

    p = sub.add_parser("evaluate", help="Evaluate a run (or .keras file) on its test split.")
    p.add_argument("run", help="Run directory or .keras file.")
    p.add_argument("--dataset", default=None, help="Dataset (default: the run's).")
    p.add_argument("--data-dir", default=None, help="tensorflow-datasets data directory.")
    p.add_argument("--offline", action="store_true", help="Never download: a missing dataset is an error.")
    p.add_argument("--split", default=None, help="Split to evaluate (default: the run's eval split).")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--tta-flip", type=_parse_bool, default=True, help="Also report flip test-time augmentation.")
    p.add_argument("--tta-translate", type=int, default=None,
                   help="Also report multi-crop TTA with views shifted by N pixels (default: the run's).")

    p = sub.add_parser("predict", help="Top-k predictions for images or folders of images.")
    p.add_argument("run", help="Run directory or .keras file.")
    p.add_argument("images", nargs="+", help="Image files or folders.")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help="Images whose header announces more pixels are skipped before decoding.")

    p = sub.add_parser("export", help="Export a run for TF Serving, TFLite or ONNX.")
    p.add_argument("run", help="Run directory (holding model.keras and config.json).")
    p.add_argument("--output", required=True, help="Export directory (SavedModel under OUTPUT/<version>/).")
    p.add_argument("--format", default="saved_model", choices=["saved_model", "tflite", "onnx"])
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help="Serving: images whose header announces more pixels are refused before decoding.")
    p.add_argument("--max-batch-size", type=int, default=DEFAULT_MAX_BATCH_SIZE,
                   help="Serving: requests holding more images are refused.")
    p.add_argument("--max-request-pixels", type=int, default=DEFAULT_MAX_REQUEST_PIXELS,
                   help="Serving: requests whose images hold more pixels in all are refused.")

    p = sub.add_parser("models", help="List the registered models.")
    p.add_argument("--params", action="store_true", help="Also build each model and count parameters (slow).")
    p.add_argument("filter", nargs="?", default=None, help="Only names containing this text.")
    return parser


def _train(args):
    from keras_resnet.recipes import get_recipe
    from keras_resnet.training import train

    # Only flags given on the command line are present (argparse.SUPPRESS), so
    # an explicit "none" can override a recipe value.
    skip = ("command", "log_level", "recipe", "cpu_kernels")
    overrides = {k: v for k, v in vars(args).items() if k not in skip}
    if "model_options" in overrides:
        overrides["model_options"] = dict(overrides["model_options"])
    for key in ("unfreeze_schedule", "stage_lr_multipliers"):
        if key in overrides and overrides[key].lstrip().startswith("{"):
            overrides[key] = json.loads(overrides[key])
    config = get_recipe(getattr(args, "recipe", None) or DEFAULT_RECIPE, **overrides)
    hook = None
    if args.cpu_kernels:
        from keras_resnet.contrib import cpu

        hook = cpu.accelerate
    result = train(config, model_hook=hook)
    print(json.dumps({"run_dir": result.run_dir, **result.metrics}, indent=2))


def _load_run(path):
    import keras

    if os.path.isdir(path):
        model_path = os.path.join(path, "model.keras")
        if not os.path.exists(model_path):
            model_path = os.path.join(path, "best.keras")
        config_path = os.path.join(path, "config.json")
        run_config = json.load(open(config_path)) if os.path.exists(config_path) else {}
    else:
        model_path, run_config = path, {}
    if not os.path.exists(model_path):
        raise ValueError(f"No model found. Received: run={path!r} (expected a .keras file or a "
                         "run directory holding model.keras)")
    return keras.saving.load_model(model_path, compile=False, safe_mode=True), run_config


def _evaluate(args):
    from keras_resnet import data as kr_data
    from keras_resnet.training import evaluate_model

    model, run_config = _load_run(args.run)
    cfg = run_config.get("config", {})
    dataset = args.dataset or cfg.get("dataset")
    if not dataset:
        raise ValueError("No dataset known for this model: pass --dataset.")
    image_size = tuple(model.input_shape[1:3])
    _, eval_ds, info = kr_data.make_pipelines(
        dataset, args.batch_size, image_size=image_size, augment=None,
        data_dir=args.data_dir or cfg.get("data_dir"), eval_split=args.split or cfg.get("eval_split"),
        crop_fraction=run_config.get("data", {}).get("crop_fraction"), offline=args.offline)
    translate = args.tta_translate if args.tta_translate is not None else cfg.get("tta_translate", 0)
    print(json.dumps(evaluate_model(model, eval_ds, tta_flip=args.tta_flip, tta_translate=translate), indent=2))


def _list_images(paths):
    exts = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")
    files = []
    for path in paths:
        if os.path.isdir(path):
            for root, _, names in os.walk(path):
                files += [os.path.join(root, n) for n in sorted(names) if n.lower().endswith(exts)]
        elif os.path.exists(path):
            files.append(path)
        else:
            raise ValueError(f"Image path not found. Received: {path!r}")
    if not files:
        raise ValueError(f"No images found. Received: images={list(paths)}")
    return files


def _predict(args):
    import numpy as np
    import tensorflow as tf

    from keras_resnet.data.folders import BadImageError, load_image
    from keras_resnet.preprocessing import eval_resize

    if args.top_k < 1:
        raise ValueError(f"--top-k must be >= 1. Received: top_k={args.top_k}")
    if args.max_pixels < 1:
        raise ValueError(f"--max-pixels must be >= 1. Received: max_pixels={args.max_pixels}")
    model, run_config = _load_run(args.run)
    data = run_config.get("data", {})
    names = data.get("class_names")
    image_size = tuple(model.input_shape[1:3])
    k = min(args.top_k, model.output_shape[-1])
    print(f"{'image':40s} " + " ".join(f"{'top' + str(i + 1):>22s}" for i in range(k)))
    for path in _list_images(args.images):
        try:
            image = load_image(path, max_pixels=args.max_pixels)
        except BadImageError as e:
            print(f"{path:40s} skipped: {e}")
            continue
        batch = eval_resize(tf.constant(image)[None], image_size, data.get("crop_fraction"))
        probs = np.asarray(model(batch, training=False))[0]
        top = np.argsort(-probs)[:k]
        cells = [f"{(names[i] if names else str(i))[:14]:>14s} {probs[i]:6.1%}" for i in top]
        print(f"{os.path.basename(path)[:40]:40s} " + " ".join(cells))


def _export(args):
    from keras_resnet.export import export_run

    limits = {}
    if args.format == "saved_model":
        limits = dict(max_pixels=args.max_pixels, max_batch_size=args.max_batch_size,
                      max_request_pixels=args.max_request_pixels)
    result = export_run(args.run, args.output, format=args.format, **limits)
    print(result if isinstance(result, str) else json.dumps(result, indent=2, default=str))


def _models(args):
    from keras_resnet.registry import create_model, list_models, model_config

    for name in list_models(args.filter):
        cfg = model_config(name)
        line = f"{name:22s} input {tuple(cfg['input_shape'])}"
        if args.params:
            line += f"  {create_model(name).count_params():>12,d} params"
        print(line)


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level), format="%(levelname)s %(name)s: %(message)s")
    del args.log_level
    handlers = {"train": _train, "evaluate": _evaluate, "predict": _predict,
                "export": _export, "models": _models}
    try:
        handlers[args.command](args)
    except (ValueError, FileNotFoundError) as e:
        print(f"keras-resnet {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # a NaN stop and friends: message, not a traceback
        from keras_resnet.training import TrainingInterrupted

        if isinstance(e, TrainingInterrupted):
            print(f"keras-resnet {args.command}: {e}", file=sys.stderr)
            return 3
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
