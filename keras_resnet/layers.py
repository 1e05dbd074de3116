"""Residual blocks as Keras layers, each `call` the block of its paper.

    BasicBlock             conv3x3-BN-ReLU-conv3x3-BN, + shortcut, ReLU   (He et al. 2015)
    BottleneckBlock        conv1x1-BN-ReLU-conv3x3-BN-ReLU-conv1x1-BN, + shortcut, ReLU
    PreActBasicBlock       BN-ReLU-conv3x3-BN-ReLU-conv3x3, + shortcut    (He et al. 2016)
    PreActBottleneckBlock  BN-ReLU-conv1x1-BN-ReLU-conv3x3-BN-ReLU-conv1x1, + shortcut
    ResNet9Block           x + ReLU(BN(conv(ReLU(BN(conv(x))))))           (Page 2018)

Every block owns its shortcut and sums with a `keras.layers.Add()`. Two small
variations sit between the branch and the sum: squeeze-and-excitation
(`se_ratio`, Hu et al. 2018) and stochastic depth (`drop_path_rate`, Huang et
al. 2016); both are identities when off. Sub-layers are named as in
keras.applications (`conv2_block1_1_conv`, `conv2_block1_0_bn`), so weights map
one to one; `block.get_layer(name)` and `walk_layers(model)` reach them.

Shortcuts (`shortcut=`):
    identity:   x itself; only where the block keeps the shape.
    projection: 1x1 conv (+ BatchNorm in post-activation blocks), strided when
                the block downsamples (He et al. 2015, option B).
    zero_pad:   strided identity whose extra channels are zeros (option A, the
                CIFAR experiments of He et al. 2015); no parameters.
    avg_pool:   2x2 average pool then 1x1 conv + BN (ResNet-D, He et al. 2019).
    subsample:  strided identity (1x1 max-pool) when only the resolution
                changes; the keras.applications ResNetV2 layout.
    auto:       identity when the shape is kept, projection otherwise.

Saved files: the lists `shortcut_layers`, `preact_layers` and `branch_layers`
and the attribute `se` fix where a block's weights live in a `.keras` file
(the layout of release 0.1.0, kept so its files load); the private names the
`call`s use (`self._conv1`) are aliases of the same layers.
"""

import keras
from keras import layers, ops

SHORTCUTS = ("auto", "identity", "projection", "zero_pad", "avg_pool", "subsample")
NORMALIZATIONS = ("batch", None, "folded")
PACKAGE = "keras_resnet"


def check_choice(argument, value, choices):
    """Raises a ValueError naming `argument`, the value received and the valid choices."""
    if value not in choices:
        raise ValueError(
            f"Invalid `{argument}`. Received: {argument}={value!r}. "
            f"Valid choices are {', '.join(repr(c) for c in choices)}."
        )


@keras.saving.register_keras_serializable(package=PACKAGE)
class FusedBatchNormalization(layers.BatchNormalization):
    """`keras.layers.BatchNormalization` computed by TensorFlow's fused kernel.

    Same weights, config and semantics as Keras's layer (`trainable=False`
    runs in inference mode; `momentum`, `epsilon` as in Keras), but on the
    TensorFlow backend a channels-last 4-D input runs through one
    `FusedBatchNormV3` op (oneDNN on CPU, cuDNN on GPU) instead of Keras 3's
    moments + normalisation composition, and under mixed precision without the
    float32 round trip Keras makes around it (the fused kernel keeps its
    statistics in float32). Anything else (other backends, ranks or axes,
    masks, renorm, synchronized statistics) takes Keras's implementation.

    The moving variance is updated with the batch's unbiased variance, as the
    fused kernel (and Keras 2) does; Keras 3 uses the biased one: a relative
    difference of 1 / (N*H*W - 1).
    """

    def __init__(self, **kwargs):
        # Release 0.1.0 stored a speed switch here; it no longer changes anything.
        kwargs.pop("fused_inference", None)
        super().__init__(**kwargs)

    def _fusable(self, inputs, mask):
        return (keras.backend.backend() == "tensorflow" and mask is None and not self.renorm
                and not self.synchronized and len(inputs.shape) == 4
                and self.axis in (-1, 3))

    def call(self, inputs, training=None, mask=None):
        if not self._fusable(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        batch_statistics = bool(training) and self.trainable
        x = inputs if inputs.dtype in (tf.float32, tf.bfloat16, tf.float16) else tf.cast(inputs, tf.float32)
        # `scale=False` / `center=False` (a frozen gamma of 1, a beta of 0) are
        # constants to the fused op.
        channels = inputs.shape[-1]
        gamma = tf.cast(self.gamma, tf.float32) if self.scale else tf.ones([channels], tf.float32)
        beta = tf.cast(self.beta, tf.float32) if self.center else tf.zeros([channels], tf.float32)
        y, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            x, gamma, beta,
            mean=tf.cast(self.moving_mean, tf.float32),
            variance=tf.cast(self.moving_variance, tf.float32), epsilon=self.epsilon,
            data_format="NHWC", is_training=batch_statistics,
            exponential_avg_factor=1.0 - self.momentum if batch_statistics else 1.0)
        if batch_statistics:  # the op returns the moving averages, already updated
            self.moving_mean.assign(tf.cast(mean, self.moving_mean.dtype))
            self.moving_variance.assign(tf.cast(variance, self.moving_variance.dtype))
        return tf.cast(y, self.compute_dtype)


@keras.saving.register_keras_serializable(package=PACKAGE)
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


@keras.saving.register_keras_serializable(package=PACKAGE)
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
        return _strided_shape(input_shape, self.strides, self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "strides": self.strides}


@keras.saving.register_keras_serializable(package=PACKAGE)
class SqueezeExcite(layers.Layer):
    """Squeeze-and-excitation channel gate (Hu et al. 2018): `x * sigmoid(W2 relu(W1 mean(x)))`."""

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
                      kernel_regularizer=self.kernel_regularizer, dtype=self.dtype_policy)
        self.reduce = layers.Conv2D(hidden, 1, activation="relu", name=f"{self.name}_reduce", **common)
        self.expand = layers.Conv2D(channels, 1, activation="sigmoid", name=f"{self.name}_expand", **common)
        self.reduce.build((None, 1, 1, channels))
        self.expand.build((None, 1, 1, hidden))

    def call(self, x):
        squeezed = ops.mean(x, axis=(1, 2), keepdims=True)
        return x * self.expand(self.reduce(squeezed))

    def get_config(self):
        return {
            **super().get_config(),
            "ratio": self.ratio,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
        }


def _strided_shape(input_shape, strides, channels):
    n, h, w, _ = input_shape
    h = None if h is None else (h + strides - 1) // strides
    w = None if w is None else (w + strides - 1) // strides
    return (n, h, w, channels)


class ResidualBlock(layers.Layer):
    """What every block shares: arguments, sub-layer factories, the shortcut.

    Subclasses build their layers in `build` and write their block in `call`.

    Args:
        filters: Output channels of a basic block, or the bottleneck width
            before expansion of a bottleneck block (as in keras.applications).
        strides: Spatial stride of the block (1 or 2).
        shortcut: One of `SHORTCUTS` (see the module docstring).
        normalization: `"batch"`, `None` or `"folded"`. `None` removes every
            BatchNorm and gives convolutions a bias (the plain
            conv-ReLU-conv-Add-ReLU block). `"folded"` is the inference form
            `keras_resnet.deploy.fold_batchnorm` builds: each BatchNorm that
            follows a convolution is folded into it (the conv gains a bias);
            pre-activation BatchNorms stay.
        zero_init_last_bn: Initialise the last BatchNorm gamma of the residual
            branch to zero, so each block starts as the identity (Goyal et al.
            2017). Pre-activation blocks end in a convolution: there its kernel
            starts at zero (as timm does).
        se_ratio: Squeeze-and-excitation hidden ratio, or `None` for no SE.
        drop_path_rate: Stochastic-depth drop probability of this block.
        conv_bias: Give convolutions a bias, as keras.applications does.
        bn_epsilon, bn_momentum: BatchNorm hyper-parameters.
        bn_scale: Learn each BatchNorm's scale (gamma). `False` fixes it at 1
            (fast CIFAR recipes: fewer parameters, and the following
            convolution can absorb any scale).
        sync_batchnorm: Synchronise BatchNorm statistics across replicas
            (`tf.distribute`), so small per-replica batches normalise like the
            global batch.
        kernel_initializer, kernel_regularizer: For every convolution.
    """

    expansion = 1
    preactivation = False

    def __init__(self, filters, strides=1, shortcut="auto", normalization="batch",
                 zero_init_last_bn=False, se_ratio=None, drop_path_rate=0.0,
                 conv_bias=False, bn_epsilon=1e-5, bn_momentum=0.9, sync_batchnorm=False,
                 kernel_initializer="he_normal", kernel_regularizer=None, bn_scale=True,
                 **kwargs):
        super().__init__(**kwargs)
        if not isinstance(filters, int) or filters < 1:
            raise ValueError(f"`filters` must be a positive int. Received: filters={filters!r}")
        if strides not in (1, 2):
            raise ValueError(f"`strides` must be 1 or 2. Received: strides={strides!r}")
        check_choice("shortcut", shortcut, SHORTCUTS)
        check_choice("normalization", normalization, NORMALIZATIONS)
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
        self.bn_scale = bool(bn_scale)
        if self.zero_init_last_bn and not self.bn_scale and not self.preactivation:
            raise ValueError("`zero_init_last_bn=True` needs a BatchNorm scale to set to zero. "
                             "Received: zero_init_last_bn=True, bn_scale=False")
        self.sync_batchnorm = bool(sync_batchnorm)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)

    @property
    def out_channels(self):
        return self.filters * self.expansion

    # --- sub-layer factories (every sub-layer takes the block's dtype policy) ----
    def _conv(self, suffix, filters, kernel_size, strides=1, groups=1, bias=None,
              zero_kernel=False):
        """`(pad, conv)`: a convolution with torch's symmetric padding (an explicit
        ZeroPadding2D + 'valid' where the stride is 2; 'same' otherwise)."""
        if bias is None:  # a bias where no BatchNorm follows, or as keras.applications has
            bias = self.conv_bias or self.normalization != "batch"
        pad = kernel_size // 2
        strided_pad = pad and strides > 1
        padding = (layers.ZeroPadding2D(pad, name=f"{self.name}_{suffix}_pad", dtype=self.dtype_policy)
                   if strided_pad else layers.Identity(dtype=self.dtype_policy))
        conv = layers.Conv2D(
            filters, kernel_size, strides=strides, padding="valid" if strided_pad else "same",
            groups=groups, use_bias=bias,
            kernel_initializer="zeros" if zero_kernel else self.kernel_initializer,
            kernel_regularizer=self.kernel_regularizer, name=f"{self.name}_{suffix}_conv",
            dtype=self.dtype_policy)
        return padding, conv

    def _batch_norm(self, suffix, zero_gamma=False, after_conv=True):
        """A BatchNorm, or an identity where there is none (`normalization=None`,
        or folded into the convolution before it)."""
        if self.normalization is None or (self.normalization == "folded" and after_conv):
            return layers.Identity(dtype=self.dtype_policy)
        return batch_normalization(
            synchronized=self.sync_batchnorm, epsilon=self.bn_epsilon, momentum=self.bn_momentum,
            scale=self.bn_scale, gamma_initializer="zeros" if zero_gamma else "ones",
            name=f"{self.name}_{suffix}_bn",
            dtype=self.dtype_policy)

    def _relu(self, suffix):
        return layers.Activation("relu", name=f"{self.name}_{suffix}", dtype=self.dtype_policy)

    def _build_shortcut(self, in_channels):
        """Creates `shortcut_layers`, applied in order by `_shortcut` ([] is the identity)."""
        kind = self._resolve_shortcut(in_channels)
        self.shortcut_kind = kind
        path = []
        if kind in ("avg_pool", "projection"):
            if kind == "avg_pool" and self.strides > 1:
                path.append(layers.AveragePooling2D(self.strides, strides=self.strides, padding="same",
                                                    name=f"{self.name}_0_pool", dtype=self.dtype_policy))
            # Post-activation projections end in a BatchNorm; pre-activation ones do not.
            followed_by_norm = not self.preactivation and self.normalization is not None
            path.append(layers.Conv2D(
                self.out_channels, 1, strides=self.strides if kind == "projection" else 1,
                use_bias=(self.conv_bias or self.normalization is None
                          or (self.normalization == "folded" and followed_by_norm)),
                kernel_initializer=self.kernel_initializer, kernel_regularizer=self.kernel_regularizer,
                name=f"{self.name}_0_conv", dtype=self.dtype_policy))
            if followed_by_norm:
                path.append(self._batch_norm("0"))
        elif kind == "zero_pad":
            path.append(ZeroPadShortcut(self.out_channels, self.strides, name=f"{self.name}_0_pad",
                                        dtype=self.dtype_policy))
        elif kind == "subsample" and self.strides > 1:
            path.append(layers.MaxPooling2D(1, strides=self.strides, name=f"{self.name}_0_pool",
                                            dtype=self.dtype_policy))
        self.shortcut_layers = path

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

    def _build_merge(self):
        """SE and drop path (identities when off), the `Add()` and the ReLU after it."""
        self.se = (SqueezeExcite(self.se_ratio, self.kernel_initializer, self.kernel_regularizer,
                                 name=f"{self.name}_se", dtype=self.dtype_policy)
                   if self.se_ratio else layers.Identity(dtype=self.dtype_policy))
        self._drop_path = (DropPath(self.drop_path_rate, name=f"{self.name}_drop_path",
                                    dtype=self.dtype_policy)
                           if self.drop_path_rate > 0 else layers.Identity(dtype=self.dtype_policy))
        self.add = layers.Add(name=f"{self.name}_add", dtype=self.dtype_policy)
        self.out_relu = self._relu("out")

    def _finish_build(self, input_shape):
        """Builds every sub-layer now, by one symbolic pass, so the weights exist
        before the first call (to load saved weights, to count parameters)."""
        self.call(keras.KerasTensor(tuple(input_shape), dtype=self.compute_dtype))
        self.built = True

    def _preactivate(self, inputs, training):
        """Pre-activation blocks: `(relu(bn(inputs)), shortcut)`. Projections take
        the normalised input, identities the raw one (He et al. 2016)."""
        x = self._relu0(self._bn0(inputs, training=training))
        projects = self.shortcut_kind in ("projection", "avg_pool")
        return x, self._shortcut(x if projects else inputs, training=training)

    def _shortcut(self, x, training=None):
        for layer in self.shortcut_layers:
            x = layer(x, training=training)
        return x

    # --- public helpers ----------------------------------------------------------
    def sublayers(self):
        """The block's sub-layers (identities left out), in the order they were built."""
        found, seen = [], set()
        for value in vars(self).values():
            for layer in value if isinstance(value, (list, tuple)) else [value]:
                if (isinstance(layer, layers.Layer) and not isinstance(layer, layers.Identity)
                        and id(layer) not in seen):
                    seen.add(id(layer))
                    found.append(layer)
                    if isinstance(layer, SqueezeExcite):
                        found += [layer.reduce, layer.expand]
        return found

    def get_layer(self, name):
        """The sub-layer called `name` (e.g. `"conv2_block1_1_conv"`)."""
        for layer in self.sublayers():
            if layer.name == name:
                return layer
        raise ValueError(f"No layer named {name!r} in block {self.name!r}. Received: name={name!r}. "
                         f"Valid: {[layer.name for layer in self.sublayers()]}")

    def conv_norm_pairs(self):
        """`[(conv, batchnorm), ...]`: each BatchNorm that directly follows a
        convolution (what `keras_resnet.deploy.fold_batchnorm` folds)."""
        ordered = [layer for layer in self.shortcut_layers + list(self.branch_layers)
                   if isinstance(layer, (layers.Conv2D, layers.BatchNormalization))]
        return [(a, b) for a, b in zip(ordered, ordered[1:])
                if isinstance(a, layers.Conv2D) and isinstance(b, layers.BatchNormalization)]

    def compute_output_shape(self, input_shape):
        return _strided_shape(input_shape, self.strides, self.out_channels)

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
            "bn_scale": self.bn_scale,
            "sync_batchnorm": self.sync_batchnorm,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
        }


@keras.saving.register_keras_serializable(package=PACKAGE)
class BasicBlock(ResidualBlock):
    """Two 3x3 convolutions (ResNet-18/34, the CIFAR ResNets, Wide ResNets).

    Extra args:
        width_dropout: Dropout between the two convolutions (Wide ResNets).
    """

    def __init__(self, filters, width_dropout=0.0, **kwargs):
        super().__init__(filters, **kwargs)
        self.width_dropout = float(width_dropout)

    def build(self, input_shape):
        self._build_shortcut(input_shape[-1])
        self._pad1, self._conv1 = self._conv("1", self.filters, 3, self.strides)
        self._bn1, self._relu1 = self._batch_norm("1"), self._relu("1_relu")
        self._dropout = (layers.Dropout(self.width_dropout, name=f"{self.name}_dropout",
                                        dtype=self.dtype_policy)
                         if self.width_dropout else layers.Identity(dtype=self.dtype_policy))
        _, self._conv2 = self._conv("2", self.filters, 3)
        self._bn2 = self._batch_norm("2", zero_gamma=self.zero_init_last_bn)
        self.branch_layers = [self._conv1, self._bn1, self._conv2, self._bn2]
        self._build_merge()
        self._finish_build(input_shape)

    def call(self, inputs, training=None):
        shortcut = self._shortcut(inputs, training=training)
        x = self._conv1(self._pad1(inputs))
        x = self._bn1(x, training=training)
        x = self._relu1(x)
        x = self._dropout(x, training=training)
        x = self._conv2(x)
        x = self._bn2(x, training=training)
        x = self.se(x)
        x = self._drop_path(x, training=training)
        x = self.add([shortcut, x])
        return self.out_relu(x)

    def get_config(self):
        return {**super().get_config(), "width_dropout": self.width_dropout}


@keras.saving.register_keras_serializable(package=PACKAGE)
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
        check_choice("stride_on", stride_on, ("3x3", "1x1"))
        if not isinstance(groups, int) or groups < 1:
            raise ValueError(f"`groups` must be a positive int. Received: groups={groups!r}")
        self.groups = groups
        self.base_width = int(base_width)
        self.stride_on = stride_on

    @property
    def width(self):
        return int(self.filters * (self.base_width / 64.0)) * self.groups

    def _build_bottleneck(self, conv3_bias=None):
        s1, s3 = (self.strides, 1) if self.stride_on == "1x1" else (1, self.strides)
        _, self._conv1 = self._conv("1", self.width, 1, s1)
        self._bn1, self._relu1 = self._batch_norm("1"), self._relu("1_relu")
        self._pad2, self._conv2 = self._conv("2", self.width, 3, s3, groups=self.groups)
        self._bn2, self._relu2 = self._batch_norm("2"), self._relu("2_relu")
        _, self._conv3 = self._conv("3", self.out_channels, 1, bias=conv3_bias,
                                    zero_kernel=self.preactivation and self.zero_init_last_bn)

    def build(self, input_shape):
        self._build_shortcut(input_shape[-1])
        self._build_bottleneck()
        self._bn3 = self._batch_norm("3", zero_gamma=self.zero_init_last_bn)
        self.branch_layers = [self._conv1, self._bn1, self._conv2, self._bn2, self._conv3, self._bn3]
        self._build_merge()
        self._finish_build(input_shape)

    def call(self, inputs, training=None):
        shortcut = self._shortcut(inputs, training=training)
        x = self._conv1(inputs)
        x = self._bn1(x, training=training)
        x = self._relu1(x)
        x = self._conv2(self._pad2(x))
        x = self._bn2(x, training=training)
        x = self._relu2(x)
        x = self._conv3(x)
        x = self._bn3(x, training=training)
        x = self.se(x)
        x = self._drop_path(x, training=training)
        x = self.add([shortcut, x])
        return self.out_relu(x)

    def get_config(self):
        return {**super().get_config(), "groups": self.groups,
                "base_width": self.base_width, "stride_on": self.stride_on}


@keras.saving.register_keras_serializable(package=PACKAGE)
class PreActBasicBlock(BasicBlock):
    """Pre-activation basic block (He et al. 2016): BN-ReLU-conv twice, no ReLU
    after the sum. Projection shortcuts take the normalised input."""

    preactivation = True

    def build(self, input_shape):
        self._build_shortcut(input_shape[-1])
        self._bn0 = self._batch_norm("preact", after_conv=False)
        self._relu0 = self._relu("preact_relu")
        self.preact_layers = [self._bn0]
        self._pad1, self._conv1 = self._conv("1", self.filters, 3, self.strides)
        self._bn1, self._relu1 = self._batch_norm("1"), self._relu("1_relu")
        self._dropout = (layers.Dropout(self.width_dropout, name=f"{self.name}_dropout",
                                        dtype=self.dtype_policy)
                         if self.width_dropout else layers.Identity(dtype=self.dtype_policy))
        # The last conv feeds the sum directly: a bias only where keras.applications has one.
        _, self._conv2 = self._conv("2", self.filters, 3, bias=self.conv_bias or self.normalization is None,
                                    zero_kernel=self.zero_init_last_bn)
        self.branch_layers = [self._conv1, self._bn1, self._conv2]
        self._build_merge()
        self._finish_build(input_shape)

    def call(self, inputs, training=None):
        x, shortcut = self._preactivate(inputs, training)
        x = self._conv1(self._pad1(x))
        x = self._bn1(x, training=training)
        x = self._relu1(x)
        x = self._dropout(x, training=training)
        x = self._conv2(x)
        x = self.se(x)
        x = self._drop_path(x, training=training)
        return self.add([shortcut, x])


@keras.saving.register_keras_serializable(package=PACKAGE)
class PreActBottleneckBlock(BottleneckBlock):
    """Pre-activation bottleneck (He et al. 2016; keras.applications ResNetV2)."""

    preactivation = True

    def build(self, input_shape):
        self._build_shortcut(input_shape[-1])
        self._bn0 = self._batch_norm("preact", after_conv=False)
        self._relu0 = self._relu("preact_relu")
        self.preact_layers = [self._bn0]
        # keras.applications V2 gives a bias only to the convs that feed the sum.
        self._build_bottleneck(conv3_bias=self.conv_bias or self.normalization is None)
        self.branch_layers = [self._conv1, self._bn1, self._conv2, self._bn2, self._conv3]
        self._build_merge()
        self._finish_build(input_shape)

    def _conv(self, suffix, filters, kernel_size, strides=1, groups=1, bias=None, zero_kernel=False):
        if bias is None and suffix in ("1", "2"):  # followed by a BatchNorm: no bias, even in V2
            bias = self.normalization != "batch"
        return super()._conv(suffix, filters, kernel_size, strides, groups, bias, zero_kernel)

    def call(self, inputs, training=None):
        x, shortcut = self._preactivate(inputs, training)
        x = self._conv1(x)
        x = self._bn1(x, training=training)
        x = self._relu1(x)
        x = self._conv2(self._pad2(x))
        x = self._bn2(x, training=training)
        x = self._relu2(x)
        x = self._conv3(x)
        x = self.se(x)
        x = self._drop_path(x, training=training)
        return self.add([shortcut, x])


@keras.saving.register_keras_serializable(package=PACKAGE)
class ResNet9Block(BasicBlock):
    """The residual unit of ResNet-9 (Page 2018, the DAWNBench CIFAR-10 net):
    `x + ReLU(BN(conv(ReLU(BN(conv(x))))))`. The branch ends in its own ReLU
    and nothing follows the `Add()`, so the sum of two non-negative tensors
    feeds the next convolution unchanged. It keeps the shape: an identity
    shortcut, stride 1, no SE, drop path or dropout."""

    def __init__(self, filters, **kwargs):
        super().__init__(filters, **kwargs)
        unsupported = {name: value for name, value in (
            ("strides", self.strides), ("shortcut", self.shortcut), ("se_ratio", self.se_ratio),
            ("drop_path_rate", self.drop_path_rate), ("width_dropout", self.width_dropout))
            if value not in (1, "auto", "identity", None, 0.0)}
        if unsupported:
            raise ValueError(f"ResNet9Block keeps the shape and has no SE, drop path or dropout. "
                             f"Received: {', '.join(f'{k}={v!r}' for k, v in unsupported.items())}")

    def build(self, input_shape):
        self.shortcut_kind, self.shortcut_layers = "identity", []
        self._pad1, self._conv1 = self._conv("1", self.filters, 3)
        self._bn1, self._relu1 = self._batch_norm("1"), self._relu("1_relu")
        _, self._conv2 = self._conv("2", self.filters, 3)
        self._bn2 = self._batch_norm("2", zero_gamma=self.zero_init_last_bn)
        self._relu2 = self._relu("2_relu")
        self.branch_layers = [self._conv1, self._bn1, self._conv2, self._bn2]
        self.add = layers.Add(name=f"{self.name}_add", dtype=self.dtype_policy)
        self._finish_build(input_shape)

    def call(self, inputs, training=None):
        x = self._conv1(self._pad1(inputs))
        x = self._bn1(x, training=training)
        x = self._relu1(x)
        x = self._conv2(x)
        x = self._bn2(x, training=training)
        x = self._relu2(x)
        return self.add([inputs, x])


@keras.saving.register_keras_serializable(package=PACKAGE)
class PatchWhitening(layers.Layer):
    """A stem that whitens `kernel_size` x `kernel_size` patches of its input.

    A 'valid' convolution whose filters are the eigenvectors of the patch
    covariance, each divided by the square root of its eigenvalue plus
    `epsilon`, and the same filters negated (so a following ReLU loses
    nothing): `2 * kernel_size**2 * channels` outputs. The filters are set
    from data by `adapt(images)` and then stay fixed; the bias is learned.
    Whitened inputs give every direction of pixel space the same scale, which
    lets the first layers learn in fewer steps (Page 2018; K. Jordan,
    "94% on CIFAR-10 in 3.29 seconds on a single GPU", 2024, where it saves a
    third of the epochs). Before `adapt`, the filters are a random
    orthogonal-like initialisation, so the layer also works unadapted.

    Args:
        kernel_size: Patch side (2 in airbench).
        epsilon: Added to each eigenvalue before the inverse square root.
    """

    def __init__(self, kernel_size=2, epsilon=5e-4, **kwargs):
        super().__init__(**kwargs)
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1:
            raise ValueError(f"`kernel_size` must be a positive int. Received: kernel_size={kernel_size!r}")
        if not isinstance(epsilon, (int, float)) or epsilon <= 0:
            raise ValueError(f"`epsilon` must be a positive number. Received: epsilon={epsilon!r}")
        self.kernel_size = kernel_size
        self.epsilon = float(epsilon)

    def build(self, input_shape):
        channels = int(input_shape[-1])
        self.filters = 2 * self.kernel_size ** 2 * channels
        self.kernel = self.add_weight(
            name="kernel", shape=(self.kernel_size, self.kernel_size, channels, self.filters),
            initializer="glorot_uniform", trainable=False)
        self.bias = self.add_weight(name="bias", shape=(self.filters,), initializer="zeros")

    def call(self, inputs):
        x = keras.ops.conv(inputs, keras.ops.cast(self.kernel, inputs.dtype), padding="valid")
        return x + keras.ops.cast(self.bias, x.dtype)

    def adapt(self, images):
        """Sets the filters from `images`, `[N, H, W, C]` as this layer receives
        them (after any normalisation in front of it)."""
        import numpy as np

        images = np.asarray(images, dtype=np.float64)
        k = self.kernel_size
        if images.ndim != 4 or images.shape[1] < k or images.shape[2] < k:
            raise ValueError(f"`images` must be [N, H, W, C] with H, W >= {k}. "
                             f"Received: images.shape={images.shape}")
        if not self.built:
            self.build(images.shape)
        if images.shape[-1] * k * k * 2 != self.filters:
            raise ValueError(f"`images` has {images.shape[-1]} channels; the layer was built for "
                             f"{self.filters // (2 * k * k)}. Received: images.shape={images.shape}")
        if not np.all(np.isfinite(images)):
            raise ValueError("`images` contains NaN or infinite values.")
        # Patches as rows of k*k*C values in the (kh, kw, c) order of a Keras
        # kernel; summed a few images at a time to bound the memory.
        dims = k * k * images.shape[-1]
        covariance, count = np.zeros((dims, dims)), 0
        for start in range(0, len(images), 64):
            windows = np.lib.stride_tricks.sliding_window_view(images[start:start + 64], (k, k), axis=(1, 2))
            patches = windows.transpose(0, 1, 2, 4, 5, 3).reshape(-1, dims)
            covariance += patches.T @ patches
            count += len(patches)
        covariance /= count
        eigenvalues, eigenvectors = np.linalg.eigh(covariance)
        filters = eigenvectors / np.sqrt(np.maximum(eigenvalues, 0.0) + self.epsilon)
        kernel = np.concatenate([filters, -filters], axis=1)
        self.kernel.assign(kernel.reshape(k, k, images.shape[-1], self.filters).astype("float32"))

    def compute_output_shape(self, input_shape):
        def side(n):
            return None if n is None else n - self.kernel_size + 1
        return (input_shape[0], side(input_shape[1]), side(input_shape[2]),
                2 * self.kernel_size ** 2 * input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "kernel_size": self.kernel_size, "epsilon": self.epsilon}


BLOCK_TYPES = {
    "basic": BasicBlock,
    "bottleneck": BottleneckBlock,
    "preact_basic": PreActBasicBlock,
    "preact_bottleneck": PreActBottleneckBlock,
}


def walk_layers(model):
    """Every layer of `model` (a model or a residual block), the sub-layers of
    residual blocks and nested models included, in order."""
    if isinstance(model, ResidualBlock):
        yield from model.sublayers()
        return
    for layer in model.layers:
        yield layer
        if isinstance(layer, ResidualBlock):
            yield from layer.sublayers()
        elif isinstance(layer, keras.Model):
            yield from walk_layers(layer)


def batch_normalization(synchronized=False, **kwargs):
    """The BatchNorm of a keras_resnet model: TensorFlow's fused op, or Keras's
    synchronized BatchNorm for `sync_batchnorm=True`."""
    if synchronized:
        return layers.BatchNormalization(synchronized=True, **kwargs)
    return FusedBatchNormalization(**kwargs)
