"""TFLite and ONNX files: a float32 tensor-in, probabilities-out model.

Input `images` float32 [N, H, W, 3] at the model's size, 0-255 pixels,
normalisation inside; output `probabilities` [N, C]. Decoding and the eval
resize/crop are the app's job (the antialiased resize is not a TFLite builtin).
"""

import os

import tensorflow as tf

from keras_resnet import compat
from keras_resnet.atomic import atomic_save, write_bytes_atomic
from keras_resnet.export.common import (
    _check_image_size, _float32_copy, _folded_if_possible, _outputs_probabilities, _with_normalization,
    _with_softmax)

TFLITE_QUANTIZATIONS = (None, "dynamic", "float16")


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


def _portable_model(model, image_size, normalization, apply_softmax):
    """`(model, image_size)` as both formats export it: float32, BatchNorm folded,
    normalisation in front and softmax behind when asked (or when it outputs logits)."""
    image_size = _check_image_size(image_size, model)
    softmax = (not _outputs_probabilities(model)) if apply_softmax is None else bool(apply_softmax)
    model = _with_softmax(_with_normalization(_folded_if_possible(_float32_copy(model)), normalization),
                          softmax)
    return model, image_size


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

    model, image_size = _portable_model(model, image_size, normalization, apply_softmax)
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
    write_bytes_atomic(path, data)
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

    model, image_size = _portable_model(model, image_size, normalization, apply_softmax)
    with tempfile.TemporaryDirectory() as tmp:
        _tensor_savedmodel(model, tmp, image_size)
        loaded = tf.saved_model.load(tmp)  # keep a reference: the signature needs its variables
        frozen = compat.freeze_concrete_function(loaded.signatures["serve"])
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
    atomic_save(lambda tmp: onnx.save(model_proto, tmp), path)
    return path
