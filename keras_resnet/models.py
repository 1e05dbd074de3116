"""The ResNet factory: one generic functional builder, and `ResNet(...)` on top.

Families (see `keras_resnet.registry` for the named variants):
    imagenet: 7x7/2 conv + 3x3/2 max-pool stem, four stages conv2..conv5 with
        64/128/256/512 filters; depths 18, 34 (basic) and 50, 101, 152, 200
        (bottleneck).
    cifar: 3x3 stem and three stages conv2..conv4 with 16/32/64 filters;
        depth 6n+2 with basic blocks, 9n+2 with bottleneck blocks (He et al.
        2015 section 4.2, He et al. 2016 for the pre-activation 164/1001).
    resnet9: Page's 2018 DAWNBench CIFAR-10 net (`build_resnet9`): a 3x3 stem,
        three conv + max-pool stages with 128/256/512 filters, a residual
        unit after the first and the last; wide and shallow, the fastest
        route to ResNet-20 accuracy on a CPU.
Everything else (pre-activation, ResNet-C/D stems and shortcuts, SE, widths,
ResNeXt groups, stochastic depth) is an option of the same builder.
"""

import difflib
import inspect

import keras
from keras import layers

from keras_resnet import layers as blocks
from keras_resnet.preprocessing import normalization_layer

IMAGENET_DEPTHS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
    200: ("bottleneck", (3, 24, 36, 3)),
}
IMAGENET_FILTERS = (64, 128, 256, 512)
# keras.applications constructors by (depth, preact): the layouts `imagenet_layout` reproduces.
KERAS_APPLICATIONS = {
    (50, False): "ResNet50", (101, False): "ResNet101", (152, False): "ResNet152",
    (50, True): "ResNet50V2", (101, True): "ResNet101V2", (152, True): "ResNet152V2",
}
CIFAR_FILTERS = (16, 32, 64)
STEMS = ("imagenet", "cifar", "deep")
POOLINGS = ("avg", "max", None)
CIFAR_MAX_SIDE = 64  # with no depth, inputs up to this size get ResNet-20


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _validate_input_shape(input_shape):
    if input_shape is None:
        raise ValueError("`input_shape` is required, e.g. (32, 32, 3). Received: input_shape=None")
    try:
        shape = tuple(input_shape)
    except TypeError:
        raise ValueError(f"`input_shape` must be a tuple (height, width, channels). "
                         f"Received: input_shape={input_shape!r}") from None
    if len(shape) != 3:
        raise ValueError(
            f"`input_shape` must have rank 3 (height, width, channels), channels last. "
            f"Received: input_shape={input_shape!r}")
    for dim in shape[:2]:
        if dim is not None and (not _is_int(dim) or dim < 1):
            raise ValueError(f"`input_shape` sides must be positive ints or None. "
                             f"Received: input_shape={input_shape!r}")
    if not _is_int(shape[2]) or shape[2] < 1:
        raise ValueError(f"`input_shape` must end with a known channel count. "
                         f"Received: input_shape={input_shape!r}")
    return shape


def cifar_stages(depth, block="basic", width=1):
    """Stage layout of a CIFAR ResNet of the given depth."""
    per_block = 2 if block in ("basic", "preact_basic") else 3
    if not _is_int(depth) or depth < per_block + 2 or (depth - 2) % (3 * per_block):
        rule, ex = ("6n+2", "20, 32, 44, 56, 110") if per_block == 2 else ("9n+2", "56, 110, 164, 1001")
        raise ValueError(
            f"Invalid `depth` for a CIFAR ResNet with {block} blocks. Received: depth={depth!r}. "
            f"Valid CIFAR depths are {rule}, e.g. {ex}."
            + (f" For the ImageNet ResNet-{depth} on small inputs pass stem='imagenet'."
               if depth in IMAGENET_DEPTHS else ""))
    n = (depth - 2) // (3 * per_block)
    return [dict(blocks=n, filters=f * width, strides=s)
            for f, s in zip(CIFAR_FILTERS, (1, 2, 2))]


def imagenet_stages(depth):
    if not _is_int(depth) or depth not in IMAGENET_DEPTHS:
        raise ValueError(
            f"Invalid `depth` for an ImageNet ResNet. Received: depth={depth!r}. "
            f"Valid depths are {sorted(IMAGENET_DEPTHS)}.")
    block, counts = IMAGENET_DEPTHS[depth]
    stages = [dict(blocks=n, filters=f, strides=s)
              for n, f, s in zip(counts, IMAGENET_FILTERS, (1, 2, 2, 2))]
    return block, stages


def imagenet_layout(depth, preact):
    """Stage layout and options that reproduce keras.applications ResNet/ResNetV2.

    Raises:
        ValueError: for a depth keras.applications does not publish.
    """
    if (depth, bool(preact)) not in KERAS_APPLICATIONS:
        valid = sorted({d for d, _ in KERAS_APPLICATIONS})
        raise ValueError(
            f"`weights='imagenet'` exists only for depths {valid} (keras.applications "
            f"ResNet and ResNetV2). Received: weights='imagenet', depth={depth!r}"
            f"{', preact=True' if preact else ''}. Use weights=None or a weights file.")
    counts = IMAGENET_DEPTHS[depth][1]
    common = dict(conv_bias=True, bn_epsilon=1.001e-5)
    if not preact:
        stages = [dict(blocks=n, filters=f, strides=s)
                  for n, f, s in zip(counts, (64, 128, 256, 512), (1, 2, 2, 2))]
        return stages, dict(common, stride_on="1x1")
    # ResNetV2 strides the *last* block of conv2..conv4, on the 3x3, with a
    # 1x1 max-pool shortcut.
    stages = [dict(blocks=n, filters=f, strides=s)
              for n, f, s in zip(counts, (64, 128, 256, 512), (2, 2, 2, 1))]
    return stages, dict(common, stride_on="3x3", downsample_block="last", shortcut="subsample")


def _normalize_stages(stages):
    """Accepts dicts or (blocks, filters, strides) tuples; validates each."""
    if not stages:
        raise ValueError(f"`stages` must be a non-empty list. Received: stages={stages!r}")
    out = []
    for i, stage in enumerate(stages):
        if isinstance(stage, (tuple, list)) and len(stage) == 3:
            stage = dict(blocks=stage[0], filters=stage[1], strides=stage[2])
        if not isinstance(stage, dict) or not {"blocks", "filters", "strides"} <= set(stage):
            raise ValueError(
                f"Each stage must be a dict with 'blocks', 'filters', 'strides' (and optional "
                f"'block') or a (blocks, filters, strides) tuple. Received: stages[{i}]={stage!r}")
        for key in ("blocks", "filters"):
            if not _is_int(stage[key]) or stage[key] < 1:
                raise ValueError(f"`stages[{i}]['{key}']` must be a positive int. "
                                 f"Received: {key}={stage[key]!r}")
        if stage["strides"] not in (1, 2):
            raise ValueError(f"`stages[{i}]['strides']` must be 1 or 2. "
                             f"Received: strides={stage['strides']!r}")
        if "block" in stage:
            blocks.check_choice(f"stages[{i}]['block']", stage["block"], tuple(blocks.BLOCK_TYPES))
        out.append(dict(stage))
    return out


def _stem(x, stem, filters, preact, conv_kwargs, bn_kwargs):
    """conv1 (and pool1): ImageNet 7x7/2 + max-pool, CIFAR 3x3, or the deep 3x3 stack."""
    def bn_relu(x, prefix):
        if bn_kwargs is None:
            return layers.Activation("relu", name=f"{prefix}_relu")(x)
        x = blocks.batch_normalization(name=f"{prefix}_bn", **bn_kwargs)(x)
        return layers.Activation("relu", name=f"{prefix}_relu")(x)

    if stem == "cifar":
        x = layers.Conv2D(filters, 3, padding="same", name="conv1_conv", **conv_kwargs)(x)
        return x if preact else bn_relu(x, "conv1")
    if stem == "imagenet":
        x = layers.ZeroPadding2D(3, name="conv1_pad")(x)
        x = layers.Conv2D(filters, 7, strides=2, name="conv1_conv", **conv_kwargs)(x)
        if not preact:
            x = bn_relu(x, "conv1")
    else:  # deep: ResNet-C, three 3x3 convs (He et al. 2019, "Bag of Tricks")
        widths = (filters // 2, filters // 2, filters)
        for i, w in enumerate(widths, start=1):
            if i == 1:
                x = layers.ZeroPadding2D(1, name="conv1_1_pad")(x)
            x = layers.Conv2D(w, 3, strides=2 if i == 1 else 1,
                              padding="valid" if i == 1 else "same",
                              name=f"conv1_{i}_conv", **conv_kwargs)(x)
            if i < 3 or not preact:
                x = bn_relu(x, f"conv1_{i}")
    x = layers.ZeroPadding2D(1, name="pool1_pad")(x)
    return layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)


def _check_head_and_decay(include_top, num_classes, weight_decay, kernel_regularizer,
                          dropout_rate, classifier_activation):
    """The checks every builder shares; returns the kernel regularizer to use.

    `weight_decay` is an L2 coefficient in the SGD sense: Keras L2(l) adds
    l * sum(w**2), whose gradient is 2 * l * w, hence l = weight_decay / 2.
    """
    if include_top and (not _is_int(num_classes) or num_classes < 1):
        raise ValueError(f"`num_classes` must be a positive int. Received: num_classes={num_classes!r}")
    for arg, value in (("dropout_rate", dropout_rate), ("weight_decay", weight_decay)):
        if not _is_real(value):
            raise ValueError(f"`{arg}` must be a number. Received: {arg}={value!r}")
    if not 0.0 <= dropout_rate < 1.0:
        raise ValueError(f"`dropout_rate` must be in [0, 1). Received: dropout_rate={dropout_rate!r}")
    if weight_decay < 0:
        raise ValueError(f"`weight_decay` must be >= 0. Received: weight_decay={weight_decay!r}")
    if weight_decay and kernel_regularizer is not None:
        raise ValueError("Pass either `weight_decay` or `kernel_regularizer`, not both. "
                         f"Received: weight_decay={weight_decay}, kernel_regularizer={kernel_regularizer!r}")
    if classifier_activation is not None:
        try:
            keras.activations.get(classifier_activation)
        except (ValueError, TypeError):
            raise ValueError(f"Unknown `classifier_activation`. Received: "
                             f"classifier_activation={classifier_activation!r}") from None
    return keras.regularizers.L2(weight_decay / 2.0) if weight_decay else kernel_regularizer


def build_resnet(
    input_shape,
    num_classes,
    stages,
    block="bottleneck",
    stem="imagenet",
    stem_filters=64,
    shortcut="auto",
    downsample_block="first",
    stride_on="3x3",
    groups=1,
    base_width=64,
    normalization="batch",
    zero_init_last_bn=False,
    se_ratio=None,
    drop_path_rate=0.0,
    width_dropout=0.0,
    conv_bias=False,
    bn_epsilon=1e-5,
    bn_momentum=0.9,
    sync_batchnorm=False,
    weight_decay=0.0,
    kernel_regularizer=None,
    kernel_initializer="he_normal",
    include_top=True,
    pooling=None,
    classifier_activation="softmax",
    dropout_rate=0.0,
    input_tensor=None,
    preprocessing=None,
    name="resnet",
):
    """Builds a functional ResNet from an explicit stage layout.

    Args:
        input_shape: `(height, width, channels)`; sides may be `None`.
        num_classes: Classifier outputs (used when `include_top`).
        stages: List of `dict(blocks=, filters=, strides=[, block=])` or
            `(blocks, filters, strides)` tuples; stages are named conv2, conv3...
        block: Default block type: `basic`, `bottleneck`, `preact_basic`,
            `preact_bottleneck`.
        stem: `imagenet`, `cifar` or `deep` (ResNet-C).
        stem_filters: Channels of the stem.
        shortcut: See `keras_resnet.layers`; `auto` is identity or projection.
        downsample_block: `first` (standard) or `last` block of a stage
            carries the stride (keras.applications ResNetV2 layout).
        stride_on: Bottleneck stride on the `3x3` (v1.5) or first `1x1` (v1).
        groups, base_width: ResNeXt cardinality and group width.
        normalization: `batch` or `None` (no BatchNorm; convs get biases).
        zero_init_last_bn: Zero-initialise the last BN gamma of each block.
        se_ratio: Squeeze-and-excitation ratio (e.g. 1/16) or `None`.
        drop_path_rate: Stochastic depth; block i of N drops with
            `drop_path_rate * i / (N - 1)` (the linear rule).
        width_dropout: Dropout inside basic blocks (Wide ResNets).
        conv_bias: Convolution biases as in keras.applications.
        bn_epsilon, bn_momentum: BatchNorm hyper-parameters.
        sync_batchnorm: Cross-replica BatchNorm under `tf.distribute`.
        weight_decay: L2 coefficient in the SGD sense (the gradient gains
            `weight_decay * w`); applied to convolution and dense kernels.
        kernel_regularizer: A Keras regularizer instead of `weight_decay`.
        kernel_initializer: Kernel initializer (He normal by default).
        include_top: Add pooling and the classifier.
        pooling: Without top: `avg`, `max` or `None` (feature map out).
        classifier_activation: `softmax` (default) or `None` for logits.
        dropout_rate: Dropout before the classifier.
        input_tensor: Optional Keras tensor to use as the input.
        preprocessing: `None`, a preset (`cifar10`, `cifar100`, `imagenet`,
            `unit`) or `{"mean":, "std":}`: normalise 0-255 pixels in-model.
        name: Model name.

    Returns:
        A functional `keras.Model`.
    """
    # === Validate arguments ===
    shape = _validate_input_shape(input_shape)
    kernel_regularizer = _check_head_and_decay(include_top, num_classes, weight_decay, kernel_regularizer,
                                               dropout_rate, classifier_activation)
    stages = _normalize_stages(stages)
    blocks.check_choice("block", block, tuple(blocks.BLOCK_TYPES))
    blocks.check_choice("stem", stem, STEMS)
    blocks.check_choice("shortcut", shortcut, blocks.SHORTCUTS)
    blocks.check_choice("downsample_block", downsample_block, ("first", "last"))
    blocks.check_choice("stride_on", stride_on, ("3x3", "1x1"))
    blocks.check_choice("normalization", normalization, ("batch", None))
    blocks.check_choice("pooling", pooling, POOLINGS)
    for arg, value in (("drop_path_rate", drop_path_rate), ("se_ratio", se_ratio)):
        if not (_is_real(value) or (arg == "se_ratio" and value is None)):
            raise ValueError(f"`{arg}` must be a number. Received: {arg}={value!r}")
    if not 0.0 <= drop_path_rate < 1.0:
        raise ValueError(f"`drop_path_rate` must be in [0, 1). Received: drop_path_rate={drop_path_rate!r}")
    if se_ratio is not None and not 0.0 < se_ratio <= 1.0:
        raise ValueError(f"`se_ratio` must be in (0, 1] or None. Received: se_ratio={se_ratio!r}")
    downsampling = (4 if stem != "cifar" else 1) * 2 ** sum(s["strides"] == 2 for s in stages)
    for side in shape[:2]:
        if side is not None and side < downsampling:
            raise ValueError(
                f"`input_shape` is too small for this network, which downsamples by "
                f"{downsampling}: the smallest input is {downsampling}x{downsampling}. "
                f"Received: input_shape={tuple(input_shape)}")
    if preprocessing is not None:
        normalization_layer(preprocessing)  # validates early

    preact = block.startswith("preact")
    conv_kwargs = dict(use_bias=conv_bias or normalization is None,
                       kernel_initializer=kernel_initializer,
                       kernel_regularizer=kernel_regularizer)
    bn_kwargs = (dict(epsilon=bn_epsilon, momentum=bn_momentum, synchronized=sync_batchnorm)
                 if normalization == "batch" else None)

    # === Functional Model ===
    if input_tensor is None:
        inputs = layers.Input(shape=shape, name="image")
        x = inputs
    else:
        if not keras.backend.is_keras_tensor(input_tensor):
            inputs = layers.Input(tensor=input_tensor, shape=shape, name="image")
        else:
            inputs = input_tensor
        x = inputs
    if preprocessing is not None:
        x = normalization_layer(preprocessing)(x)

    x = _stem(x, stem, stem_filters, preact, conv_kwargs, bn_kwargs)

    total = sum(s["blocks"] for s in stages)
    index = 0
    for s_idx, stage in enumerate(stages):
        stage_name = f"conv{s_idx + 2}"
        block_cls = blocks.BLOCK_TYPES[stage.get("block", block)]
        for b in range(stage["blocks"]):
            stride_here = b == (0 if downsample_block == "first" else stage["blocks"] - 1)
            kwargs = dict(
                strides=stage["strides"] if stride_here else 1,
                shortcut=shortcut,
                normalization=normalization,
                zero_init_last_bn=zero_init_last_bn,
                se_ratio=se_ratio,
                drop_path_rate=drop_path_rate * index / max(total - 1, 1),
                conv_bias=conv_bias,
                bn_epsilon=bn_epsilon,
                bn_momentum=bn_momentum,
                sync_batchnorm=sync_batchnorm,
                kernel_initializer=kernel_initializer,
                kernel_regularizer=kernel_regularizer,
                name=f"{stage_name}_block{b + 1}",
            )
            if issubclass(block_cls, blocks.BottleneckBlock):
                kwargs.update(groups=groups, base_width=base_width, stride_on=stride_on)
            else:
                kwargs.update(width_dropout=width_dropout)
            x = block_cls(stage["filters"], **kwargs)(x)
            index += 1

    if preact:
        if bn_kwargs is not None:
            x = blocks.batch_normalization(name="post_bn", **bn_kwargs)(x)
        x = layers.Activation("relu", name="post_relu")(x)

    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        if dropout_rate:
            x = layers.Dropout(dropout_rate, name="head_dropout")(x)
        x = layers.Dense(num_classes, kernel_initializer="glorot_uniform",
                         kernel_regularizer=kernel_regularizer, name="predictions")(x)
        # The classifier output stays float32 under mixed precision, so the
        # softmax and the loss are computed at full precision.
        x = layers.Activation(classifier_activation or "linear", dtype="float32",
                              name="predictions_activation")(x)
    elif pooling == "avg":
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = layers.GlobalMaxPooling2D(name="max_pool")(x)

    if input_tensor is not None and keras.backend.is_keras_tensor(input_tensor):
        inputs = keras.utils.get_source_inputs(input_tensor)
        inputs = inputs[0] if len(inputs) == 1 else inputs  # a single input, like `image`
    return keras.Model(inputs, x, name=name)


RESNET9_RESIDUAL_UNITS = (1, 0, 1)  # after the conv2, conv3, conv4 transitions
RESNET9_STEMS = ("conv", "whitening")


def build_resnet9(
    input_shape=(32, 32, 3),
    num_classes=10,
    base_filters=64,
    zero_init_last_bn=False,
    bn_epsilon=1e-5,
    bn_momentum=0.9,
    sync_batchnorm=False,
    weight_decay=0.0,
    kernel_regularizer=None,
    kernel_initializer="he_normal",
    include_top=True,
    pooling=None,
    classifier_activation="softmax",
    logit_scale=0.125,
    dropout_rate=0.0,
    preprocessing=None,
    stem="conv",
    bn_scale=True,
    stage_filters=None,
    name="resnet9",
):
    """ResNet-9, the DAWNBench CIFAR-10 network of D. Page, "How to train your
    ResNet" (2018): 94% in 24 epochs on one V100.

    Layout (`base_filters=64`, 6.57M parameters): `conv1` 3x3 conv-BN-ReLU
    with 64 filters; then `conv2..conv4`, each a 3x3 conv with 128/256/512
    filters, a 2x2 max-pool, BN and ReLU (`conv2_conv`, `conv2_pool`,
    `conv2_bn`, `conv2_relu`); a `ResNet9Block` (two conv-BN-ReLU on an
    identity shortcut) follows conv2 and conv4; global max-pool; a bias-free
    classifier whose logits are multiplied by `logit_scale`. Pooling comes
    before the BatchNorm (as in Keller Jordan's airbench) so BN and ReLU run
    on a quarter of the pixels; max-pool commutes with the ReLU that follows.

    Args:
        input_shape: `(height, width, channels)`; each side at least 8.
        num_classes: Classifier outputs (used when `include_top`).
        base_filters: Stem width; the stages use 2x, 4x and 8x. 32 is
            `resnet9_half` (1.65M parameters, about 4x cheaper).
        zero_init_last_bn: Zero-initialise the last BN gamma of each residual
            unit, so it starts as the identity.
        bn_epsilon, bn_momentum, sync_batchnorm: BatchNorm options.
        weight_decay: L2 coefficient in the SGD sense (the gradient gains
            `weight_decay * w`), on every convolution and the classifier.
        kernel_regularizer: A Keras regularizer instead of `weight_decay`.
        kernel_initializer: For every convolution.
        include_top, pooling, classifier_activation, dropout_rate,
        preprocessing, name: as in `build_resnet`.
        logit_scale: Multiplies the logits. Page's 0.125 keeps the initial
            softmax soft: the max-pooled features of a fresh net are large.
        stem: `"conv"` (Page's 3x3 conv-BN-ReLU) or `"whitening"`: a
            `PatchWhitening` layer (`conv1_whiten`, 2x2 patches, 24 outputs
            for RGB) and a ReLU, its filters set from training images by
            `PatchWhitening.adapt` (`train()` does it before the first step).
        bn_scale: Learn BatchNorm scales; `False` fixes them at 1 (airbench).
        stage_filters: Filters of conv2, conv3 and conv4 instead of 2x, 4x
            and 8x `base_filters` (airbench94's widths are `(64, 256, 256)`).

    Returns:
        A functional `keras.Model`.
    """
    # === Validate arguments ===
    shape = _validate_input_shape(input_shape)
    kernel_regularizer = _check_head_and_decay(include_top, num_classes, weight_decay, kernel_regularizer,
                                               dropout_rate, classifier_activation)
    if not _is_int(base_filters) or base_filters < 1:
        raise ValueError(f"`base_filters` must be a positive int. Received: base_filters={base_filters!r}")
    blocks.check_choice("pooling", pooling, POOLINGS)
    if not _is_real(logit_scale):
        raise ValueError(f"`logit_scale` must be a number. Received: logit_scale={logit_scale!r}")
    for side in shape[:2]:
        if side is not None and side < 8:
            raise ValueError("`input_shape` is too small for ResNet-9, which max-pools three "
                             f"times: the smallest input is 8x8. Received: input_shape={tuple(input_shape)}")
    if preprocessing is not None:
        normalization_layer(preprocessing)  # validates early
    blocks.check_choice("stem", stem, RESNET9_STEMS)
    if stage_filters is None:
        stage_filters = tuple(base_filters * 2 ** (i + 1) for i in range(len(RESNET9_RESIDUAL_UNITS)))
    if (not isinstance(stage_filters, (tuple, list)) or len(stage_filters) != len(RESNET9_RESIDUAL_UNITS)
            or not all(_is_int(f) and f >= 1 for f in stage_filters)):
        raise ValueError("`stage_filters` must be 3 positive ints (conv2, conv3, conv4). "
                         f"Received: stage_filters={stage_filters!r}")
    if zero_init_last_bn and not bn_scale:
        raise ValueError("`zero_init_last_bn=True` needs a BatchNorm scale to set to zero. "
                         "Received: zero_init_last_bn=True, bn_scale=False")
    bn_kwargs = dict(epsilon=bn_epsilon, momentum=bn_momentum, synchronized=sync_batchnorm,
                     scale=bool(bn_scale))

    def conv(x, filters, prefix):
        return layers.Conv2D(filters, 3, padding="same", use_bias=False,
                             kernel_initializer=kernel_initializer,
                             kernel_regularizer=kernel_regularizer, name=f"{prefix}_conv")(x)

    def bn_relu(x, prefix):
        x = blocks.batch_normalization(name=f"{prefix}_bn", **bn_kwargs)(x)
        return layers.Activation("relu", name=f"{prefix}_relu")(x)

    # === Functional Model ===
    inputs = layers.Input(shape=shape, name="image")
    x = inputs
    if preprocessing is not None:
        x = normalization_layer(preprocessing)(x)
    if stem == "whitening":
        x = blocks.PatchWhitening(2, name="conv1_whiten")(x)
        x = layers.Activation("relu", name="conv1_relu")(x)
    else:
        x = bn_relu(conv(x, base_filters, "conv1"), "conv1")
    for i, units in enumerate(RESNET9_RESIDUAL_UNITS):
        prefix = f"conv{i + 2}"
        filters = int(stage_filters[i])
        x = conv(x, filters, prefix)
        x = layers.MaxPooling2D(2, name=f"{prefix}_pool")(x)
        x = bn_relu(x, prefix)
        for u in range(units):
            x = blocks.ResNet9Block(
                filters, zero_init_last_bn=zero_init_last_bn, bn_epsilon=bn_epsilon,
                bn_momentum=bn_momentum, sync_batchnorm=sync_batchnorm, bn_scale=bn_scale,
                kernel_initializer=kernel_initializer, kernel_regularizer=kernel_regularizer,
                name=f"{prefix}_block{u + 1}")(x)
    if include_top:
        x = layers.GlobalMaxPooling2D(name="max_pool")(x)
        if dropout_rate:
            x = layers.Dropout(dropout_rate, name="head_dropout")(x)
        x = layers.Dense(num_classes, use_bias=False, kernel_initializer="glorot_uniform",
                         kernel_regularizer=kernel_regularizer, name="predictions")(x)
        if logit_scale != 1:
            x = layers.Rescaling(logit_scale, name="logit_scale")(x)
        x = layers.Activation(classifier_activation or "linear", dtype="float32",
                              name="predictions_activation")(x)
    elif pooling == "avg":
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = layers.GlobalMaxPooling2D(name="max_pool")(x)
    return keras.Model(inputs, x, name=name)


# Options whose non-default values change which weights a ResNet has: the
# keras.applications ImageNet weights cannot fill them.
_ARCHITECTURE_DEFAULTS = dict(width=1, groups=1, base_width=64, se_ratio=None,
                              normalization="batch", stem_filters=64)
_RESNET_ARGS = ("input_shape", "num_classes", "depth", "stages", "block", "stem", "shortcut",
                "width", "preact", "weights", "name")


def _check_options(options):
    """A clear error for an unknown keyword of `ResNet`, listing the valid ones."""
    valid = set(inspect.signature(build_resnet).parameters) - {"input_shape", "num_classes", "name"}
    unknown = sorted(set(options) - valid)
    if unknown:
        choices = sorted(valid | set(_RESNET_ARGS))
        hints = {u: difflib.get_close_matches(u, choices, n=1) for u in unknown}
        hint = "".join(f" Did you mean {m[0]!r} for {u!r}?" for u, m in hints.items() if m)
        raise TypeError(
            f"ResNet() got unknown option(s) {unknown}.{hint} Valid options: {', '.join(choices)}.")


def ResNet(input_shape, num_classes=1000, depth=None, *, stages=None, block=None,
           stem=None, shortcut=None, width=1, preact=False, weights=None, name=None, **options):
    """Builds a ResNet: `keras_resnet.ResNet((32, 32, 3), 10)` just works.

    With no `depth`, inputs of at most 64 px a side get ResNet-20 (CIFAR style)
    and larger ones ResNet-50. For inputs of at most 64 px `depth` is read as a
    CIFAR depth (6n+2 basic, 9n+2 bottleneck); pass `stem="imagenet"` to put an
    ImageNet-style ResNet-18..200 on small images.

    Args:
        input_shape: `(height, width, channels)`.
        num_classes: Number of classes.
        depth: Network depth, or `None` for the default above.
        stages: An explicit stage layout instead of `depth` (see `build_resnet`).
        block: `basic` or `bottleneck` (the depth's default when `None`).
        stem: `imagenet`, `cifar` or `deep`; by default `cifar` for inputs of
            at most 64 px a side, `imagenet` otherwise.
        shortcut: Shortcut type; by default option A (`zero_pad`) for CIFAR
            basic-block nets, as in the paper, and `auto` (projection where the
            shape changes) for the others.
        width: Width multiplier (Wide ResNets).
        preact: Use pre-activation blocks (He et al. 2016).
        weights: `None`; `"imagenet"` (ResNet-50/101/152, v1 or
            pre-activation, via keras.applications; this forces the
            keras.applications layout); a tag of the model's name
            (`"torchvision_v2"`, `"timm_a1"`: `keras_resnet.weights.list_pretrained()`),
            which also sets `preprocessing` to the weights' mean/std unless
            given; an http(s) URL; or a `.weights.h5`, `.keras`,
            `.safetensors` or `.pth` file. A 1000-class checkpoint fills a
            model with another `num_classes` except its classifier.
        name: Model name (`resnet{depth}` by default).
        **options: Any other `build_resnet` argument.

    Returns:
        A functional `keras.Model`.
    """
    _check_options(options)
    shape = _validate_input_shape(input_shape)
    if stem is None:
        known = [d for d in shape[:2] if d is not None]
        stem = "cifar" if known and max(known) <= CIFAR_MAX_SIDE else "imagenet"
    blocks.check_choice("stem", stem, STEMS)
    if not _is_int(width) or width < 1:
        raise ValueError(f"`width` must be a positive int. Received: width={width!r}")
    if block is not None:
        blocks.check_choice("block", block, ("basic", "bottleneck"))
    if weights == "imagenet":
        depth = 50 if depth is None else depth
        layout_stages, layout = imagenet_layout(depth, preact)
        conflicts = {k: v for k, v in options.items() if k in layout and layout[k] != v}
        if shortcut not in (None, "auto", layout.get("shortcut", "auto")):
            conflicts["shortcut"] = shortcut
        if stem != "imagenet":
            conflicts["stem"] = stem
        if block not in (None, "bottleneck"):
            conflicts["block"] = block
        if conflicts:
            raise ValueError(
                "`weights='imagenet'` needs the keras.applications layout (ImageNet stem, "
                f"bottleneck blocks, {layout}). Received conflicting options: {conflicts}")
        changed = {k: v for k, v in dict(options, width=width).items()
                   if k in _ARCHITECTURE_DEFAULTS and v != _ARCHITECTURE_DEFAULTS[k]}
        if stages is not None and _normalize_stages(stages) != layout_stages:
            changed["stages"] = stages
        if changed:
            raise ValueError(
                "`weights='imagenet'` loads the keras.applications weights, which exist only "
                f"for the plain layout. Received architecture options it has no weights for: "
                f"{changed}. Drop them, or load the weights into a plain model and fine-tune.")
        stages = layout_stages
        options = {**options, **layout}
        shortcut = options.pop("shortcut", shortcut)
        block = "bottleneck"

    if stages is None:
        if depth is None:
            depth = 20 if stem == "cifar" else 50
        if not _is_int(depth) or depth < 1:
            raise ValueError(f"`depth` must be a positive int. Received: depth={depth!r}")
        if stem == "cifar":
            block = block or "basic"
            stages = cifar_stages(depth, block, width)
            options.setdefault("stem_filters", 16 * (1 if width == 1 else 1))
            if shortcut is None and block == "basic":
                shortcut = "zero_pad"
        else:
            default_block, stages = imagenet_stages(depth)
            block = block or default_block
            for s in stages:
                s["filters"] *= width
    else:
        block = block or "bottleneck"
    if preact:
        block = "preact_" + block
    if name is None:
        name = f"{'preact_' if preact else ''}resnet{depth or ''}"
    if weights is not None and weights != "imagenet":
        from keras_resnet.weights import resolve_tag

        # A tag is checked before anything is built, and brings the mean/std
        # its weights were trained with: the model takes 0-255 pixels.
        weights = resolve_tag(name, weights) or weights
        if hasattr(weights, "preprocessing"):
            options.setdefault("preprocessing", weights.preprocessing)
    model = build_resnet(shape, num_classes, stages, block=block, stem=stem,
                         shortcut=shortcut or "auto", name=name, **options)
    if weights is not None:
        from keras_resnet.weights import load_weights
        load_weights(model, weights, depth=depth, preact=preact)
    return model


def feature_extractor(model, stages=None):
    """A model that returns the stage outputs (`C2`..`C5`, or the CIFAR stages).

    Level `Ck` is the last feature map of stage `convk` at that stage's
    resolution (ImageNet stems: stride `2**k`). In the keras.applications
    ResNetV2 layout (`downsample_block="last"`), where a stage ends with its
    strided block, that is the input of the strided block.

    Args:
        model: A keras_resnet model (with or without top).
        stages: Names to return, e.g. `("C3", "C4", "C5")`; all by default.

    Returns:
        A `keras.Model` with the same input mapping to a dict `{"C2": ...}`.
        The feature maps share weights with `model`.
    """
    outputs = {}
    done = set()
    for layer in model.layers:
        if isinstance(layer, blocks.ResidualBlock) and layer.name.startswith("conv"):
            level = f"C{layer.name.split('_')[0][4:]}"  # "conv3_block4" -> "C3"
            if level in done:
                continue
            if level in outputs and layer.strides > 1:
                # downsample_block="last" (the keras.applications ResNetV2
                # layout): the stage's resolution is the input of its strided
                # last block, not its output (which belongs to the next level).
                outputs[level] = layer.input
                done.add(level)
            else:
                outputs[level] = layer.output  # the last block of a stage wins
    if not outputs:
        raise ValueError(f"`model` has no keras_resnet stages. Received: model={model.name!r}")
    if stages is not None:
        missing = [s for s in stages if s not in outputs]
        if missing:
            raise ValueError(f"Unknown stage names {missing}. Received: stages={list(stages)}. "
                             f"Valid: {sorted(outputs)}")
        outputs = {s: outputs[s] for s in stages}
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    return keras.Model(inputs, outputs, name=f"{model.name}_features")
