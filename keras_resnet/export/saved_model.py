"""The serving SavedModel: plain TensorFlow that TF Serving runs without Python.

A `tf.Module` with `tf.function` signatures (it loads with `tf.saved_model.load`
where keras cannot be imported), self-contained: the request guards and decode
(`keras_resnet.image_guard`), the eval resize/crop (`preprocessing.eval_resize`,
the function the training pipelines use) and the model's own in-graph
normalisation. Signatures:

    serving_default(image_bytes: string[N])          encoded JPEG/PNG/GIF/BMP/WebP,
                                                     i.e. {"b64": ...} in a REST call
    predict_images(images: float32[N, H, W, 3])      0-255 pixels, any H and W
    predict_images_uint8(images: uint8[N, H, W, 3])

each returning `probabilities` float32[N, C], `classes` int32[N, k], `scores`
float32[N, k] and, when class names are known, `labels` string[N, k].

Layout: `export_dir/<version>/` (the numbered layout TF Serving watches) is
written to a hidden temporary directory first and renamed into place, so a
server polling `export_dir` never loads a half-written version.
"""

import json
import os
import shutil

import tensorflow as tf

from keras_resnet.export.common import (
    _check_args, _check_image_size, _has_input_normalization, _outputs_probabilities, _resolve_fold,
    _with_normalization, fold_batchnorm_model, log)
from keras_resnet.export.warmup import WARMUP_FILE, write_warmup
from keras_resnet.image_guard import (
    DEFAULT_MAX_BATCH_SIZE, DEFAULT_MAX_PIXELS, DEFAULT_MAX_REQUEST_PIXELS, IMAGE_FORMATS, _resize, decode_image,
    header_pixels)

SIGNATURE_NAMES = ("serving_default", "predict_images", "predict_images_uint8")
METADATA_FILE = "keras_resnet_export.json"   # under assets.extra/, ignored by TF Serving


def _request_checks(count, pixels, max_batch_size, max_request_pixels, what):
    """Assertions bounding one request's work before anything is decoded or run."""
    return [
        tf.debugging.Assert(count <= max_batch_size, [tf.strings.join([
            "the request holds ", tf.strings.as_string(count), f" {what}, more than "
            f"max_batch_size={max_batch_size}: split it"])]),
        tf.debugging.Assert(pixels <= float(max_request_pixels), [tf.strings.join([
            "the request's images hold ", tf.strings.as_string(pixels, precision=0), " pixels in all, "
            f"more than max_request_pixels={max_request_pixels}: send fewer or smaller images"])]),
    ]


def _serving_functions(core, num_classes, image_size, crop_fraction, class_names, top_k, max_pixels,
                       softmax, max_batch_size=DEFAULT_MAX_BATCH_SIZE,
                       max_request_pixels=DEFAULT_MAX_REQUEST_PIXELS):
    """The three signature functions around `core` (float32 [N, h, w, 3] -> scores).

    Every request is bounded before any work: at most `max_batch_size` images, and
    at most `max_request_pixels` pixels in all (from the headers for encoded
    images, from the tensor's shape for pixel arrays)."""
    size = tuple(int(s) for s in image_size)
    k = min(int(top_k), int(num_classes))
    names = tf.constant([str(c) for c in class_names]) if class_names else None

    def outputs(images):
        scores = tf.ensure_shape(tf.cast(core(images), tf.float32), (None, num_classes))
        probs = tf.nn.softmax(scores, axis=-1) if softmax else scores
        top = tf.math.top_k(probs, k=k)
        out = {"probabilities": probs, "classes": tf.cast(top.indices, tf.int32), "scores": top.values}
        if names is not None:
            out["labels"] = tf.gather(names, top.indices)
        return out

    def serve(image_bytes):
        n = tf.shape(image_bytes)[0]
        with tf.control_dependencies([tf.debugging.Assert(n <= max_batch_size, [tf.strings.join([
                "the request holds ", tf.strings.as_string(n), " images, more than "
                f"max_batch_size={max_batch_size}: split it"])])]):
            # Headers only (nothing decoded). Unknown or refused bytes, and images over
            # max_pixels, count 0 here: they fail in decode_image with their own message.
            def allowed_pixels(data):
                pixels = header_pixels(data)
                return tf.where((pixels < 0) | (pixels > float(max_pixels)), tf.constant(0.0, tf.float64),
                                pixels)
            pixels = tf.map_fn(allowed_pixels, image_bytes, fn_output_signature=tf.float64)
        with tf.control_dependencies(_request_checks(n, tf.reduce_sum(pixels), max_batch_size,
                                                     max_request_pixels, "images")):
            # Per image: sizes differ until eval_resize has run.
            images = tf.map_fn(lambda args: decode_image(args[0], size, crop_fraction, max_pixels, args[1]),
                               (image_bytes, tf.range(n)),
                               fn_output_signature=tf.TensorSpec(size + (3,), tf.float32))
        return outputs(images)

    def bounded(images):
        shape = tf.shape(images, out_type=tf.int64)
        pixels = tf.cast(shape[0] * shape[1] * shape[2], tf.float64)
        with tf.control_dependencies(_request_checks(shape[0], pixels, max_batch_size,
                                                     max_request_pixels, "images")):
            return tf.identity(images)

    def predict_images(images):
        return outputs(_resize(bounded(images), size, crop_fraction))

    def predict_images_uint8(images):
        return outputs(_resize(bounded(images), size, crop_fraction))  # uint8 until resized

    return {
        "serving_default": tf.function(serve, autograph=False, input_signature=[
            tf.TensorSpec([None], tf.string, name="image_bytes")]),
        "predict_images": tf.function(predict_images, autograph=False, input_signature=[
            tf.TensorSpec([None, None, None, 3], tf.float32, name="images")]),
        "predict_images_uint8": tf.function(predict_images_uint8, autograph=False, input_signature=[
            tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")]),
    }


def _next_version(export_dir):
    existing = [int(d) for d in os.listdir(export_dir) if d.isdigit()] if os.path.isdir(export_dir) else []
    return max(existing, default=0) + 1


def export_saved_model(model, export_dir, *, version=None, class_names=None, image_size=None,
                       crop_fraction=None, normalization=None, top_k=5, max_pixels=DEFAULT_MAX_PIXELS,
                       apply_softmax=None, fold_batchnorm="auto", warmup=True,
                       max_batch_size=DEFAULT_MAX_BATCH_SIZE, max_request_pixels=DEFAULT_MAX_REQUEST_PIXELS):
    """Writes the serving SavedModel to `export_dir/<version>/`; returns that path.

    See `export` for the arguments.
    """
    _check_args(model, class_names, top_k, max_pixels, crop_fraction, max_batch_size, max_request_pixels)
    image_size = _check_image_size(image_size, model)
    if version is None:
        version = _next_version(export_dir)
    elif not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(f"`version` must be a positive int. Received: version={version!r}")
    path = os.path.join(export_dir, str(version))
    if os.path.exists(path):
        raise ValueError(f"Export version {version} already exists at {path!r}. Received: version={version}")
    if normalization is None and not _has_input_normalization(model):
        log.warning("%s has no Normalization layer: the export feeds it raw 0-255 pixels. Pass "
                    "normalization='imagenet' (or the training stats) if it was trained on normalised inputs.",
                    model.name)
    softmax = (not _outputs_probabilities(model)) if apply_softmax is None else bool(apply_softmax)
    fold_batchnorm = _resolve_fold(fold_batchnorm, model)
    if fold_batchnorm:  # before any wrapping: the fold rebuilds the model's own graph
        model = fold_batchnorm_model(model)
    model = _with_normalization(model, normalization)
    module = tf.Module()
    module.model_variables = list(model.variables)  # tracked: saved under variables/
    num_outputs = int(model.output_shape[-1])

    def forward(images):
        # oneDNN's fused convolutions reject an empty batch ("input depth must be
        # evenly divisible by filter depth"): answer an empty request without them.
        return tf.cond(tf.shape(images)[0] > 0,
                       lambda: tf.cast(model(images, training=False), tf.float32),
                       lambda: tf.zeros((0, num_outputs), tf.float32))

    # One function for the three signatures: the graph is stored once.
    core = tf.function(forward, autograph=False,
                       input_signature=[tf.TensorSpec((None,) + image_size + (3,), tf.float32)])
    functions = _serving_functions(core, int(model.output_shape[-1]), image_size, crop_fraction,
                                   class_names, top_k, max_pixels, softmax, max_batch_size,
                                   max_request_pixels)
    for name, fn in functions.items():
        setattr(module, name, fn)
    signatures = {name: fn.get_concrete_function() for name, fn in functions.items()}

    os.makedirs(export_dir, exist_ok=True)
    # Hidden and non-numeric: TF Serving ignores it until the rename.
    tmp = os.path.join(export_dir, f".tmp-{version}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tf.saved_model.save(module, tmp, signatures=signatures)
        extra = os.path.join(tmp, "assets.extra")
        os.makedirs(extra, exist_ok=True)
        if warmup:
            write_warmup(os.path.join(extra, WARMUP_FILE), image_size)
        with open(os.path.join(extra, METADATA_FILE), "w") as f:
            json.dump({"class_names": [str(c) for c in class_names] if class_names else None,
                       "image_size": list(image_size), "crop_fraction": crop_fraction,
                       "normalization": normalization, "top_k": top_k, "max_pixels": max_pixels,
                       "max_batch_size": max_batch_size, "max_request_pixels": max_request_pixels,
                       "apply_softmax": softmax, "fold_batchnorm": bool(fold_batchnorm),
                       "signatures": list(SIGNATURE_NAMES), "image_formats": list(IMAGE_FORMATS),
                       "tensorflow": tf.__version__}, f, indent=2)
        try:
            os.rename(tmp, path)
        except OSError as e:  # another export took this version meanwhile
            raise ValueError(f"Export version {version} already exists at {path!r}. "
                             f"Received: version={version}") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path
