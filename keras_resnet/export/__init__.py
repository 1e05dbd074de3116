"""Export for production: a SavedModel that TF Serving runs without Python, TFLite, ONNX.

`export(model, export_dir, formats=...)` writes any of them; `export_run` does
the same from a training run directory (the CLI's `keras-resnet export`).
The pieces, one module each:

    keras_resnet.image_guard          request guards (format, pixel limit) and decode
    keras_resnet.export.saved_model   the serving SavedModel and its signatures
    keras_resnet.export.warmup        TF Serving warm-up records
    keras_resnet.export.tflite_onnx   TFLite and ONNX files
    keras_resnet.export.common        argument checks, the model as exported
"""

import json
import os

from keras_resnet.export.common import _check_args, _check_image_size
from keras_resnet.export.saved_model import METADATA_FILE, SIGNATURE_NAMES, export_saved_model  # noqa: F401
from keras_resnet.export.tflite_onnx import TFLITE_QUANTIZATIONS, export_onnx, export_tflite  # noqa: F401
from keras_resnet.export.warmup import WARMUP_FILE, warmup_record  # noqa: F401
from keras_resnet.image_guard import (  # noqa: F401
    DEFAULT_MAX_BATCH_SIZE, DEFAULT_MAX_PIXELS, DEFAULT_MAX_REQUEST_PIXELS, IMAGE_FORMATS, decode_image, header_pixels, image_header)

FORMATS = ("saved_model", "tflite", "onnx")


def export(model, export_dir, *, version=None, class_names=None, image_size=None, crop_fraction=None,
           normalization=None, top_k=5, max_pixels=DEFAULT_MAX_PIXELS, formats=("saved_model",),
           apply_softmax=None, fold_batchnorm="auto", warmup=True, tflite_quantize=("dynamic",),
           max_batch_size=DEFAULT_MAX_BATCH_SIZE, max_request_pixels=DEFAULT_MAX_REQUEST_PIXELS):
    """Exports a classifier for TF Serving (SavedModel), TFLite and/or ONNX.

    Args:
        model: a Keras classifier taking 0-255 RGB pixels (normalising inside,
            as models built with `preprocessing=...` do; else pass
            `normalization`).
        export_dir: SavedModel goes to `export_dir/<version>/`; TFLite and
            ONNX files to `export_dir/model*.tflite`, `export_dir/model.onnx`.
        version: SavedModel version; default: one more than the largest
            existing numbered version (1 in an empty directory).
        class_names: names for the `labels` output (omitted when None).
        image_size: `(height, width)` the model runs at; default: its input shape.
        crop_fraction: the eval geometry: None resizes to `image_size` (CIFAR),
            0.875 resizes the short side to `size / 0.875` and centre-crops
            (ImageNet). Use the value the training run recorded.
        normalization: None, or a preset / `{"mean":, "std":}` (0-255 scale)
            added in front of a model that has no normalisation of its own.
        top_k: length of `classes`, `scores` and `labels` (capped at the
            number of classes).
        max_pixels: requests whose header announces more pixels are rejected
            before decoding.
        max_batch_size: SavedModel requests holding more images (or a pixel
            batch larger than this) fail with InvalidArgument before any work.
        max_request_pixels: SavedModel requests whose images hold more pixels
            in all (read from the headers) fail likewise.
        formats: any of `FORMATS`.
        apply_softmax: None (auto: softmax when the model outputs logits),
            True or False.
        fold_batchnorm: export `keras_resnet.deploy.fold_batchnorm(model)`,
            every BatchNorm that follows a convolution folded into it. `"auto"` (the
            default) folds every model with BatchNorm (mixed-precision ones
            too: their weight casts fold away); False keeps the graph as
            Keras builds it.
        warmup: write `assets.extra/tf_serving_warmup_requests`.
        tflite_quantize: quantized TFLite variants written besides float32
            (each of "dynamic", "float16").

    Returns:
        `{format: path}`; TFLite variants as `tflite_<quantize>`.
    """
    formats = (formats,) if isinstance(formats, str) else tuple(formats)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ValueError(f"Unknown export format. Received: formats={formats}. Valid: {FORMATS}")
    tflite_quantize = (tflite_quantize,) if isinstance(tflite_quantize, str) else tuple(tflite_quantize or ())
    bad = [q for q in tflite_quantize if q not in TFLITE_QUANTIZATIONS or q is None]
    if bad:
        raise ValueError(f"Unknown TFLite quantization. Received: tflite_quantize={tflite_quantize}. "
                         f"Valid: {TFLITE_QUANTIZATIONS[1:]}")
    _check_args(model, class_names, top_k, max_pixels, crop_fraction, max_batch_size, max_request_pixels)
    image_size = _check_image_size(image_size, model)
    paths = {}
    if "saved_model" in formats:
        paths["saved_model"] = export_saved_model(
            model, export_dir, version=version, class_names=class_names, image_size=image_size,
            crop_fraction=crop_fraction, normalization=normalization, top_k=top_k, max_pixels=max_pixels,
            apply_softmax=apply_softmax, fold_batchnorm=fold_batchnorm, warmup=warmup,
            max_batch_size=max_batch_size, max_request_pixels=max_request_pixels)
    common = dict(image_size=image_size, normalization=normalization, apply_softmax=apply_softmax)
    if "tflite" in formats:
        paths["tflite"] = export_tflite(model, os.path.join(export_dir, "model.tflite"), **common)
        for q in tflite_quantize:
            paths[f"tflite_{q}"] = export_tflite(model, os.path.join(export_dir, f"model_{q}.tflite"),
                                                 quantize=q, **common)
    if "onnx" in formats:
        paths["onnx"] = export_onnx(model, os.path.join(export_dir, "model.onnx"), **common)
    return paths


def export_run(run_dir, output, format="saved_model", **kwargs):
    """CLI hook (`keras-resnet export RUN_DIR --output DIR --format F`).

    Loads `RUN_DIR/model.keras` and takes the class names, image size and
    eval crop from `RUN_DIR/config.json` (`{"data": {...}}`; missing keys fall
    back to the model's input size, no crop and no labels).

    Args:
        run_dir: a training run directory.
        output: export directory.
        format: one of `FORMATS`, or a list of them.
        **kwargs: passed to `export` (version, top_k, max_pixels, ...).

    Returns:
        `{format: path}` as `export` does.
    """
    import keras

    model_path = os.path.join(run_dir, "model.keras")
    if not os.path.exists(model_path):
        raise ValueError(f"No model.keras in the run directory. Received: run={run_dir!r}")
    data = {}
    config_path = os.path.join(run_dir, "config.json")
    if os.path.exists(config_path):
        with open(config_path) as f:
            data = (json.load(f) or {}).get("data") or {}
    model = keras.saving.load_model(model_path, compile=False, safe_mode=True)
    kwargs.setdefault("class_names", data.get("class_names"))
    kwargs.setdefault("crop_fraction", data.get("crop_fraction"))
    if data.get("image_size") and None in tuple(model.input_shape[1:3]):
        kwargs.setdefault("image_size", tuple(data["image_size"]))
    return export(model, output, formats=format, **kwargs)
