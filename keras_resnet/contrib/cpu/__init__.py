"""Opt-in CPU speed-up: training-mode BatchNorm + ReLU as one compiled kernel.

    from keras_resnet.contrib import cpu
    model = keras_resnet.create_model("resnet9_half", num_classes=10)
    print(cpu.accelerate(model))     # "accelerated 8 BatchNorm+ReLU pairs" or why not
    model.compile(...); model.fit(...)

or `keras-resnet train ... --cpu-kernels`.

What it does: in a training step on CPU, TensorFlow runs BatchNorm and the ReLU
after it as two ops forward and two backward, each a full pass over memory.
`batchnorm_act.cc` does each direction in one op (float32, or bfloat16 in and
out with float32 statistics under `mixed_bfloat16`). `accelerate(model)` routes
every BatchNorm that feeds exactly one ReLU through it, in that model object
only: the BatchNorm applies the ReLU itself and the ReLU layer passes its input
through. The model's config and weights do not change, so `model.save`, a
reloaded model, `keras_resnet.deploy.fold_batchnorm` and every export are the
plain model; in inference (`training=False`) the BatchNorm runs TensorFlow's op
followed by `tf.nn.relu`, so an export of an accelerated model is an export of
the plain one. It is never used on a GPU/TPU, under XLA (`jit_compile=True`),
or for dtypes other than float32/bfloat16: there the plain call runs.

The kernel is compiled on first use and cached under `build.default_cache_dir()`
with the checks `keras_resnet.contrib.cpu.build` lists. When it cannot be used
(no compiler, not Linux, an unsafe cache) `accelerate` changes nothing and
returns the one-line reason.

The core library never imports this package.
"""

import logging
import threading
import types

import keras

from keras_resnet.contrib.cpu import build

_LOG = logging.getLogger("keras_resnet")
_STATE = {"module": None, "reason": None, "tried": False}
_LOCK = threading.Lock()
DTYPES = ("float32", "bfloat16")


def load(cache_dir=None):
    """The compiled op module, or None (then `unavailable_reason()` says why)."""
    with _LOCK:
        if _STATE["tried"]:
            return _STATE["module"]
        import tensorflow as tf

        module = None
        try:
            path, reason = build.build_or_find(tf, cache_dir, log=_LOG.info)
            if path is not None:
                module = tf.load_op_library(str(path))
                _register_gradient(tf, module)
        except Exception as e:  # a broken toolchain must never stop training
            module, reason = None, f"{type(e).__name__}: {e}"
        _STATE.update(module=module, reason=reason, tried=True)
        return module


def unavailable_reason():
    return _STATE["reason"]


def _register_gradient(tf, module):
    @tf.RegisterGradient("KerasResnetBatchNormAct")
    def _batchnorm_act_grad(op, dy, unused_dmean, unused_dvariance):
        attrs = {name: op.get_attr(name) for name in ("epsilon", "has_residual", "relu")}
        dx, d_residual, d_gamma, d_beta = module.keras_resnet_batch_norm_act_grad(
            dy, op.inputs[0], op.outputs[0], op.inputs[2], op.outputs[1], op.outputs[2], **attrs)
        return dx, (d_residual if attrs["has_residual"] else None), d_gamma, d_beta


def batchnorm_relu(x, gamma, beta, epsilon):
    """`relu(batchnorm(x))` with batch statistics as one op: `(y, mean, biased variance)`."""
    import tensorflow as tf

    return load().keras_resnet_batch_norm_act(
        x, tf.zeros([0], x.dtype), gamma, beta, epsilon=float(epsilon), has_residual=False, relu=True)


def _on_cpu_only():
    import tensorflow as tf

    return not any(tf.config.list_logical_devices(kind) for kind in ("GPU", "TPU"))


def _fused_training_call(bn, inputs, training):
    """The accelerated BatchNorm's training step, or None when the kernel does not apply."""
    import tensorflow as tf

    if not (training and bn.trainable and bn.scale and bn.center and not bn.synchronized
            and len(inputs.shape) == 4 and bn.axis in (-1, 3)
            and keras.backend.standardize_dtype(inputs.dtype) in DTYPES):
        return None
    y, mean, variance = batchnorm_relu(inputs, tf.cast(bn.gamma, tf.float32),
                                       tf.cast(bn.beta, tf.float32), bn.epsilon)
    # The moving variance takes the unbiased batch variance, as TensorFlow's fused
    # BatchNorm (the plain training path of FusedBatchNormalization) does.
    count = tf.cast(tf.reduce_prod(tf.shape(inputs)[:-1]), tf.float32)
    variance = variance * count / tf.maximum(count - 1.0, 1.0)
    decay = tf.cast(bn.momentum, tf.float32)
    bn.moving_mean.assign(tf.cast(
        tf.cast(bn.moving_mean, tf.float32) * decay + mean * (1.0 - decay), bn.moving_mean.dtype))
    bn.moving_variance.assign(tf.cast(
        tf.cast(bn.moving_variance, tf.float32) * decay + variance * (1.0 - decay),
        bn.moving_variance.dtype))
    return tf.cast(y, bn.compute_dtype)


def _accelerate_pair(bn, relu):
    """BatchNorm `bn` applies the ReLU (fused in training, `tf.nn.relu` otherwise);
    `relu` passes its input through. Both changes live on these two objects only."""
    import tensorflow as tf

    plain_call = type(bn).call

    def call(self, inputs, training=None, mask=None):
        y = _fused_training_call(self, inputs, training)
        if y is None:
            y = tf.nn.relu(plain_call(self, inputs, training=training, mask=mask))
        return y

    def passthrough(self, inputs):
        return inputs

    bn.call = types.MethodType(call, bn)
    relu.call = types.MethodType(passthrough, relu)
    bn._keras_resnet_accelerated = relu._keras_resnet_accelerated = True


def _is_plain_relu(layer):
    if isinstance(layer, keras.layers.ReLU):
        return (layer.max_value is None and float(layer.negative_slope) == 0.0
                and float(layer.threshold) == 0.0)
    if isinstance(layer, keras.layers.Activation):
        return getattr(layer.activation, "__name__", None) == "relu"
    return False


def _block_pairs(block):
    """(BatchNorm, ReLU) pairs a keras_resnet block's `call` applies back to back."""
    pairs = []
    for bn_name, relu_name in (("_bn1", "_relu1"), ("_bn2", "_relu2"), ("_bn3", "_relu3"),
                               ("_bn0", "_relu0")):
        bn, relu = getattr(block, bn_name, None), getattr(block, relu_name, None)
        if isinstance(bn, keras.layers.BatchNormalization) and relu is not None and _is_plain_relu(relu):
            pairs.append((bn, relu))
    return pairs


def _graph_pairs(model):
    """(BatchNorm, ReLU) pairs of a functional model's own graph: each called
    once, the BatchNorm's output read only by that ReLU and not a model output.
    With a nested model at the top level nothing is paired (what it reads of the
    outer graph is not visible from outside)."""
    from keras_resnet import compat

    operations = model.operations
    if any(isinstance(op, keras.Model) for op in operations):
        return []
    readers = {}
    for op in operations:
        try:
            inputs = keras.tree.flatten(op.input)
        except (AttributeError, ValueError, TypeError):  # never called
            inputs = []
        for tensor in inputs:
            readers.setdefault(id(tensor), []).append(op)
    for tensor in keras.tree.flatten(model.outputs):
        readers.setdefault(id(tensor), []).append(None)
    pairs = []
    for layer in operations:
        if not isinstance(layer, keras.layers.BatchNormalization) or compat.call_count(layer) != 1:
            continue
        after = readers.get(id(layer.output), [])
        if len(after) == 1 and after[0] is not None and _is_plain_relu(after[0]) \
                and compat.call_count(after[0]) == 1:
            pairs.append((layer, after[0]))
    return pairs


def accelerate(model, cache_dir=None):
    """Routes `model`'s BatchNorm+ReLU pairs through the compiled kernel, in place.

    Args:
        model: a functional keras_resnet model (blocks and top-level layers are
            both covered; nested models are left alone).
        cache_dir: where the compiled library is cached (default
            `build.default_cache_dir()`).

    Returns:
        A one-line status: how many pairs were accelerated, or why none were.
    """
    from keras_resnet.layers import ResidualBlock

    if keras.backend.backend() != "tensorflow":
        return f"not used: the {keras.backend.backend()} backend (the kernel is a TensorFlow op)"
    if not _on_cpu_only():
        return "not used: a GPU or TPU is visible (the kernel is CPU-only)"
    if not (isinstance(model, keras.Model) and not isinstance(model, keras.Sequential)
            and getattr(model, "operations", None) and getattr(model, "inputs", None)):
        raise ValueError("accelerate() takes a functional keras_resnet model. "
                         f"Received: model={type(model).__name__}")
    if getattr(model, "jit_compile", False) is True:
        return "not used: the model is compiled with jit_compile=True (XLA cannot run custom ops)"
    if load(cache_dir) is None:
        reason = f"unavailable: {unavailable_reason()}"
        _LOG.warning("keras_resnet.contrib.cpu: %s; training on TensorFlow's ops.", reason)
        return reason
    pairs = _graph_pairs(model)
    for layer in model.layers:
        if isinstance(layer, ResidualBlock):
            pairs += _block_pairs(layer)
    pairs = [(bn, relu) for bn, relu in pairs if not getattr(bn, "_keras_resnet_accelerated", False)]
    # The kernel learns gamma and beta: BatchNorms without them keep TensorFlow's op.
    pairs = [(bn, relu) for bn, relu in pairs if bn.scale and bn.center]
    for bn, relu in pairs:
        _accelerate_pair(bn, relu)
    if getattr(model, "train_function", None) is not None:
        model.make_train_function(force=True)
    return f"accelerated {len(pairs)} BatchNorm+ReLU pairs"
