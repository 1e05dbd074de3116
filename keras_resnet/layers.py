"""Residual blocks as Keras layers.

Every block is a `keras.layers.Layer` whose residual sum is a `keras.layers.Add()`
and which owns its shortcut. Sub-layer names follow keras.applications
(`conv2_block1_1_conv`, `conv2_block1_0_bn`, ...), so weights map one to one.

Glossary of shortcuts (`shortcut=`):
    identity:   x itself; only valid when the block keeps shape.
    projection: 1x1 conv (+ BatchNorm in post-activation blocks), strided when
                the block downsamples (He et al. 2015, option B).
    zero_pad:   strided identity whose extra channels are zeros (option A, the
                CIFAR experiments of He et al. 2015); no parameters.
    avg_pool:   2x2 average pool then 1x1 conv + BN (ResNet-D, He et al. 2019).
    subsample:  strided identity (1x1 max-pool) when only the resolution
                changes; the keras.applications ResNetV2 layout.
    auto:       identity when shape is kept, projection otherwise.
"""

import contextlib
import threading

import keras
from keras import layers, ops

SHORTCUTS = ("auto", "identity", "projection", "zero_pad", "avg_pool", "subsample")
_PACKAGE = "keras_resnet"


def _check_choice(argument, value, choices):
    if value not in choices:
        raise ValueError(
            f"Invalid `{argument}`. Received: {argument}={value!r}. "
            f"Valid choices are {', '.join(repr(c) for c in choices)}."
        )


@keras.saving.register_keras_serializable(package=_PACKAGE)
class FusedBatchNormalization(layers.BatchNormalization):
    """`keras.layers.BatchNormalization` computed by TensorFlow's fused kernel.

    Same weights, config and semantics (`trainable=False` runs in inference
    mode; `momentum` and `epsilon` as in Keras), but on the TensorFlow backend
    a channels-last 4-D input runs through one `FusedBatchNormV3` op (oneDNN on
    CPU, cuDNN on GPU) instead of Keras 3's moments + `batch_normalization`
    composition. Under mixed precision that also drops the float32 round trip
    Keras makes around every BatchNorm (the fused kernel keeps its statistics
    in float32 internally). Measured on ResNet-50 training (2-core AVX512/AMX
    CPU, benchmarks/ablate_resnet50.py), BatchNorm was 43% of the float32 step
    and 70% of the bfloat16 step.

    Falls back to the Keras implementation for anything else (other backends,
    other ranks or axes, masks, renorm, synchronized statistics). The moving
    variance is updated with the batch's unbiased variance, as the fused kernel
    (and Keras 2) does; Keras 3 uses the biased one: a relative difference of
    1/(N*H*W - 1).
    """

    def __init__(self, fused_inference=True, **kwargs):
        super().__init__(**kwargs)
        # After a biased convolution (the keras.applications layout) TF fuses
        # Conv2D+BiasAdd with Keras's inference BatchNorm better than with a
        # FusedBatchNormV3 in float32: ResNet-50 v1 inference 4% faster unfused,
        # while the bias-free v1.5 layout is 13% faster fused, and under mixed
        # precision fused wins for both (1.33x). Training is fused either way.
        # Inside residual blocks `conv_then_batchnorm` removes the bias add
        # instead, so this flag only matters where a biased conv feeds the
        # BatchNorm outside a block (the v1 stem).
        self.fused_inference = bool(fused_inference)

    def get_config(self):
        return {**super().get_config(), "fused_inference": self.fused_inference}

    def _fusable(self, inputs, mask):
        return _FUSED_BATCHNORM[0] and self._foldable(inputs, mask)

    def _foldable(self, inputs, mask=None):
        """Inference can fold into the preceding convolution (any TF graph mode)."""
        return (keras.backend.backend() == "tensorflow" and mask is None
                and not self.renorm
                and not self.synchronized and len(inputs.shape) == 4
                and self.axis in (-1, 3) and self.scale and self.center)

    def call(self, inputs, training=None, mask=None):
        batch_stats = bool(training) and self.trainable
        fused = batch_stats or self.fused_inference or self.compute_dtype != "float32"
        if not self._fusable(inputs, mask) or not fused:
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        if not batch_stats:
            return self.fused_inference_call(inputs)
        fused = self.kernel_training_call(inputs)
        if fused is not None:
            return fused
        x = inputs
        if x.dtype not in (tf.float32, tf.bfloat16, tf.float16):
            x = tf.cast(x, tf.float32)
        y, new_mean, new_variance = tf.compat.v1.nn.fused_batch_norm(
            x, tf.cast(self.gamma, tf.float32), tf.cast(self.beta, tf.float32),
            mean=tf.cast(self.moving_mean, tf.float32),
            variance=tf.cast(self.moving_variance, tf.float32), epsilon=self.epsilon,
            data_format="NHWC", is_training=True, exponential_avg_factor=1.0 - self.momentum)
        self.moving_mean.assign(tf.cast(new_mean, self.moving_mean.dtype))
        self.moving_variance.assign(tf.cast(new_variance, self.moving_variance.dtype))
        return tf.cast(y, self.compute_dtype)

    def kernel_training_call(self, inputs, residual=None, relu=False, input_bias=None):
        """Training-mode `act(bn(inputs) [+ residual])` as one keras_resnet kernel
        (`keras_resnet.kernels`), updating the moving statistics; None where those
        kernels cannot run (float32 or bfloat16 on CPU only), so the caller takes its
        usual path.

        `input_bias` is a per-channel bias the inputs lack (a convolution's, left
        out by `_conv_for_training_batchnorm`): the output is the same with or
        without it, the moving mean is that of `inputs + input_bias`.
        """
        from keras_resnet import kernels

        if not (self.trainable and self._fusable(inputs, None) and kernels.usable(inputs)):
            return None
        if residual is not None and (tuple(residual.shape) != tuple(inputs.shape)
                                     or residual.dtype != inputs.dtype):
            return None
        import tensorflow as tf

        y, mean, variance = kernels.batchnorm_act(
            inputs, tf.cast(self.gamma, tf.float32), tf.cast(self.beta, tf.float32),
            self.epsilon, residual=residual, relu=relu)
        # The moving variance takes the unbiased batch variance, as TensorFlow's
        # fused kernel (the other training path of this layer) does.
        count = tf.cast(tf.reduce_prod(tf.shape(inputs)[:-1]), tf.float32)
        variance = variance * count / tf.maximum(count - 1.0, 1.0)
        decay = tf.cast(self.momentum, tf.float32)
        if input_bias is not None:
            mean = mean + tf.cast(input_bias, tf.float32)
        self.moving_mean.assign(tf.cast(
            tf.cast(self.moving_mean, tf.float32) * decay + mean * (1.0 - decay),
            self.moving_mean.dtype))
        self.moving_variance.assign(tf.cast(
            tf.cast(self.moving_variance, tf.float32) * decay + variance * (1.0 - decay),
            self.moving_variance.dtype))
        return y

    def fused_inference_call(self, inputs, input_bias=None):
        """Inference with the moving statistics as one `FusedBatchNormV3`.

        `input_bias` is a per-channel bias the inputs still lack: normalising
        `inputs + input_bias` equals normalising `inputs` with the moving mean
        shifted by `-input_bias` (see `conv_then_batchnorm`).
        """
        import tensorflow as tf

        x = inputs
        if x.dtype not in (tf.float32, tf.bfloat16, tf.float16):
            x = tf.cast(x, tf.float32)
        mean = tf.cast(self.moving_mean, tf.float32)
        if input_bias is not None:
            mean = mean - tf.cast(input_bias, tf.float32)
        y, _, _ = tf.compat.v1.nn.fused_batch_norm(
            x, tf.cast(self.gamma, tf.float32), tf.cast(self.beta, tf.float32), mean=mean,
            variance=tf.cast(self.moving_variance, tf.float32), epsilon=self.epsilon,
            data_format="NHWC", is_training=False)
        return tf.cast(y, self.compute_dtype)


_FUSED_BATCHNORM = [True]
_FOLD_AT_INFERENCE = [True]
_WINOGRAD = [True]
# InferenceSnapshot's folded weights while it traces (else None), per thread: a
# model traced meanwhile in another thread (a predict, an export) must not see them.
_SNAPSHOT = threading.local()
# A/B switches for benchmarks and tests (process-wide): see the context managers below.
_DROP_BIAS = [True]
_POINTWISE_MATMUL_GRADIENT = [True]


def _is_relu(layer):
    return isinstance(layer, layers.Activation) and getattr(
        layer.activation, "__name__", None) == "relu"


def conv_then_batchnorm(conv, bn, x, training=None, activation=None):
    """`bn(conv(x))`, computed at inference as one convolution plus a bias.

    In inference mode (the moving statistics, or a frozen BatchNorm) the pair
    runs as `folded_conv_batchnorm`: Conv2D + BiasAdd (+ the ReLU that follows),
    the pattern TensorFlow's grappler remapper fuses into one oneDNN
    `_FusedConv2D` in float32 and bfloat16 alike. (Conv2D + FusedBatchNormV3 is
    fused only in float32, and a biased conv's BiasAdd in between, the
    keras.applications layout, blocks even that.) Measured on ResNet-50
    inference (benchmarks/ablate_inference.py): 1.07x in float32, 2.2x in
    bfloat16 against FusedBatchNormV3 after each conv. Training, masks and
    anything `FusedBatchNormalization` cannot fuse take `bn(conv(x))`.

    `activation`, when given, is the layer that follows (a ReLU): applied here
    so the Winograd path (`folded_conv_batchnorm`) can fuse it.
    """
    finish = activation if activation is not None else (lambda y: y)
    inference = not (bool(training) and bn.trainable)
    if not inference and isinstance(bn, FusedBatchNormalization):
        y, input_bias = _conv_for_training_batchnorm(conv, bn, x)
        fused = bn.kernel_training_call(y, input_bias=input_bias) if input_bias is not None else None
        if fused is not None:
            return finish(fused)
        return finish(bn(_with_bias(y, input_bias), training=training))
    if not (inference and isinstance(bn, FusedBatchNormalization) and bn._foldable(x)):
        return finish(bn(conv_call(conv, x, training=training), training=training))
    if _FOLD_AT_INFERENCE[0]:
        # Also under `unfused_batchnorm()` (the export): the fold's multiplies
        # on frozen weights constant-fold, leaving Conv2D + BiasAdd.
        if activation is not None and _is_relu(activation):
            return folded_conv_batchnorm(conv, bn, x, relu=True)
        return finish(folded_conv_batchnorm(conv, bn, x))
    if not (conv.use_bias and bn._fusable(x, None)):  # unfolded_inference(): the previous path
        return finish(bn(conv(x), training=training))
    # BN(conv(x) + b) == BN'(conv(x)) with the moving mean shifted by -b.
    return finish(bn.fused_inference_call(conv.convolution_op(x, conv.kernel), input_bias=conv.bias))


def folded_conv_batchnorm(conv, bn, x, relu=False, residual=None):
    """Inference-mode `bn(conv(x))` as one convolution plus a bias: the BatchNorm
    is folded into the kernel (`w * gamma / sqrt(var + eps)`) and the bias.

    `ResidualBlock` uses it for the last convolution of a post-activation
    branch: `relu(shortcut + conv(x) + bias)` is the Conv2D + BiasAdd + Add +
    Relu pattern that TensorFlow's oneDNN remapper turns into a single
    `_FusedConv2D` (the sum and the ReLU run as post-ops of the convolution),
    where a FusedBatchNormV3 would leave the residual add and the ReLU as two
    more passes over memory. The fold is recomputed every call from the
    variables (a few multiplies per kernel weight), so it also holds while the
    moving statistics or a frozen BatchNorm's fine-tuned convolution change;
    `keras_resnet.InferenceSnapshot` folds once instead, for fixed weights.

    Returns `relu(conv(x) + bias [+ residual])` (the ReLU only with `relu`). A
    float32 3x3 stride-1 convolution on CPU runs as Winograd's F(4x4, 3x3)
    (`keras_resnet.kernels.winograd_conv`, with the bias, `residual` and `relu`
    fused); every other one as Conv2D + BiasAdd (+ Add) (+ Relu), which oneDNN
    fuses.
    """
    import tensorflow as tf

    from keras_resnet import kernels

    snapshot = getattr(_SNAPSHOT, "store", None)
    if snapshot is not None:
        return _snapshot_conv_batchnorm(conv, bn, x, relu, residual, snapshot)
    scale, shift = _fold(conv, bn)

    def direct():
        kernel = tf.cast(tf.cast(conv.kernel, tf.float32) * scale, conv.compute_dtype)
        return _bias_residual_relu(conv.convolution_op(x, kernel), shift, residual, relu,
                                   conv.compute_dtype)

    if residual is not None and residual.dtype != tf.float32:
        return direct()
    # Winograd takes the BatchNorm's scale inside its filter transform: no pass
    # over the weights to fold it first (profiled: the fold's Mul and a separate
    # transform were ~5% of ResNet-50's float32 inference).
    kernel = tf.convert_to_tensor(conv.kernel)
    return _winograd_or_direct(conv, x, lambda: kernels.winograd_conv(
        x, kernel, shift, residual=residual, relu=relu, scale=scale), direct)


def _fold(conv, bn):
    """`(scale, shift)`, float32 `[K]`: `bn(conv(x)) == conv(x) * scale + shift`."""
    import tensorflow as tf

    scale = tf.cast(bn.gamma, tf.float32) * tf.math.rsqrt(
        tf.cast(bn.moving_variance, tf.float32) + bn.epsilon)
    shift = tf.cast(bn.beta, tf.float32) - tf.cast(bn.moving_mean, tf.float32) * scale
    if conv.use_bias:
        shift = shift + tf.cast(conv.bias, tf.float32) * scale
    return scale, shift


def _bias_residual_relu(y, shift, residual, relu, dtype):
    """`relu(y + shift [+ residual])`: the ops oneDNN fuses into the convolution."""
    import tensorflow as tf

    y = tf.nn.bias_add(y, tf.cast(shift, dtype))
    if residual is not None:
        y = residual + y
    return tf.nn.relu(y) if relu else y


def _snapshot_conv_batchnorm(conv, bn, x, relu, residual, snapshot):
    """`folded_conv_batchnorm` from weights folded (and Winograd-transformed)
    once, when first traced, by `InferenceSnapshot`: each call then skips the
    fold's multiplies and the filter transform (~7% of ResNet-50's float32
    inference on a 2-core CPU, benchmarks/profile_resnet50.py)."""
    import tensorflow as tf

    from keras_resnet import kernels

    key = (id(conv), id(bn))
    if key not in snapshot:
        # Everything this convolution may need, read at once: a later trace (a
        # new batch size) then uses the same weights as the first.
        winograd_too = kernels.winograd_usable(conv, x)
        with tf.init_scope():  # computed eagerly; the graphs capture the results
            scale, shift = _fold(conv, bn)
            kernel = tf.convert_to_tensor(conv.kernel)
            snapshot[key] = {
                "layers": (conv, bn),  # keeps the ids from being reused
                "shift": tf.identity(shift),
                "kernel": tf.identity(tf.cast(tf.cast(kernel, tf.float32) * scale,
                                              conv.compute_dtype)),
                "u": kernels.winograd_filter(kernel, scale) if winograd_too else None,
            }
    entry = snapshot[key]

    def direct():
        return _bias_residual_relu(conv.convolution_op(x, entry["kernel"]), entry["shift"],
                                   residual, relu, conv.compute_dtype)

    def winograd():
        return kernels.winograd_conv_transformed(x, entry["u"], entry["shift"],
                                                 residual=residual, relu=relu)

    if entry["u"] is None or (residual is not None and residual.dtype != tf.float32):
        return direct()
    return _winograd_or_direct(conv, x, winograd, direct)


def _winograd_or_direct(conv, x, winograd, direct):
    """`winograd()` (a Winograd convolution) where it applies and pays, else `direct()`."""
    import tensorflow as tf

    from keras_resnet import kernels

    if not (_WINOGRAD[0] and kernels.winograd_usable(conv, x)):
        return direct()

    tiles = kernels.winograd_tiles(x)
    if isinstance(tiles, int):
        return winograd() if tiles >= kernels.WINOGRAD_MIN_TILES else direct()
    # A batch size known only at run time: small batches (serving one image)
    # are faster direct.
    return tf.cond(tiles >= kernels.WINOGRAD_MIN_TILES, winograd, direct)


def conv_call(conv, x, use_bias=True, training=None):
    """`conv(x)` for a block's Conv2D, as a Winograd convolution where it applies
    (float32 3x3 stride-1 with 128+ channels, on CPU): in training that is the
    forward pass and the input's gradient of those layers. In float32 training
    on CPU a 1x1 stride-1 conv is `pointwise_conv` (its kernel gradient one
    MatMul). `use_bias=False` leaves the conv's bias out (see
    `_conv_for_training_batchnorm`)."""
    import tensorflow as tf

    from keras_resnet import kernels

    if conv.activation not in (None, keras.activations.linear) or not conv.built:
        return conv(x)

    def direct():
        # Training only: at inference the custom gradient's IdentityN would sit
        # between the Conv2D and the BiasAdd / ReLU that oneDNN fuses into it.
        if (training and _POINTWISE_MATMUL_GRADIENT[0] and _is_pointwise(conv, x)
                and kernels._on_cpu_only()):
            y = pointwise_conv(tf.cast(x, conv.compute_dtype), tf.cast(conv.kernel, conv.compute_dtype))
            if use_bias and conv.use_bias:
                y = tf.nn.bias_add(y, tf.cast(conv.bias, y.dtype))
            return y
        if use_bias or not conv.use_bias:
            return conv(x)
        return conv.convolution_op(tf.cast(x, conv.compute_dtype),
                                   tf.cast(conv.kernel, conv.compute_dtype))

    # Tensors, not the Keras variables: tf.custom_gradient in eager mode rejects
    # variables it was not handed as `variables=`.
    bias = (tf.convert_to_tensor(conv.bias) if conv.use_bias and use_bias
            else tf.zeros([conv.filters], tf.float32))
    kernel = tf.convert_to_tensor(conv.kernel)
    return _winograd_or_direct(conv, x, lambda: kernels.winograd_conv(x, kernel, bias), direct)


def _is_pointwise(conv, x):
    """A 1x1, stride-1, ungrouped channels-last float32 conv on a 4-D input
    (TensorFlow). Not bfloat16: there the MatMul gradient measured 0.98x."""
    return (keras.backend.backend() == "tensorflow" and len(x.shape) == 4
            and keras.backend.standardize_dtype(x.dtype) == "float32"
            and conv.compute_dtype == "float32"
            and tuple(conv.kernel_size) == (1, 1) and tuple(conv.strides) == (1, 1)
            and tuple(conv.dilation_rate) == (1, 1) and conv.groups == 1
            and conv.data_format == "channels_last")


def pointwise_conv(x, kernel):
    """A 1x1 stride-1 convolution whose kernel gradient is one MatMul.

    The forward pass and the input's gradient are TensorFlow's (oneDNN's)
    convolution kernels; the kernel's gradient, `x^T dy` over every pixel, is
    `tf.matmul(x, dy, transpose_a=True)` on `[N*H*W, C]` views, where oneDNN's
    filter-gradient kernel ran 1.0-1.8x slower on ResNet-50's 1x1 shapes
    (206 against 363 GFLOP/s at 56x56, 64 -> 256 channels, float32, Zen 5).
    On the whole float32 training step that is worth only 1-4%
    (benchmarks/ablate_gradients.py --change pointwise, three runs: 1.020x to
    1.034x `resnet50_v1`, 1.010x to 1.037x `resnet50`): the other 1x1 shapes gain little.
    """
    import tensorflow as tf

    @tf.custom_gradient
    def conv(x, kernel):
        y = tf.nn.conv2d(x, kernel, 1, "VALID")

        def grad(dy):
            dx = tf.raw_ops.Conv2DBackpropInput(input_sizes=tf.shape(x), filter=kernel,
                                                out_backprop=dy, strides=[1, 1, 1, 1],
                                                padding="VALID")
            c, k = kernel.shape[2], kernel.shape[3]
            dk = tf.matmul(tf.reshape(x, [-1, c]), tf.reshape(dy, [-1, k]), transpose_a=True)
            return dx, tf.reshape(dk, tf.shape(kernel))

        return y, grad

    return conv(x, kernel)


def _conv_for_training_batchnorm(conv, bn, x):
    """`(y, input_bias)`: `conv(x)` for a BatchNorm that trains (batch
    statistics) through keras_resnet's kernel, without the conv's bias, which
    comes back as `input_bias` (for the moving mean) or is None.

    The batch mean takes any per-channel constant back out, so a bias before a
    training BatchNorm changes neither the output nor any gradient but its own,
    which is exactly zero (and is returned as zero). Adding it anyway costs a
    pass over the output and, in the backward pass, a reduction of the output's
    gradient that oneDNN fuses into the filter gradient
    (`Conv2DBackpropFilterWithBias`): 1.04-1.8x the filter gradient's time alone
    on ResNet-50's 1x1 shapes (a one-off kernel timing, float32, Zen 5). The
    whole `resnet50_v1` float32 training step is 1.04-1.08x faster without it
    (benchmarks/ablate_gradients.py --change bias); keras.applications' layout
    (`resnet50_v1`, `conv_bias=True`) has such a bias on every conv.
    """
    import tensorflow as tf

    from keras_resnet import kernels

    if not (_DROP_BIAS[0] and conv.use_bias and conv.built and isinstance(bn, FusedBatchNormalization)
            and bn.trainable and conv.activation in (None, keras.activations.linear)
            and bn._fusable(x, None) and kernels.usable(x)):
        return conv_call(conv, x, training=True), None
    bias = tf.convert_to_tensor(conv.bias)

    @tf.custom_gradient
    def attach(y, bias):  # the bias's gradient: exactly zero
        return tf.identity(y), lambda dy: (dy, tf.zeros_like(bias))

    return attach(conv_call(conv, x, use_bias=False, training=True), bias), bias


def _with_bias(y, input_bias):
    """`y + input_bias`: a `_conv_for_training_batchnorm` output, for the paths
    that do not take `input_bias` (the kernel declined after all)."""
    import tensorflow as tf

    return y if input_bias is None else tf.nn.bias_add(y, tf.cast(input_bias, y.dtype))


@contextlib.contextmanager
def _switched_off(flag):
    """Sets a one-element flag list to False for the duration (the A/B switches below)."""
    previous = flag[0]
    flag[0] = False
    try:
        yield
    finally:
        flag[0] = previous


@contextlib.contextmanager
def unfused_batchnorm():
    """Traces `FusedBatchNormalization` as Keras's composition of ops.

    The export uses it before constant folding: grappler folds the
    Rsqrt/Mul/Add form into the convolutions, not a `FusedBatchNormV3` op.
    """
    with _switched_off(_FUSED_BATCHNORM):
        yield


@contextlib.contextmanager
def unfolded_inference():
    """Traces blocks without `folded_conv_batchnorm` (for A/B benchmarks): every
    inference BatchNorm stays a FusedBatchNormV3 after its convolution (a biased
    conv's bias moved into its moving mean), and the sum and ReLU separate ops."""
    with _switched_off(_FOLD_AT_INFERENCE):
        yield


@contextlib.contextmanager
def snapshot_weights(store):
    """Traces inference from weights folded once into `store` (a dict, filled on
    first use and reused by later traces): see `keras_resnet.InferenceSnapshot`."""
    previous = getattr(_SNAPSHOT, "store", None)
    _SNAPSHOT.store = store
    try:
        yield
    finally:
        _SNAPSHOT.store = previous


@contextlib.contextmanager
def biased_training_convolutions():
    """Traces training with every conv's bias added before its BatchNorm, as
    Keras does (for A/B benchmarks and parity tests; see
    `_conv_for_training_batchnorm`)."""
    with _switched_off(_DROP_BIAS):
        yield


@contextlib.contextmanager
def convolution_filter_gradients():
    """Traces 1x1 convolutions with TensorFlow's own filter gradient instead of
    `pointwise_conv`'s MatMul (for A/B benchmarks and parity tests)."""
    with _switched_off(_POINTWISE_MATMUL_GRADIENT):
        yield


@contextlib.contextmanager
def direct_convolutions():
    """Traces inference without Winograd convolutions (for A/B benchmarks and
    parity tests): every folded 3x3 convolution stays TensorFlow's Conv2D."""
    with _switched_off(_WINOGRAD):
        yield


def batch_normalization(**kwargs):
    """The BatchNorm every keras_resnet model uses: fused unless synchronized."""
    if kwargs.get("synchronized"):
        kwargs.pop("fused_inference", None)
        return layers.BatchNormalization(**kwargs)
    kwargs.pop("synchronized", None)
    return FusedBatchNormalization(**kwargs)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class DropPath(layers.Layer):
    """Stochastic depth: drops the whole residual branch per sample.

    The kept samples are scaled by `1 / (1 - rate)` so the expected output is
    unchanged and inference needs no rescaling (Huang et al. 2016).
    """

    def __init__(self, rate=0.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"`rate` must be in [0, 1). Received: rate={rate}")
        self.rate = float(rate)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed) if rate > 0 else None

    def call(self, x, training=False):
        if not training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        shape = (ops.shape(x)[0],) + (1,) * (len(x.shape) - 1)
        mask = keras.random.uniform(shape, seed=self.seed_generator, dtype=x.dtype)
        mask = ops.floor(mask + ops.cast(keep, x.dtype))
        return x / ops.cast(keep, x.dtype) * mask

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ZeroPadShortcut(layers.Layer):
    """Option-A shortcut: strided identity with zero-padded extra channels."""

    def __init__(self, filters, strides=1, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.strides = int(strides)

    def call(self, x):
        if self.strides > 1:
            x = x[:, :: self.strides, :: self.strides, :]
        extra = self.filters - x.shape[-1]
        if extra > 0:
            # Pad evenly on both sides of the channel axis, like the original
            # Torch code, so the identity channels sit in the middle.
            x = ops.pad(x, [[0, 0], [0, 0], [0, 0], [extra // 2, extra - extra // 2]])
        return x

    def compute_output_shape(self, input_shape):
        n, h, w, _ = input_shape
        s = self.strides
        h = None if h is None else (h + s - 1) // s
        w = None if w is None else (w + s - 1) // s
        return (n, h, w, self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "strides": self.strides}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SqueezeExcite(layers.Layer):
    """Squeeze-and-excitation channel gate (Hu et al. 2018)."""

    def __init__(self, ratio=0.0625, kernel_initializer="he_normal",
                 kernel_regularizer=None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"`se_ratio` must be in (0, 1]. Received: se_ratio={ratio}")
        self.ratio = float(ratio)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)

    def build(self, input_shape):
        channels = input_shape[-1]
        hidden = max(1, int(round(channels * self.ratio)))
        common = dict(kernel_initializer=self.kernel_initializer,
                      kernel_regularizer=self.kernel_regularizer)
        self.reduce = layers.Conv2D(hidden, 1, activation="relu", name=f"{self.name}_reduce", dtype=self.dtype_policy, **common)
        self.expand = layers.Conv2D(channels, 1, activation="sigmoid", name=f"{self.name}_expand", dtype=self.dtype_policy, **common)
        self.reduce.build((None, 1, 1, channels))
        self.expand.build((None, 1, 1, hidden))

    def call(self, x):
        s = ops.mean(x, axis=(1, 2), keepdims=True)
        return x * self.expand(self.reduce(s))

    def get_config(self):
        return {
            **super().get_config(),
            "ratio": self.ratio,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
        }


class ResidualBlock(layers.Layer):
    """Base class: shortcut, optional SE and stochastic depth, `Add()`, activation.

    Subclasses build the residual branch in `_build_branch` as a list of
    `(layer, is_norm_or_activation)` steps and say whether they are
    pre-activation blocks.

    Args:
        filters: Output channels of a basic block, or bottleneck width before
            expansion of a bottleneck block (as in keras.applications).
        strides: Spatial stride of the block (1 or 2).
        shortcut: One of `SHORTCUTS` (see the module docstring).
        normalization: `"batch"` or `None`. `None` removes every BatchNorm and
            gives convolutions a bias (the plain conv-ReLU-conv-Add-ReLU block).
        zero_init_last_bn: Initialise the last BatchNorm gamma of the residual
            branch to zero, so each block starts as the identity (Goyal et al.).
            Pre-activation blocks end in a convolution, not a BatchNorm: there
            the last convolution's kernel starts at zero (as timm does).
        se_ratio: Squeeze-and-excitation hidden ratio, or `None` for no SE.
        drop_path_rate: Stochastic-depth drop probability of this block.
        conv_bias: Give convolutions a bias as keras.applications does.
        bn_epsilon, bn_momentum: BatchNorm hyper-parameters.
        sync_batchnorm: Synchronise BatchNorm statistics across replicas
            (`tf.distribute`), so small per-replica batches normalise like the global batch.
        kernel_initializer, kernel_regularizer: for every convolution.
    """

    expansion = 1
    preactivation = False
    relu_after_add = True

    def __init__(self, filters, strides=1, shortcut="auto", normalization="batch",
                 zero_init_last_bn=False, se_ratio=None, drop_path_rate=0.0,
                 conv_bias=False, bn_epsilon=1e-5, bn_momentum=0.9, sync_batchnorm=False,
                 kernel_initializer="he_normal", kernel_regularizer=None,
                 **kwargs):
        super().__init__(**kwargs)
        if not isinstance(filters, int) or filters < 1:
            raise ValueError(f"`filters` must be a positive int. Received: filters={filters!r}")
        if strides not in (1, 2):
            raise ValueError(f"`strides` must be 1 or 2. Received: strides={strides!r}")
        _check_choice("shortcut", shortcut, SHORTCUTS)
        _check_choice("normalization", normalization, ("batch", None))
        self.filters = filters
        self.strides = strides
        self.shortcut = shortcut
        self.normalization = normalization
        self.zero_init_last_bn = bool(zero_init_last_bn)
        self.se_ratio = se_ratio
        self.drop_path_rate = float(drop_path_rate)
        self.conv_bias = bool(conv_bias)
        self.bn_epsilon = float(bn_epsilon)
        self.bn_momentum = float(bn_momentum)
        self.sync_batchnorm = bool(sync_batchnorm)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)

    # --- helpers shared by the block types -------------------------------
    @property
    def out_channels(self):
        return self.filters * self.expansion

    def _conv(self, suffix, filters, kernel_size, strides=1, groups=1, bias=None,
              zero_kernel=False):
        """Conv with torch-style symmetric padding (explicit pad + valid)."""
        if bias is None:
            bias = self.conv_bias or self.normalization is None
        steps = []
        pad = kernel_size // 2
        if pad and strides > 1:
            steps.append(layers.ZeroPadding2D(pad, name=f"{self.name}_{suffix}_pad", dtype=self.dtype_policy))
            padding = "valid"
        else:
            padding = "same"
        steps.append(layers.Conv2D(
            filters, kernel_size, strides=strides, padding=padding, groups=groups,
            use_bias=bias, kernel_initializer="zeros" if zero_kernel else self.kernel_initializer,
            kernel_regularizer=self.kernel_regularizer, name=f"{self.name}_{suffix}_conv",
            dtype=self.dtype_policy))
        return steps

    def _norm(self, suffix, zero_gamma=False):
        if self.normalization is None:
            return []
        return [batch_normalization(
            epsilon=self.bn_epsilon, momentum=self.bn_momentum, synchronized=self.sync_batchnorm,
            fused_inference=not self.conv_bias,
            gamma_initializer="zeros" if zero_gamma else "ones",
            name=f"{self.name}_{suffix}_bn", dtype=self.dtype_policy)]

    def _relu(self, suffix):
        return [layers.Activation("relu", name=f"{self.name}_{suffix}_relu", dtype=self.dtype_policy)]

    def _resolve_shortcut(self, in_channels):
        same_shape = in_channels == self.out_channels and self.strides == 1
        kind = self.shortcut
        if kind == "auto":
            return "identity" if same_shape else "projection"
        if same_shape:
            # Shortcut types only matter where the shape changes; elsewhere the
            # papers use the identity (projection everywhere, option C, is not
            # worth its parameters: He et al. 2015 table 3).
            return "identity"
        if kind == "identity":
            raise ValueError(
                f"`shortcut='identity'` cannot change shape in block {self.name!r}: "
                f"{in_channels} -> {self.out_channels} channels, stride {self.strides}. "
                "Use 'projection', 'zero_pad' or 'avg_pool'.")
        if kind == "zero_pad" and in_channels > self.out_channels:
            raise ValueError(f"`shortcut='zero_pad'` cannot reduce channels in block {self.name!r}.")
        if kind == "subsample" and in_channels != self.out_channels:
            return "projection"
        return kind

    def build(self, input_shape):
        in_channels = input_shape[-1]
        kind = self._resolve_shortcut(in_channels)
        self.shortcut_kind = kind
        s = []
        if kind == "projection":
            s += [layers.Conv2D(
                self.out_channels, 1, strides=self.strides,
                use_bias=self.conv_bias or self.normalization is None,
                kernel_initializer=self.kernel_initializer,
                kernel_regularizer=self.kernel_regularizer, name=f"{self.name}_0_conv",
                dtype=self.dtype_policy)]
            if not self.preactivation:
                s += self._norm("0")
        elif kind == "avg_pool":
            if self.strides > 1:
                s += [layers.AveragePooling2D(self.strides, strides=self.strides, padding="same",
                                              name=f"{self.name}_0_pool", dtype=self.dtype_policy)]
            s += [layers.Conv2D(
                self.out_channels, 1, use_bias=self.conv_bias or self.normalization is None,
                kernel_initializer=self.kernel_initializer,
                kernel_regularizer=self.kernel_regularizer, name=f"{self.name}_0_conv",
                dtype=self.dtype_policy)]
            if not self.preactivation:
                s += self._norm("0")
        elif kind == "zero_pad":
            s += [ZeroPadShortcut(self.out_channels, self.strides, name=f"{self.name}_0_pad",
                                  dtype=self.dtype_policy)]
        elif kind == "subsample" and self.strides > 1:
            s += [layers.MaxPooling2D(1, strides=self.strides, name=f"{self.name}_0_pool",
                                      dtype=self.dtype_policy)]
        self.shortcut_layers = s

        self.preact_layers = (self._norm("preact") + self._relu("preact")
                              if self.preactivation else [])
        self.branch_layers = self._build_branch(in_channels)
        self.se = (SqueezeExcite(self.se_ratio, self.kernel_initializer, self.kernel_regularizer,
                                 name=f"{self.name}_se", dtype=self.dtype_policy) if self.se_ratio else None)
        self.drop_path = (DropPath(self.drop_path_rate, name=f"{self.name}_drop_path", dtype=self.dtype_policy)
                          if self.drop_path_rate > 0 else None)
        self.add = layers.Add(name=f"{self.name}_add", dtype=self.dtype_policy)
        self.out_relu = None if self.preactivation or not self.relu_after_add else layers.Activation(
            "relu", name=f"{self.name}_out", dtype=self.dtype_policy)
        # Build sub-layers now so weights exist before the first call (needed
        # to load saved weights and for model.summary to count parameters).
        shape = tuple(input_shape)
        pre = shape
        for layer in self.preact_layers:
            layer.build(pre)
            pre = layer.compute_output_shape(pre)
        sc_in = pre if (self.preactivation and kind in ("projection", "avg_pool")) else shape
        for layer in self.shortcut_layers:
            layer.build(sc_in)
            sc_in = layer.compute_output_shape(sc_in)
        b = pre
        for layer in self.branch_layers:
            layer.build(b)
            b = layer.compute_output_shape(b)
        if self.se is not None:
            self.se.build(b)
        self.built = True

    def call(self, x, training=None):
        pre = x
        for layer in self.preact_layers:
            pre = layer(pre, training=training)
        # Pre-activation blocks feed projections from the normalised input
        # (He et al. 2016), identities from the raw input.
        shortcut = pre if (self.preactivation and self.shortcut_kind in ("projection", "avg_pool")) else x
        shortcut = self._apply(self.shortcut_layers, shortcut, training)
        if self._folds_last_conv_into_the_sum(pre, training):
            # relu(shortcut + conv(y) + bias): one fused oneDNN convolution.
            # (out_relu, when present, is always a ReLU: see build().)
            y = self._apply(self.branch_layers[:-2], pre, training)
            return folded_conv_batchnorm(self.branch_layers[-2], self.branch_layers[-1], y,
                                         relu=True, residual=shortcut)
        if self._fuses_sum_in_training(training):
            # relu(bn(conv(y)) + shortcut) and its gradient as one keras_resnet kernel each.
            conv, bn = self.branch_layers[-2:]
            y = self._apply(self.branch_layers[:-2], pre, training)
            y, input_bias = _conv_for_training_batchnorm(conv, bn, y)
            fused = bn.kernel_training_call(y, residual=shortcut, relu=True, input_bias=input_bias)
            if fused is not None:
                return fused
            y = bn(_with_bias(y, input_bias), training=training)
        else:
            y = self._apply(self.branch_layers, pre, training)
        if self.se is not None:
            y = self.se(y)
        if self.drop_path is not None:
            y = self.drop_path(y, training=training)
        y = self.add([shortcut, y])
        if self.out_relu is not None:
            y = self.out_relu(y)
        return y

    def _fuses_sum_in_training(self, training):
        """Training through a post-activation block whose branch ends in a
        BatchNorm, with nothing between it, the sum and the ReLU."""
        return (bool(training) and not self.preactivation and self.out_relu is not None
                and self.se is None and self.drop_path is None and len(self.branch_layers) >= 2
                and isinstance(self.branch_layers[-2], layers.Conv2D)
                and isinstance(self.branch_layers[-1], FusedBatchNormalization)
                and self.branch_layers[-1].trainable)

    def _folds_last_conv_into_the_sum(self, x, training):
        """Inference through a post-activation block whose branch ends in
        conv -> BatchNorm, with nothing between the sum and its ReLU."""
        if (not _FOLD_AT_INFERENCE[0] or self.preactivation or self.out_relu is None
                or self.se is not None):
            return False
        if self.drop_path is not None and training:
            return False
        if len(self.branch_layers) < 2:
            return False
        conv, bn = self.branch_layers[-2:]
        return (isinstance(conv, layers.Conv2D) and isinstance(bn, FusedBatchNormalization)
                and not (bool(training) and bn.trainable) and bn._foldable(x))

    @staticmethod
    def _apply(steps, x, training):
        i = 0
        while i < len(steps):
            layer = steps[i]
            following = steps[i + 1] if i + 1 < len(steps) else None
            if isinstance(layer, layers.Conv2D) and isinstance(following, layers.BatchNormalization):
                after = steps[i + 2] if i + 2 < len(steps) else None
                if (training and _is_relu(after) and isinstance(following, FusedBatchNormalization)
                        and following.trainable):
                    # Training: BatchNorm + ReLU as one keras_resnet kernel where it runs.
                    y, input_bias = _conv_for_training_batchnorm(layer, following, x)
                    fused = following.kernel_training_call(y, relu=True, input_bias=input_bias)
                    # Where the kernels cannot run, the ReLU stays the next step.
                    x = (fused if fused is not None
                         else following(_with_bias(y, input_bias), training=training))
                    i += 3 if fused is not None else 2
                    continue
                after = steps[i + 2] if i + 2 < len(steps) else None
                if _is_relu(after):  # passed on, so a Winograd convolution can fuse it
                    x = conv_then_batchnorm(layer, following, x, training, activation=after)
                    i += 3
                else:
                    x = conv_then_batchnorm(layer, following, x, training)
                    i += 2
            elif isinstance(layer, layers.Conv2D):
                x = conv_call(layer, x, training=training)
                i += 1
            else:
                x = layer(x, training=training)
                i += 1
        return x

    def compute_output_shape(self, input_shape):
        n, h, w, _ = input_shape
        s = self.strides
        h = None if h is None else (h + s - 1) // s
        w = None if w is None else (w + s - 1) // s
        return (n, h, w, self.out_channels)

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "strides": self.strides,
            "shortcut": self.shortcut,
            "normalization": self.normalization,
            "zero_init_last_bn": self.zero_init_last_bn,
            "se_ratio": self.se_ratio,
            "drop_path_rate": self.drop_path_rate,
            "conv_bias": self.conv_bias,
            "bn_epsilon": self.bn_epsilon,
            "bn_momentum": self.bn_momentum,
            "sync_batchnorm": self.sync_batchnorm,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
        }


@keras.saving.register_keras_serializable(package=_PACKAGE)
class BasicBlock(ResidualBlock):
    """Two 3x3 convolutions (ResNet-18/34, the CIFAR ResNets, Wide ResNets).

    Extra args:
        width_dropout: dropout between the two convolutions (Wide ResNets).
    """

    def __init__(self, filters, width_dropout=0.0, **kwargs):
        super().__init__(filters, **kwargs)
        self.width_dropout = float(width_dropout)

    def _build_branch(self, in_channels):
        steps = self._conv("1", self.filters, 3, self.strides) + self._norm("1") + self._relu("1")
        if self.width_dropout:
            steps += [layers.Dropout(self.width_dropout, name=f"{self.name}_dropout", dtype=self.dtype_policy)]
        steps += self._conv("2", self.filters, 3)
        steps += self._norm("2", zero_gamma=self.zero_init_last_bn)
        return steps

    def get_config(self):
        return {**super().get_config(), "width_dropout": self.width_dropout}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class BottleneckBlock(ResidualBlock):
    """1x1 reduce, 3x3, 1x1 expand (x4): ResNet-50 and deeper, ResNeXt.

    Extra args:
        groups, base_width: ResNeXt cardinality and width per group; the 3x3
            width is `filters * base_width / 64 * groups` (timm/torchvision).
        stride_on: `"3x3"` (v1.5, torchvision/timm) or `"1x1"` (v1, the
            original paper and keras.applications).
    """

    expansion = 4

    def __init__(self, filters, groups=1, base_width=64, stride_on="3x3", **kwargs):
        super().__init__(filters, **kwargs)
        _check_choice("stride_on", stride_on, ("3x3", "1x1"))
        if not isinstance(groups, int) or groups < 1:
            raise ValueError(f"`groups` must be a positive int. Received: groups={groups!r}")
        self.groups = groups
        self.base_width = int(base_width)
        self.stride_on = stride_on

    @property
    def width(self):
        return int(self.filters * (self.base_width / 64.0)) * self.groups

    def _build_branch(self, in_channels):
        s1, s3 = (self.strides, 1) if self.stride_on == "1x1" else (1, self.strides)
        return (self._conv("1", self.width, 1, s1) + self._norm("1") + self._relu("1")
                + self._conv("2", self.width, 3, s3, groups=self.groups) + self._norm("2")
                + self._relu("2")
                + self._conv("3", self.out_channels, 1)
                + self._norm("3", zero_gamma=self.zero_init_last_bn))

    def get_config(self):
        return {**super().get_config(), "groups": self.groups,
                "base_width": self.base_width, "stride_on": self.stride_on}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class PreActBasicBlock(BasicBlock):
    """Pre-activation basic block (He et al. 2016): BN-ReLU-conv twice, no ReLU after Add."""

    preactivation = True

    def _build_branch(self, in_channels):
        steps = self._conv("1", self.filters, 3, self.strides) + self._norm("1") + self._relu("1")
        if self.width_dropout:
            steps += [layers.Dropout(self.width_dropout, name=f"{self.name}_dropout", dtype=self.dtype_policy)]
        # The last conv feeds the sum directly: bias only where keras.applications has one.
        steps += self._conv("2", self.filters, 3, bias=self.conv_bias or self.normalization is None,
                            zero_kernel=self.zero_init_last_bn)
        return steps


@keras.saving.register_keras_serializable(package=_PACKAGE)
class PreActBottleneckBlock(BottleneckBlock):
    """Pre-activation bottleneck (He et al. 2016; keras.applications ResNetV2)."""

    preactivation = True

    def _build_branch(self, in_channels):
        s1, s3 = (self.strides, 1) if self.stride_on == "1x1" else (1, self.strides)
        # keras.applications V2 gives bias only to convs that feed the sum.
        no_bias = self.normalization is not None
        return (self._conv("1", self.width, 1, s1, bias=not no_bias) + self._norm("1") + self._relu("1")
                + self._conv("2", self.width, 3, s3, groups=self.groups, bias=not no_bias)
                + self._norm("2") + self._relu("2")
                + self._conv("3", self.out_channels, 1, bias=self.conv_bias or not no_bias,
                             zero_kernel=self.zero_init_last_bn))


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ResNet9Block(BasicBlock):
    """The residual unit of ResNet-9 (Page 2018, the DAWNBench CIFAR-10 net):
    `x + ReLU(BN(conv(ReLU(BN(conv(x))))))`. The branch ends in its own ReLU
    and nothing follows the `Add()`, so the sum of two non-negative tensors
    feeds the next convolution unchanged.
    """

    relu_after_add = False

    def _build_branch(self, in_channels):
        return super()._build_branch(in_channels) + self._relu("2")


BLOCK_TYPES = {
    "basic": BasicBlock,
    "bottleneck": BottleneckBlock,
    "preact_basic": PreActBasicBlock,
    "preact_bottleneck": PreActBottleneckBlock,
}
