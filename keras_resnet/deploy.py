"""The deploy transform: a model for inference, every BatchNorm folded into its convolution.

At inference a BatchNorm that directly follows a convolution is an affine map
per channel, `y * scale + shift`, so it can live inside the convolution:
`kernel * scale` and `bias * scale + shift`. `fold_batchnorm(model)` returns a
clone that does exactly that, computed once from the weights. The exported
SavedModel, TFLite and ONNX files and in-process evaluation and prediction
(`keras-resnet evaluate / predict`, `training.evaluate_model`) all run this
clone: TensorFlow then fuses each Conv2D + BiasAdd (+ Add) (+ ReLU) into one
kernel in float32 and bfloat16 alike.

BatchNorms that do not follow a convolution (pre-activation BatchNorms,
ResNet-9's BatchNorm after a max-pool) stay as inference BatchNorms.
"""

import keras
import numpy as np

from keras_resnet import compat
from keras_resnet import layers as blocks


def _flat_inputs(operation):
    try:
        return keras.tree.flatten(operation.input)
    except (AttributeError, ValueError, TypeError):  # never called
        return []


def _foldable(conv, bn):
    return (isinstance(conv, keras.layers.Conv2D) and isinstance(bn, keras.layers.BatchNormalization)
            and conv.data_format == "channels_last" and bn.axis in (-1, 3)
            and conv.activation in (None, keras.activations.linear)
            and compat.call_count(conv) == 1 and compat.call_count(bn) == 1)


def _functional_pairs(model):
    """`{conv name: bn name}` for top-level BatchNorms fed by a convolution whose
    output nothing else reads (no other layer or op, and not a model output).
    With a nested model at the top level nothing is paired: what it reads of the
    outer graph is not visible from outside."""
    operations = model.operations
    if any(isinstance(op, keras.Model) for op in operations):
        return {}
    readers = {}
    for op in operations:
        for tensor in _flat_inputs(op):
            readers.setdefault(id(tensor), []).append(op)
    for tensor in keras.tree.flatten(model.outputs):
        readers.setdefault(id(tensor), []).append(None)
    pairs = {}
    for layer in operations:
        if not isinstance(layer, keras.layers.Conv2D) or compat.call_count(layer) != 1:
            continue
        following = readers.get(id(layer.output), [])
        if len(following) == 1 and following[0] is not None and _foldable(layer, following[0]):
            pairs[layer.name] = following[0].name
    return pairs


def is_foldable_model(model):
    """Whether `fold_batchnorm` can rebuild `model`: a functional model (not
    Sequential, not subclassed)."""
    return (isinstance(model, keras.Model) and not isinstance(model, keras.Sequential)
            and bool(getattr(model, "operations", None)) and bool(getattr(model, "inputs", None)))


def folded_weights(conv, bn):
    """`(kernel, bias)` of `conv` with `bn`'s inference transform folded in (float32)."""
    def value(name, default):
        weight = getattr(bn, name, None)
        return np.asarray(keras.ops.convert_to_numpy(weight), np.float64) if weight is not None else default

    channels = conv.filters
    gamma = value("gamma", np.ones(channels))
    beta = value("beta", np.zeros(channels))
    mean = value("moving_mean", np.zeros(channels))
    variance = value("moving_variance", np.ones(channels))
    scale = gamma / np.sqrt(variance + bn.epsilon)
    kernel = np.asarray(keras.ops.convert_to_numpy(conv.kernel), np.float64) * scale
    bias = np.asarray(keras.ops.convert_to_numpy(conv.bias), np.float64) if conv.use_bias else 0.0
    return kernel.astype(np.float32), ((bias - mean) * scale + beta).astype(np.float32)


def fold_batchnorm(model):
    """A clone of `model` for inference, every BatchNorm that directly follows a
    convolution folded into it (the convolution gains a bias).

    The clone computes what `model(x, training=False)` computes, to float
    rounding, under the same dtype policies; it shares no weights with `model`,
    so later training of `model` does not change it. Works for keras_resnet
    models (blocks are rebuilt with `normalization="folded"`) and for any
    functional Keras model (a top-level Conv2D -> BatchNormalization pair whose
    convolution feeds nothing else).

    Args:
        model: A functional `keras.Model`.

    Returns:
        A new functional `keras.Model` with the same inputs and outputs.
    """
    if not is_foldable_model(model):
        raise ValueError("`fold_batchnorm` rebuilds functional Keras models (keras_resnet's, or built "
                         "with keras.Model(inputs, outputs)); Sequential and subclassed models are "
                         f"not supported. Received: model={model!r}")
    pairs = _functional_pairs(model)
    folded_bns = set(pairs.values())

    def clone(layer):
        config = layer.get_config()
        if isinstance(layer, blocks.ResidualBlock) and layer.normalization == "batch":
            return layer.__class__.from_config({**config, "normalization": "folded"})
        if layer.name in pairs:
            return layer.__class__.from_config({**config, "use_bias": True})
        return layer.__class__.from_config(config)

    def call(layer, *args, **kwargs):
        # A folded BatchNorm leaves the graph: its input goes straight on.
        return args[0] if layer.name in folded_bns else layer(*args, **kwargs)

    folded = keras.models.clone_model(model, clone_function=clone, call_function=call)
    originals = {layer.name: layer for layer in model.layers}
    for layer in folded.layers:
        source = originals.get(layer.name)
        if source is None:
            continue
        if layer.name in pairs:
            layer.set_weights(folded_weights(source, originals[pairs[layer.name]]))
        elif isinstance(source, blocks.ResidualBlock):
            _copy_block(source, layer)
        elif layer.name not in folded_bns and source.weights:
            layer.set_weights(source.get_weights())
    return folded


def _copy_block(source, target):
    """Copies a block's weights into its folded twin, folding each conv + BatchNorm pair."""
    if source.normalization != "batch":
        target.set_weights(source.get_weights())
        return
    pairs = source.conv_norm_pairs()
    done = {conv.name for conv, _ in pairs} | {bn.name for _, bn in pairs}
    for conv, bn in pairs:
        target.get_layer(conv.name).set_weights(folded_weights(conv, bn))
    for layer in source.sublayers():
        # A squeeze-and-excitation gate's weights are its convs', which follow it.
        if layer.weights and layer.name not in done and not isinstance(layer, blocks.SqueezeExcite):
            target.get_layer(layer.name).set_weights(layer.get_weights())
