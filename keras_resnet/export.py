"""Export for production: a SavedModel that TF Serving runs without Python, TFLite, ONNX.

The SavedModel is plain TensorFlow (a `tf.Module` with `tf.function`
signatures; it loads with `tf.saved_model.load` where keras cannot be
imported) and self-contained: decoding, the eval resize/crop
(`preprocessing.eval_resize`, the same function the training pipelines use)
and the model's own in-graph normalisation. Signatures:

    serving_default(image_bytes: string[N])          encoded JPEG/PNG/GIF/BMP/WebP,
                                                     i.e. {"b64": ...} in a REST call
    predict_images(images: float32[N, H, W, 3])      0-255 pixels, any H and W
    predict_images_uint8(images: uint8[N, H, W, 3])

each returning `probabilities` float32[N, C], `classes` int32[N, k], `scores`
float32[N, k] and, when class names are known, `labels` string[N, k].

Bad requests fail that request with InvalidArgument and the server carries on:
bytes that are not one of the accepted formats, variants TensorFlow decodes
wrongly or unsafely (palette/RLE BMP, animated WebP), and images whose headers
announce more than `max_pixels` pixels are rejected from the header, before
any pixel is decoded; corrupt data is rejected by the decoder.

Layout: `export_dir/<version>/` (the numbered layout TF Serving watches) is
written to a hidden temporary directory first and renamed into place, so a
server polling `export_dir` never loads a half-written version.
"""

import functools
import json
import logging
import os
import shutil

import numpy as np
import tensorflow as tf

from keras_resnet.deploy import fold_batchnorm as fold_batchnorm_model
from keras_resnet.deploy import is_foldable_model
from keras_resnet.layers import walk_layers
from keras_resnet.preprocessing import eval_resize, normalization_layer

log = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 40_000_000
FORMATS = ("saved_model", "tflite", "onnx")
# What `serving_default` accepts. JPEG XL, which tf.io.decode_image also
# reads in TF 2.21, is refused: its header is not parsed, so the pixel limit
# could not be enforced before decoding.
IMAGE_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WebP")
TFLITE_QUANTIZATIONS = (None, "dynamic", "float16")
SIGNATURE_NAMES = ("serving_default", "predict_images", "predict_images_uint8")
METADATA_FILE = "keras_resnet_export.json"   # under assets.extra/, ignored by TF Serving
WARMUP_FILE = "tf_serving_warmup_requests"   # under assets.extra/, replayed by TF Serving at load

# Header codes returned by `image_header`.
_UNKNOWN, _JPEG, _PNG, _GIF, _BMP, _WEBP = 0, 1, 2, 3, 4, 5
_UNSUPPORTED = -1  # a known container whose variant is refused (see `image_header`)
# A GIF is a chain of blocks (extensions, frames, data sub-blocks) that must be
# walked to find every frame (see `_gif_pixels`): at most this many steps
# (about 2,000 animation frames), each checking up to _GIF_RUN sub-blocks.
_GIF_MAX_STEPS = 1 << 14
_GIF_RUN = 1024
_PAD = b"\0" * 64


# ============================================================================ request headers
def _bytes(data, start, length):
    """Bytes [start, start + length) of a scalar string as an int64 vector."""
    return tf.cast(tf.io.decode_raw(tf.strings.substr(data, start, length), tf.uint8), tf.int64)


def _le(data, start, length):
    """Little-endian unsigned int at `start`, as int64 (length <= 4, so no overflow)."""
    weights = tf.constant([256 ** i for i in range(length)], tf.int64)
    return tf.reduce_sum(_bytes(data, start, length) * weights)


def _be(data, start, length):
    weights = tf.constant([256 ** (length - 1 - i) for i in range(length)], tf.int64)
    return tf.reduce_sum(_bytes(data, start, length) * weights)


def _area(width, height):
    # float64: two 32-bit header fields can overflow int64 and wrap negative,
    # which would slip under the limit.
    return tf.cast(width, tf.float64) * tf.cast(height, tf.float64)


def _gif_pixels(data, length):
    """Pixels giflib allocates for a GIF: it decodes every frame (`DGifSlurp`)
    before TensorFlow keeps the first, and TF sizes its output by the largest
    frame, not by the logical screen. So walk the block chain and take the max
    of the screen, the largest-frame canvas and the sum of all frame areas.

    Each loop step reads one block header (extension or frame descriptor) or
    advances through a chain of data sub-blocks. Encoders write runs of
    equal-size sub-blocks (255 bytes but the last), so one step checks up to
    `_GIF_RUN` sub-blocks of the current size at once: a 3 MB frame takes a
    few steps. A walk over `_GIF_MAX_STEPS` steps (thousands of frames, or
    crafted tiny sub-blocks) stops and counts as too big (inf).
    """
    raw = tf.cast(tf.io.decode_raw(data, tf.uint8), tf.int32)  # data is padded: header reads stay inside
    n = tf.shape(raw)[0]
    length = tf.cast(length, tf.int32)
    runs = tf.range(1, _GIF_RUN + 1)

    def table_size(packed):  # a colour table follows when bit 7 is set: 3 * 2^(size + 1) bytes
        return tf.where(packed >= 128, 3 * tf.bitwise.left_shift(2, packed % 8), 0)

    def cond(pos, in_chain, total, max_w, max_h, done, steps):
        return tf.logical_not(done) & (pos < length) & (steps < _GIF_MAX_STEPS)

    def body(pos, in_chain, total, max_w, max_h, done, steps):
        b = raw[pos:pos + 10]
        # In a chain: b[0] is a sub-block size, 0 ends the chain. Skip the run
        # of following sub-blocks of the same size in one go.
        size = b[0] + 1
        ahead = pos + size * runs
        same = tf.equal(tf.gather(raw, tf.minimum(ahead, n - 1)), b[0]) & (ahead < length)
        run = tf.where(tf.reduce_all(same), _GIF_RUN, tf.cast(tf.argmin(tf.cast(same, tf.int32)), tf.int32) + 1)
        chain_pos = tf.where(tf.equal(b[0], 0), pos + 1, pos + size * run)
        # Between blocks: 0x21 extension (label byte, then a chain); 0x2C frame
        # (10-byte descriptor, local colour table, LZW code size byte, chain);
        # anything else ends the walk (0x3B trailer, or garbage the decoder rejects).
        is_ext, is_img = tf.equal(b[0], 0x21), tf.equal(b[0], 0x2C)
        frame = tf.logical_not(in_chain) & is_img
        w, h = b[5] + 256 * b[6], b[7] + 256 * b[8]
        block_pos = tf.where(is_ext, pos + 2, pos + 11 + table_size(b[9]))
        return (tf.where(in_chain, chain_pos, block_pos),
                tf.where(in_chain, tf.not_equal(b[0], 0), is_ext | is_img),
                total + tf.where(frame, _area(w, h), tf.constant(0.0, tf.float64)),
                tf.where(frame, tf.maximum(max_w, w), max_w),
                tf.where(frame, tf.maximum(max_h, h), max_h),
                tf.logical_not(in_chain) & tf.logical_not(is_ext | is_img),
                steps + 1)

    zero = tf.constant(0)
    pos, _, total, max_w, max_h, done, _ = tf.while_loop(
        cond, body, (13 + table_size(raw[10]), tf.constant(False), tf.constant(0.0, tf.float64),
                     zero, zero, tf.constant(False), zero))
    screen = _area(raw[6] + 256 * raw[7], raw[8] + 256 * raw[9])
    pixels = tf.reduce_max(tf.stack([screen, _area(max_w, max_h), total]))
    return tf.where(done | (pos >= length), pixels, tf.constant(np.inf, tf.float64))


def _bmp_header(data, length):
    """(code, pixels) of a BMP. TensorFlow's decoder reads the 40-byte
    BITMAPINFOHEADER layout, 24/32-bit pixels and 8-bit pixels as grey levels
    (ignoring the palette): other variants decode wrongly or not at all, so
    they are refused unless the 8-bit palette is the identity grey ramp."""
    header_size = _le(data, 14, 4)
    width = _le(data, 18, 4)
    height = _le(data, 22, 4)
    height = tf.where(height >= 2 ** 31, 2 ** 32 - height, height)  # top-down rows: -height
    bpp = _le(data, 28, 2)
    compression = _le(data, 30, 4)
    colors = _le(data, 46, 4)
    palette_at = 14 + header_size

    def grey_palette():
        palette = tf.reshape(_bytes(data, palette_at, 1024), (256, 4))[:, :3]
        return tf.reduce_all(tf.equal(palette, tf.range(256, dtype=tf.int64)[:, None]))

    is_grey = tf.cond((header_size >= 40) & (palette_at + 1024 <= length) & tf.equal(bpp, 8)
                      & (tf.equal(colors, 0) | tf.equal(colors, 256)),
                      grey_palette, lambda: tf.constant(False))
    true_colour = ((tf.equal(bpp, 24) | tf.equal(bpp, 32))
                   & (tf.equal(compression, 0) | tf.equal(compression, 3)))
    ok = (header_size >= 40) & (true_colour | (is_grey & tf.equal(compression, 0)))
    return tf.where(ok, _BMP, _UNSUPPORTED), _area(width, height)


def _webp_header(data):
    """(code, pixels) of a WebP: VP8 (lossy), VP8L (lossless) or VP8X (extended:
    canvas size). Animated WebP is refused: TF 2.21 cannot decode it to RGB and
    with `channels=0` corrupts its heap on it."""
    chunk = tf.strings.substr(data, 12, 4)
    vp8x = _area(_le(data, 24, 3) + 1, _le(data, 27, 3) + 1)
    bits = _le(data, 21, 4)
    vp8l = _area(bits % 16384 + 1, (bits // 16384) % 16384 + 1)
    vp8 = _area(_le(data, 26, 2) % 16384, _le(data, 28, 2) % 16384)
    animated = tf.equal(chunk, "VP8X") & tf.equal(tf.bitwise.bitwise_and(_le(data, 20, 1), 2), 2)
    known = tf.equal(chunk, "VP8X") | tf.equal(chunk, "VP8L") | tf.equal(chunk, "VP8 ")
    code = tf.where(known & tf.logical_not(animated), _WEBP, tf.where(known, _UNSUPPORTED, _UNKNOWN))
    pixels = tf.where(tf.equal(chunk, "VP8X"), vp8x, tf.where(tf.equal(chunk, "VP8L"), vp8l, vp8))
    return code, pixels


def image_header(data):
    """Format and pixel count of one encoded image, from its header alone.

    JPEG via `tf.image.extract_jpeg_shape` (raises InvalidArgument on a corrupt
    header); PNG (IHDR), GIF (every frame, see `_gif_pixels`), BMP and WebP
    parsed from their bytes. Nothing is decoded.

    Args:
        data: scalar `tf.string`.

    Returns:
        `(code, pixels)`: int32 code (`_JPEG`..`_WEBP`; `_UNKNOWN` = 0 for bytes
        that are none of `IMAGE_FORMATS`, `_UNSUPPORTED` = -1 for refused
        variants) and float64 pixel count (0 when unknown).
    """
    length = tf.cast(tf.strings.length(data), tf.int64)
    raw = data
    # Pad so that parsing a header from a too-short string reads zeros instead
    # of failing in tf.strings.substr (the decoder then rejects the request).
    data = tf.strings.join([data, tf.constant(_PAD)])
    magic = tf.strings.substr(data, 0, 4)
    none = (tf.constant(_UNKNOWN), tf.constant(0.0, tf.float64))

    def jpeg():
        shape = tf.image.extract_jpeg_shape(raw)
        return tf.constant(_JPEG), _area(shape[0], shape[1])

    def png():
        return tf.constant(_PNG), _area(_be(data, 16, 4), _be(data, 20, 4))

    def gif():
        return tf.constant(_GIF), _gif_pixels(data, length)

    def bmp():
        code, pixels = _bmp_header(data, length)
        return tf.cast(code, tf.int32), pixels

    def webp():
        code, pixels = _webp_header(data)
        return tf.cast(code, tf.int32), pixels

    # The same signatures tf.io.decode_image dispatches on.
    is_jpeg = tf.equal(tf.strings.substr(data, 0, 3), b"\xff\xd8\xff")
    is_png = tf.equal(tf.strings.substr(data, 0, 8), b"\x89PNG\r\n\x1a\n") & (length >= 24)
    is_gif = tf.equal(tf.strings.substr(data, 0, 3), b"GIF") & (length >= 13)
    is_bmp = tf.equal(tf.strings.substr(data, 0, 2), b"BM") & (length >= 54)
    is_webp = tf.equal(magic, b"RIFF") & tf.equal(tf.strings.substr(data, 8, 4), b"WEBP") & (length >= 30)
    return tf.case([(is_jpeg, jpeg), (is_png, png), (is_gif, gif), (is_bmp, bmp), (is_webp, webp)],
                   default=lambda: none)


def header_pixels(data):
    """Pixel count announced by an image header (float64), without decoding; -1
    for bytes that are not an accepted format or a refused variant."""
    code, pixels = image_header(data)
    return tf.where(code > 0, pixels, tf.constant(-1.0, tf.float64))


# ============================================================================ decode + resize
def _resize(images, image_size, crop_fraction):
    """`eval_resize`, skipping the resample at run time when a plain resize would
    be the identity (eval_resize only knows static shapes; requests have none)."""
    if crop_fraction is not None and crop_fraction < 1.0:
        return eval_resize(images, image_size, crop_fraction)
    height, width = image_size
    shape = tf.shape(images)
    same = tf.equal(shape[-3], height) & tf.equal(shape[-2], width)
    out = tf.cond(same, lambda: tf.cast(images, tf.float32),
                  lambda: eval_resize(images, image_size, crop_fraction))
    out.set_shape(images.shape[:-3].concatenate([height, width, images.shape[-1]]))
    return out


def decode_image(data, image_size, crop_fraction=None, max_pixels=DEFAULT_MAX_PIXELS, index=0):
    """Encoded bytes -> float32 RGB image on a 0-255 scale, eval-resized.

    The header is checked first (format, variant, `max_pixels`); only then is
    the image decoded: grayscale expanded to RGB, alpha dropped (not
    composited), 16-bit PNG reduced to 8 bits (libpng keeps the high byte),
    CMYK/YCCK JPEG converted to RGB by libjpeg, GIF's first frame.

    Raises (at run time):
        InvalidArgumentError: not an accepted format, a refused variant, over
            `max_pixels`, or corrupt data.
    """
    code, pixels = image_header(data)
    checks = [
        tf.debugging.Assert(tf.not_equal(code, _UNKNOWN), [tf.strings.format(
            "image_bytes[{}] is not a JPEG, PNG, GIF, BMP or WebP image", index)]),
        tf.debugging.Assert(tf.not_equal(code, _UNSUPPORTED), [tf.strings.format(
            "image_bytes[{}] is an unsupported variant (palette, RLE or 16-bit BMP; animated WebP): "
            "convert it to PNG or JPEG", index)]),
        tf.debugging.Assert(pixels <= float(max_pixels), [tf.strings.join([
            "image_bytes[", tf.strings.as_string(index), "] has ", tf.strings.as_string(pixels, precision=0),
            f" pixels, more than max_pixels={max_pixels}: rejected before decoding"])]),
    ]
    with tf.control_dependencies(checks):
        image = tf.io.decode_image(data, channels=3, expand_animations=False, dtype=tf.uint8)
    image.set_shape((None, None, 3))
    return _resize(image, tuple(image_size), crop_fraction)


# ============================================================================ the model
def _has_input_normalization(model):
    import keras

    return any(isinstance(layer, (keras.layers.Normalization, keras.layers.Rescaling))
               for layer in walk_layers(model))


def _outputs_probabilities(model):
    """True when the model already ends in softmax/sigmoid, False for logits."""
    last = model.layers[-1]
    import keras

    if isinstance(last, keras.layers.Softmax):
        return True
    name = getattr(getattr(last, "activation", None), "__name__", None)
    if name in ("softmax", "sigmoid"):
        return True
    if name == "linear":
        return False
    log.warning("Cannot tell whether %s outputs probabilities (last layer %r); exporting its "
                "outputs as they are. Pass apply_softmax=True if they are logits.", model.name, last.name)
    return True


def _with_normalization(model, normalization):
    """`model` with a float32 Normalization in front (for models trained on
    normalised inputs without one inside), or `model` itself."""
    import keras

    if normalization is None:
        return model
    if _has_input_normalization(model):
        raise ValueError(
            "The model already normalises its inputs (it has a Normalization or Rescaling layer), "
            f"so exporting with another would normalise twice. Received: normalization={normalization!r}")
    norm = normalization_layer(normalization, name="export_normalization")
    inputs = keras.Input(model.input_shape[1:], name="image")
    return keras.Model(inputs, model(norm(inputs)), name=model.name)


def _float32_copy(model):
    """The same model computing in float32 (TFLite cannot convert mixed-precision graphs)."""
    import keras

    if all(layer.dtype_policy.compute_dtype == "float32" for layer in walk_layers(model)
           if hasattr(layer, "dtype_policy")):
        return model
    config = model.get_config()
    for layer in config.get("layers", []):  # drop the per-layer mixed policies
        layer.get("config", {}).pop("dtype", None)
    previous = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        copy = model.__class__.from_config(config)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    copy.set_weights(model.get_weights())
    return copy


def _folded_if_possible(model):
    """`keras_resnet.deploy.fold_batchnorm(model)` where it applies (functional models), else `model`."""
    return fold_batchnorm_model(model) if is_foldable_model(model) else model


def _resolve_fold(fold_batchnorm, model):
    """`"auto"` folds every model that has BatchNorm (`keras_resnet.deploy.fold_batchnorm`)."""
    import keras

    if fold_batchnorm == "auto":
        return is_foldable_model(model) and any(
            isinstance(layer, keras.layers.BatchNormalization) for layer in walk_layers(model))
    if not isinstance(fold_batchnorm, bool):
        raise ValueError("`fold_batchnorm` must be True, False or 'auto'. "
                         f"Received: fold_batchnorm={fold_batchnorm!r}")
    return fold_batchnorm


def _serving_functions(core, num_classes, image_size, crop_fraction, class_names, top_k, max_pixels,
                       softmax):
    """The three signature functions around `core` (float32 [N, h, w, 3] -> scores)."""
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
        # Per image: sizes differ until eval_resize has run.
        images = tf.map_fn(lambda args: decode_image(args[0], size, crop_fraction, max_pixels, args[1]),
                           (image_bytes, tf.range(n)),
                           fn_output_signature=tf.TensorSpec(size + (3,), tf.float32))
        return outputs(images)

    def predict_images(images):
        return outputs(_resize(images, size, crop_fraction))

    def predict_images_uint8(images):
        return outputs(_resize(tf.cast(images, tf.float32), size, crop_fraction))

    return {
        "serving_default": tf.function(serve, autograph=False, input_signature=[
            tf.TensorSpec([None], tf.string, name="image_bytes")]),
        "predict_images": tf.function(predict_images, autograph=False, input_signature=[
            tf.TensorSpec([None, None, None, 3], tf.float32, name="images")]),
        "predict_images_uint8": tf.function(predict_images_uint8, autograph=False, input_signature=[
            tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")]),
    }


# ============================================================================ TF Serving warmup
def _proto_field(number, payload):
    """One length-delimited protobuf field (wire type 2)."""
    def varint(n):
        out = bytearray()
        while True:
            byte, n = n & 0x7F, n >> 7
            out.append(byte | (0x80 if n else 0))
            if not n:
                return bytes(out)
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def warmup_record(image_bytes, signature_name="serving_default", input_name="image_bytes"):
    """A serialized `tensorflow.serving.PredictionLog` holding one Predict request.

    Written by hand (field numbers from tensorflow_serving/apis/*.proto:
    PredictionLog.predict_log=6, PredictLog.request=1, PredictRequest.model_spec=1
    and inputs=2, ModelSpec.signature_name=3) so exporting needs no
    tensorflow-serving-api; the tests parse it with the real protos when installed.
    """
    tensor = tf.make_tensor_proto(np.array(list(image_bytes), dtype=object)).SerializeToString()
    spec = _proto_field(3, signature_name.encode())
    entry = _proto_field(1, input_name.encode()) + _proto_field(2, tensor)
    request = _proto_field(1, spec) + _proto_field(2, entry)
    return _proto_field(6, _proto_field(1, request))


def _write_warmup(path, image_size):
    # A mid-grey PNG at the model's size: runs decode, the resize branch
    # selection and the model once, so the first real request is not slow.
    png = tf.io.encode_png(tf.fill(tuple(image_size) + (3,), tf.constant(128, tf.uint8))).numpy()
    with tf.io.TFRecordWriter(path) as writer:
        writer.write(warmup_record([png]))


# ============================================================================ public API
def _next_version(export_dir):
    existing = [int(d) for d in os.listdir(export_dir) if d.isdigit()] if os.path.isdir(export_dir) else []
    return max(existing, default=0) + 1


def _check_image_size(image_size, model):
    size = image_size if image_size is not None else tuple(model.input_shape[1:3])
    try:
        size = tuple(size)
    except TypeError:
        size = (size,)
    if len(size) != 2 or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0
                                 for s in size):
        raise ValueError("`image_size` must be (height, width) with positive ints; the model input "
                         f"{model.input_shape} does not fix it. Received: image_size={image_size!r}")
    return tuple(int(s) for s in size)


def _check_args(model, class_names, top_k, max_pixels, crop_fraction):
    if len(model.output_shape) != 2:
        raise ValueError("The model must output class scores [batch, num_classes] (include_top=True). "
                         f"Received: model.output_shape={model.output_shape}")
    if class_names is not None and len(class_names) != model.output_shape[-1]:
        raise ValueError(f"`class_names` has {len(class_names)} entries but the model has "
                         f"{model.output_shape[-1]} outputs. Received: class_names={list(class_names)[:5]}...")
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
        raise ValueError(f"`top_k` must be a positive int. Received: top_k={top_k!r}")
    if not isinstance(max_pixels, int) or isinstance(max_pixels, bool) or max_pixels < 1:
        raise ValueError(f"`max_pixels` must be a positive int. Received: max_pixels={max_pixels!r}")
    if crop_fraction is not None and not (isinstance(crop_fraction, (int, float)) and 0 < crop_fraction <= 1):
        raise ValueError(f"`crop_fraction` must be None or in (0, 1]. Received: crop_fraction={crop_fraction!r}")


def export_saved_model(model, export_dir, *, version=None, class_names=None, image_size=None,
                       crop_fraction=None, normalization=None, top_k=5, max_pixels=DEFAULT_MAX_PIXELS,
                       apply_softmax=None, fold_batchnorm="auto", warmup=True):
    """Writes the serving SavedModel to `export_dir/<version>/`; returns that path.

    See `export` for the arguments.
    """
    _check_args(model, class_names, top_k, max_pixels, crop_fraction)
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
                                   class_names, top_k, max_pixels, softmax)
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
            _write_warmup(os.path.join(extra, WARMUP_FILE), image_size)
        with open(os.path.join(extra, METADATA_FILE), "w") as f:
            json.dump({"class_names": [str(c) for c in class_names] if class_names else None,
                       "image_size": list(image_size), "crop_fraction": crop_fraction,
                       "normalization": normalization, "top_k": top_k, "max_pixels": max_pixels,
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


def _tensor_savedmodel(model, path, image_size):
    """A minimal SavedModel: `serve(images: float32[None, h, w, 3]) -> probabilities`.

    Written with keras's ExportArchive: the TFLite converter turns a plain
    `tf.Module` holding Keras 3 variables into a model that outputs NaN (TF 2.21).
    """
    import keras

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serve", lambda images: {"probabilities": tf.cast(model(images, training=False), tf.float32)},
        input_signature=[tf.TensorSpec((None,) + tuple(image_size) + (3,), tf.float32, name="images")])
    archive.write_out(path, verbose=False)


def _with_softmax(model, softmax):
    import keras

    if not softmax:
        return model
    return keras.Model(model.inputs, keras.layers.Softmax(dtype="float32")(model.outputs[0]), name=model.name)


def export_tflite(model, path, *, image_size=None, quantize=None, normalization=None, apply_softmax=None):
    """TFLite file: input `images` float32 [N, H, W, 3] at the model's size, 0-255
    pixels, normalisation inside; output `probabilities` [N, C].

    Decoding and the eval resize/crop are the app's job: the antialiased
    resize (`ScaleAndTranslate`) is not a TFLite builtin op.

    Args:
        quantize: `None` (float32), `"dynamic"` (int8 weights, float
            activations: ~4x smaller) or `"float16"` (half-size weights).
    """
    if quantize not in TFLITE_QUANTIZATIONS:
        raise ValueError(f"Unknown quantization. Received: quantize={quantize!r}. "
                         f"Valid: {TFLITE_QUANTIZATIONS}")
    import tempfile

    image_size = _check_image_size(image_size, model)
    softmax = (not _outputs_probabilities(model)) if apply_softmax is None else bool(apply_softmax)
    model = _with_softmax(_with_normalization(_folded_if_possible(_float32_copy(model)), normalization),
                          softmax)
    # Convert from a SavedModel: converting a concrete function that captures
    # Keras 3 variables directly yields NaN outputs (seen with TF 2.21).
    with tempfile.TemporaryDirectory() as tmp:
        _tensor_savedmodel(model, tmp, image_size)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp, signature_keys=["serve"])
        if quantize:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            if quantize == "float16":
                converter.target_spec.supported_types = [tf.float16]
        data = converter.convert()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return path


def export_onnx(model, path, *, image_size=None, opset=17, normalization=None, apply_softmax=None):
    """ONNX via tf2onnx: input `images` float32 [N, H, W, 3] at the model's size,
    0-255 pixels, normalisation inside; output `probabilities` [N, C].

    Converts a frozen SavedModel signature with `tf2onnx.convert.from_graph_def`:
    `from_function` on a Keras 3 model leaves captured constants (the
    Normalization statistics) as extra ONNX inputs.
    """
    try:
        import tf2onnx
    except ImportError as e:
        raise ValueError("ONNX export needs tf2onnx: pip install 'keras-resnet-zoo[export]'") from e
    import tempfile

    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    image_size = _check_image_size(image_size, model)
    softmax = (not _outputs_probabilities(model)) if apply_softmax is None else bool(apply_softmax)
    model = _with_softmax(_with_normalization(_folded_if_possible(_float32_copy(model)), normalization),
                          softmax)
    with tempfile.TemporaryDirectory() as tmp:
        _tensor_savedmodel(model, tmp, image_size)
        loaded = tf.saved_model.load(tmp)  # keep a reference: the signature needs its variables
        frozen = convert_variables_to_constants_v2(loaded.signatures["serve"])
        inputs = [t.name for t in frozen.inputs if t.dtype != tf.resource]
        outputs = [t.name for t in frozen.outputs]
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        model_proto, _ = tf2onnx.convert.from_graph_def(
            frozen.graph.as_graph_def(), input_names=inputs, output_names=outputs, opset=opset)
    # Friendly graph names (the TF ones are "serve_images:0" / "Identity:0").
    import onnx

    renames = {inputs[0]: "images", outputs[0]: "probabilities"}
    for value in list(model_proto.graph.input) + list(model_proto.graph.output):
        value.name = renames.get(value.name, value.name)
    for node in model_proto.graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    onnx.save(model_proto, path)
    return path


def export(model, export_dir, *, version=None, class_names=None, image_size=None, crop_fraction=None,
           normalization=None, top_k=5, max_pixels=DEFAULT_MAX_PIXELS, formats=("saved_model",),
           apply_softmax=None, fold_batchnorm="auto", warmup=True, tflite_quantize=("dynamic",)):
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
    _check_args(model, class_names, top_k, max_pixels, crop_fraction)
    image_size = _check_image_size(image_size, model)
    paths = {}
    if "saved_model" in formats:
        paths["saved_model"] = export_saved_model(
            model, export_dir, version=version, class_names=class_names, image_size=image_size,
            crop_fraction=crop_fraction, normalization=normalization, top_k=top_k, max_pixels=max_pixels,
            apply_softmax=apply_softmax, fold_batchnorm=fold_batchnorm, warmup=warmup)
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
    model = keras.saving.load_model(model_path, compile=False)
    kwargs.setdefault("class_names", data.get("class_names"))
    kwargs.setdefault("crop_fraction", data.get("crop_fraction"))
    if data.get("image_size") and None in tuple(model.input_shape[1:3]):
        kwargs.setdefault("image_size", tuple(data["image_size"]))
    return export(model, output, formats=format, **kwargs)
