"""The block layers: shapes, parameter counts, serialization, and what each option does."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_resnet as kr
from harness import run_layer_test, sublayer, to_numpy


def _x(shape, seed=0, batch=2):
    return np.random.default_rng(seed).normal(0, 1, (batch,) + shape).astype("float32")


def _conv(x, layer, strides=1, padding="SAME"):
    """A reference convolution from the layer's own kernel and bias."""
    y = tf.nn.conv2d(x, layer.kernel, strides, padding)
    return y + layer.bias if layer.use_bias else y


def _convs(layer):
    return [l for l in layer.sublayers() if isinstance(l, keras.layers.Conv2D)]


# (class, kwargs, input shape, output shape, trainable, non-trainable)
# Counts by hand: a 3x3 conv c_in -> c_out has 9 c_in c_out weights, a BN has
# 2 trainable (gamma, beta) and 2 non-trainable (moving mean, variance) per channel.
LAYER_CASES = [
    # Basic, same shape: 2 x (9*16*16) + 2 BN(16).
    (kr.BasicBlock, dict(filters=16), (8, 8, 16), (8, 8, 16), 2 * 2304 + 64, 64),
    # Basic, option A: the zero-padded shortcut has no parameters.
    (kr.BasicBlock, dict(filters=32, strides=2, shortcut="zero_pad"), (8, 8, 16), (4, 4, 32),
     9 * 16 * 32 + 9 * 32 * 32 + 128, 128),
    # Basic, projection: + 1x1 conv 16->32 and its BN.
    (kr.BasicBlock, dict(filters=32, strides=2, shortcut="projection"), (8, 8, 16), (4, 4, 32),
     9 * 16 * 32 + 9 * 32 * 32 + 128 + 16 * 32 + 64, 192),
    # ResNet-D shortcut: average pool + 1x1 conv + BN, same parameters as projection.
    (kr.BasicBlock, dict(filters=32, strides=2, shortcut="avg_pool"), (8, 8, 16), (4, 4, 32),
     9 * 16 * 32 + 9 * 32 * 32 + 128 + 16 * 32 + 64, 192),
    # Odd input sides: every shortcut and branch agree on ceil(7 / 2) = 4.
    (kr.BasicBlock, dict(filters=32, strides=2, shortcut="zero_pad"), (7, 7, 16), (4, 4, 32), None, None),
    (kr.BasicBlock, dict(filters=32, strides=2, shortcut="avg_pool"), (7, 7, 16), (4, 4, 32), None, None),
    # Bottleneck 64 -> 16 -> 16 -> 64, identity shortcut.
    (kr.BottleneckBlock, dict(filters=16), (8, 8, 64), (8, 8, 64),
     64 * 16 + 9 * 16 * 16 + 16 * 64 + 2 * (16 + 16 + 64), 2 * (16 + 16 + 64)),
    # Bottleneck with projection and stride, v1 (stride on the first 1x1).
    (kr.BottleneckBlock, dict(filters=16, strides=2, stride_on="1x1"), (7, 7, 32), (4, 4, 64), None, None),
    # ResNeXt: 3x3 width = filters * base_width / 64 * groups = 16 * 8 / 64 * 4 = 8, 4 groups.
    (kr.BottleneckBlock, dict(filters=16, groups=4, base_width=8), (8, 8, 64), (8, 8, 64),
     64 * 8 + 9 * 8 * 8 // 4 + 8 * 64 + 2 * (8 + 8 + 64), 2 * (8 + 8 + 64)),
    # Pre-activation basic: BN on the input (16), BN after conv1; no BN after conv2.
    (kr.PreActBasicBlock, dict(filters=16), (8, 8, 16), (8, 8, 16), 2 * 2304 + 2 * 16 + 2 * 16, 64),
    # Pre-activation bottleneck, projection from the pre-activated input: the
    # shortcut conv has no BN; convs feeding the sum have a bias only with conv_bias.
    (kr.PreActBottleneckBlock, dict(filters=16, strides=2), (8, 8, 32), (4, 4, 64),
     2 * 32 + 32 * 16 + 2 * 16 + 9 * 16 * 16 + 2 * 16 + 16 * 64 + 32 * 64, 2 * (32 + 16 + 16)),
    (kr.PreActBottleneckBlock, dict(filters=16, strides=2, conv_bias=True, shortcut="subsample"),
     (8, 8, 64), (4, 4, 64), 2 * 64 + 64 * 16 + 2 * 16 + 9 * 16 * 16 + 2 * 16 + 16 * 64 + 64, 2 * (64 + 16 + 16)),
    # Squeeze-and-excitation: 16 -> 4 -> 16 with biases.
    (kr.SqueezeExcite, dict(ratio=0.25), (4, 4, 16), (4, 4, 16), 16 * 4 + 4 + 4 * 16 + 16, 0),
    (kr.ZeroPadShortcut, dict(filters=32, strides=2), (7, 7, 16), (4, 4, 32), 0, 0),
    # ResNet-9's unit: two 3x3 conv + BN on an identity shortcut.
    (kr.ResNet9Block, dict(filters=8), (4, 4, 8), (4, 4, 8), 2 * (9 * 8 * 8 + 2 * 8), 2 * 2 * 8),
    (kr.DropPath, dict(rate=0.2, seed=1), (4, 4, 8), (4, 4, 8), 0, 0),
]


@pytest.mark.parametrize("cls, kwargs, in_shape, out_shape, trainable, non_trainable", LAYER_CASES,
                         ids=[f"{c[0].__name__}-{i}" for i, c in enumerate(LAYER_CASES)])
def test_layer_contract(cls, kwargs, in_shape, out_shape, trainable, non_trainable):
    run_layer_test(cls, kwargs, in_shape, out_shape, trainable, non_trainable)


@pytest.mark.parametrize("cls", [kr.BasicBlock, kr.BottleneckBlock, kr.PreActBasicBlock,
                                 kr.PreActBottleneckBlock, kr.SqueezeExcite, kr.ZeroPadShortcut,
                                 kr.DropPath, kr.ResNet9Block])
def test_layers_are_registered_serializables(cls):
    assert keras.saving.get_registered_name(cls) == f"keras_resnet>{cls.__name__}"
    assert keras.saving.get_registered_object(f"keras_resnet>{cls.__name__}") is cls


def test_residual_sum_is_a_keras_add():
    block = kr.BasicBlock(8, name="b")
    block.build((None, 6, 6, 8))
    assert isinstance(block.add, keras.layers.Add)


def test_plain_block_without_normalization_is_conv_relu_conv_add_relu():
    """normalization=None: the textbook block, relu(conv2(relu(conv1(x))) + x), convs with biases."""
    block = kr.BasicBlock(8, normalization=None, name="plain")
    x = _x((6, 6, 8))
    y = to_numpy(block(x, training=True))
    assert [type(l).__name__ for l in block.sublayers()] == ["Conv2D", "Activation", "Conv2D", "Add", "Activation"]
    conv1, conv2 = _convs(block)
    assert conv1.use_bias and conv2.use_bias
    for conv in (conv1, conv2):  # give the biases a value, so they are exercised
        conv.bias.assign(np.linspace(-0.5, 0.5, 8).astype("float32"))
    y = to_numpy(block(x))
    expected = tf.nn.relu(_conv(tf.nn.relu(_conv(x, conv1)), conv2) + x)
    np.testing.assert_allclose(y, expected, atol=1e-5)


def test_plain_block_with_option_a_shortcut():
    block = kr.BasicBlock(16, strides=2, shortcut="zero_pad", normalization=None, name="plain")
    x = _x((6, 6, 8))
    y = to_numpy(block(x))
    conv1, conv2 = _convs(block)
    branch = _conv(tf.nn.relu(_conv(tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]]), conv1, 2, "VALID")), conv2)
    shortcut = np.pad(x[:, ::2, ::2, :], [(0, 0), (0, 0), (0, 0), (4, 4)])
    np.testing.assert_allclose(y, tf.nn.relu(branch + shortcut), atol=1e-5)


def test_zero_pad_shortcut_is_strided_identity_plus_zero_channels():
    x = _x((7, 7, 16))
    y = to_numpy(kr.ZeroPadShortcut(32, 2)(x))
    sub = x[:, ::2, ::2, :]
    np.testing.assert_array_equal(y[..., 8:24], sub)  # identity channels in the middle
    assert not np.any(y[..., :8]) and not np.any(y[..., 24:])


@pytest.mark.parametrize("shortcut, layer_types", [
    ("projection", ["Conv2D", "FusedBatchNormalization"]),
    ("avg_pool", ["AveragePooling2D", "Conv2D", "FusedBatchNormalization"]),
    ("zero_pad", ["ZeroPadShortcut"]),
    ("subsample", ["Conv2D", "FusedBatchNormalization"]),  # channels change: subsample needs a projection
])
def test_shortcut_layers_when_shape_changes(shortcut, layer_types):
    block = kr.BasicBlock(32, strides=2, shortcut=shortcut, name="b")
    block.build((None, 8, 8, 16))
    assert [type(l).__name__ for l in block.shortcut_layers] == layer_types
    if shortcut in ("projection", "avg_pool"):
        conv = block.shortcut_layers[-2]
        assert conv.kernel_size == (1, 1)
        assert conv.strides == ((2, 2) if shortcut == "projection" else (1, 1))


@pytest.mark.parametrize("shortcut", ["auto", "identity", "projection", "zero_pad", "avg_pool", "subsample"])
def test_same_shape_blocks_use_the_identity(shortcut):
    """Shortcut types only act where the shape changes; elsewhere it is x itself."""
    block = kr.BasicBlock(16, shortcut=shortcut, name="b")
    block.build((None, 6, 6, 16))
    assert block.shortcut_kind == "identity" and block.shortcut_layers == []


def test_subsample_shortcut_is_a_strided_max_pool_of_1():
    block = kr.PreActBottleneckBlock(16, strides=2, shortcut="subsample", name="b")
    x = _x((7, 7, 64))
    block(x)
    pool = block.shortcut_layers[0]
    assert isinstance(pool, keras.layers.MaxPooling2D) and pool.pool_size == (1, 1)
    np.testing.assert_array_equal(to_numpy(pool(x)), x[:, ::2, ::2, :])


def test_identity_shortcut_cannot_change_shape():
    block = kr.BasicBlock(32, strides=2, shortcut="identity", name="conv3_block1")
    with pytest.raises(ValueError, match=r"shortcut='identity'.*conv3_block1.*16 -> 32"):
        block.build((None, 8, 8, 16))
    with pytest.raises(ValueError, match="shortcut='zero_pad'"):
        kr.BasicBlock(8, strides=2, shortcut="zero_pad", name="b").build((None, 8, 8, 16))


@pytest.mark.parametrize("stride_on, strided, unstrided", [("3x3", "2", "1"), ("1x1", "1", "2")])
def test_bottleneck_stride_placement(stride_on, strided, unstrided):
    """v1.5 (torchvision/timm) strides the 3x3; v1 (paper, keras.applications) the first 1x1."""
    block = kr.BottleneckBlock(16, strides=2, stride_on=stride_on, name="b")
    x = _x((8, 8, 32))
    assert to_numpy(block(x)).shape == (2, 4, 4, 64)
    assert sublayer(block, f"b_{strided}_conv").strides == (2, 2)
    assert sublayer(block, f"b_{unstrided}_conv").strides == (1, 1)
    assert sublayer(block, "b_3_conv").strides == (1, 1)
    # A strided 3x3 pads symmetrically (1 each side, torchvision) instead of "same".
    names = [l.name for l in block.sublayers()]
    assert ("b_2_pad" in names) == (stride_on == "3x3")


@pytest.mark.parametrize("cls, kwargs, in_shape", [
    (kr.BasicBlock, {}, (6, 6, 8)),
    (kr.BottleneckBlock, {}, (6, 6, 32)),
    (kr.BasicBlock, dict(se_ratio=0.25, normalization="batch"), (6, 6, 8)),
])
def test_zero_init_last_bn_makes_a_fresh_block_the_identity(cls, kwargs, in_shape):
    """Post-activation: relu(x + 0) in inference and in training mode."""
    block = cls(8, zero_init_last_bn=True, name="b", **kwargs)
    x = _x(in_shape)
    for training in (False, True):
        np.testing.assert_allclose(to_numpy(block(x, training=training)), np.maximum(x, 0), atol=1e-6)
    gammas = {l.name: to_numpy(l.gamma) for l in block.sublayers()
              if isinstance(l, keras.layers.BatchNormalization)}
    last = "b_2_bn" if cls is kr.BasicBlock else "b_3_bn"
    assert not np.any(gammas.pop(last))
    assert all(np.all(g == 1) for g in gammas.values())
    # Without the option the block is not the identity.
    plain = cls(8, name="b2", **kwargs)
    assert not np.allclose(to_numpy(plain(x)), np.maximum(x, 0), atol=1e-3)


def test_resnet9_block_has_its_relu_on_the_branch_not_after_the_add():
    """x + relu(bn(conv(relu(bn(conv(x)))))): negative inputs pass the sum
    unchanged, and the branch alone is what gets rectified."""
    block = kr.ResNet9Block(8, zero_init_last_bn=True, name="u")
    x = _x((6, 6, 8))
    assert (x < 0).any()
    for training in (False, True):
        np.testing.assert_allclose(to_numpy(block(x, training=training)), x, atol=1e-6)
    assert not hasattr(block, "out_relu") and block.shortcut_kind == "identity"
    kinds = [type(l).__name__ for l in block.sublayers()]
    assert kinds == ["Conv2D", "FusedBatchNormalization", "Activation"] * 2 + ["Add"], kinds
    # With a fresh (non-zero) last BN the branch adds only non-negative values.
    plain = kr.ResNet9Block(8, name="v")
    y = to_numpy(plain(x, training=True))
    assert np.all(y - x >= -1e-6) and np.any(y - x > 1e-3)


def test_zero_init_last_bn_with_option_a_shortcut():
    block = kr.BasicBlock(16, strides=2, shortcut="zero_pad", zero_init_last_bn=True, name="b")
    x = _x((6, 6, 8))
    expected = np.maximum(np.pad(x[:, ::2, ::2, :], [(0, 0), (0, 0), (0, 0), (4, 4)]), 0)
    np.testing.assert_allclose(to_numpy(block(x)), expected, atol=1e-6)


@pytest.mark.parametrize("cls, in_shape", [(kr.PreActBasicBlock, (6, 6, 8)),
                                           (kr.PreActBottleneckBlock, (6, 6, 32))])
def test_zero_init_last_bn_pre_activation_blocks(cls, in_shape):
    """Pre-activation blocks end in a conv: its zero kernel makes the block x + 0, and
    the gradient still reaches that kernel so training can move it."""
    block = cls(8, zero_init_last_bn=True, name="b")
    x = _x(in_shape)
    np.testing.assert_allclose(to_numpy(block(x, training=True)), x, atol=1e-6)
    last = sublayer(block, "b_2_conv" if cls is kr.PreActBasicBlock else "b_3_conv")
    assert not np.any(to_numpy(last.kernel))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(block(x, training=True) * _x(in_shape, seed=1))
    grad = tape.gradient(loss, last.kernel)
    assert np.any(to_numpy(grad))


def test_squeeze_excite_gates_channels():
    se = kr.SqueezeExcite(0.25, name="se")
    x = _x((4, 4, 16))
    y = to_numpy(se(x))
    r, e = se.reduce, se.expand
    s = x.mean(axis=(1, 2), keepdims=True)
    h = np.maximum(np.einsum("nhwc,cd->nhwd", s, to_numpy(r.kernel)[0, 0]) + to_numpy(r.bias), 0)
    g = 1 / (1 + np.exp(-(np.einsum("nhwc,cd->nhwd", h, to_numpy(e.kernel)[0, 0]) + to_numpy(e.bias))))
    np.testing.assert_allclose(y, x * g, atol=1e-5)


def test_squeeze_excite_sits_on_the_residual_branch():
    """Closing the gate leaves relu(shortcut): SE scales the branch before the sum."""
    block = kr.BasicBlock(8, se_ratio=0.25, name="b")
    x = _x((6, 6, 8))
    block(x)
    block.se.expand.kernel.assign(np.zeros(block.se.expand.kernel.shape, "float32"))
    block.se.expand.bias.assign(np.full(block.se.expand.bias.shape, -100.0, "float32"))
    np.testing.assert_allclose(to_numpy(block(x)), np.maximum(x, 0), atol=1e-5)


def test_drop_path_identity_at_inference_whole_samples_in_training():
    drop = kr.DropPath(0.5, seed=0)
    x = _x((4, 4, 2), batch=256) + 3.0
    np.testing.assert_array_equal(to_numpy(drop(x, training=False)), x)
    np.testing.assert_array_equal(to_numpy(drop(x)), x)  # default: inference
    y = to_numpy(drop(x, training=True))
    kept = np.array([np.allclose(yi, 2 * xi) for xi, yi in zip(x, y)])
    dropped = np.array([not np.any(yi) for yi in y])
    assert np.all(kept ^ dropped), "every sample is either dropped whole or kept and scaled by 1/(1-rate)"
    assert 90 < dropped.sum() < 166  # Binomial(256, 0.5): ~ +-4.6 sigma
    np.testing.assert_array_equal(to_numpy(kr.DropPath(0.0)(x, training=True)), x)


def test_drop_path_in_a_block_drops_only_the_residual_branch():
    block = kr.BasicBlock(8, normalization=None, drop_path_rate=0.5, name="b")
    ref = kr.BasicBlock(8, normalization=None, name="r")
    x = _x((6, 6, 8), batch=64)
    ref(x)
    block(x)
    block.set_weights(ref.get_weights())
    np.testing.assert_allclose(to_numpy(block(x, training=False)), to_numpy(ref(x)), atol=1e-6)
    y = to_numpy(block(x, training=True))
    conv1, conv2 = _convs(ref)
    f = to_numpy(_conv(tf.nn.relu(_conv(x, conv1)), conv2))
    as_dropped = np.maximum(x, 0)
    as_kept = np.maximum(x + 2 * f, 0)
    dropped = np.array([np.allclose(a, b, atol=1e-5) for a, b in zip(y, as_dropped)])
    kept = np.array([np.allclose(a, b, atol=1e-5) for a, b in zip(y, as_kept)])
    assert np.all(dropped ^ kept) and 0 < dropped.sum() < 64


def test_kernel_initializer_and_regularizer_reach_every_conv():
    block = kr.BottleneckBlock(8, strides=2, se_ratio=0.25, kernel_initializer="ones",
                               kernel_regularizer=keras.regularizers.L2(0.5), name="b")
    block(_x((6, 6, 16)))
    convs = _convs(block)
    assert len(convs) == 6  # 1x1, 3x3, 1x1, projection, SE reduce, SE expand
    assert all(np.all(to_numpy(c.kernel) == 1) for c in convs)
    expected = sum(0.5 * float(np.sum(to_numpy(c.kernel) ** 2)) for c in convs)
    np.testing.assert_allclose(float(sum(to_numpy(l) for l in block.losses)), expected, rtol=1e-5)


def test_width_dropout_between_the_two_convs():
    block = kr.BasicBlock(8, width_dropout=0.3, name="b")
    block.build((None, 6, 6, 8))
    types = [type(l).__name__ for l in block.sublayers()]
    assert types == ["Conv2D", "FusedBatchNormalization", "Activation", "Dropout", "Conv2D",
                     "FusedBatchNormalization", "Add", "Activation"]


@pytest.mark.parametrize("cls, kwargs, match", [
    (kr.BasicBlock, dict(filters=0), "filters=0"),
    (kr.BasicBlock, dict(filters=8.0), "filters=8.0"),
    (kr.BasicBlock, dict(filters=8, strides=3), "strides=3"),
    (kr.BasicBlock, dict(filters=8, shortcut="magic"), "shortcut='magic'"),
    (kr.BasicBlock, dict(filters=8, normalization="layer"), "normalization='layer'"),
    (kr.BottleneckBlock, dict(filters=8, stride_on="2x2"), "stride_on='2x2'"),
    (kr.BottleneckBlock, dict(filters=8, groups=0), "groups=0"),
    (kr.SqueezeExcite, dict(ratio=0.0), "se_ratio=0.0"),
    (kr.DropPath, dict(rate=1.0), "rate=1.0"),
    (kr.DropPath, dict(rate=-0.1), "rate=-0.1"),
])
def test_bad_layer_arguments_raise_value_error(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


# ------------------------------------------------------------------ fused BatchNorm
@pytest.mark.parametrize("precision, atol", [("float32", 1e-5), ("mixed_bfloat16", 5e-2)])
def test_fused_batchnorm_matches_keras_batchnorm(precision, atol):
    # Training mode: TensorFlow's fused kernel differs from Keras 3's composition
    # by O(1/N) in the normalisation (N = 800 values per channel here): 3e-3.
    """Same outputs and moving statistics as keras.layers.BatchNormalization, in
    training and inference mode, and frozen (trainable=False) means inference mode."""
    from keras_resnet.layers import FusedBatchNormalization

    x = np.random.default_rng(0).normal(2.0, 3.0, (8, 10, 10, 8)).astype("float32")
    keras.mixed_precision.set_global_policy(precision)
    ours = FusedBatchNormalization(momentum=0.9, epsilon=1e-3)
    ref = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-3)
    keras.mixed_precision.set_global_policy("float32")
    for layer in (ours, ref):
        layer.build(x.shape)
        layer.set_weights([np.linspace(0.5, 1.5, 8), np.linspace(-1, 1, 8), np.full(8, 0.3), np.full(8, 2.0)])
    for training in (False, True):  # inference first: training moves the statistics
        got, want = to_numpy(ours(x, training=training)), to_numpy(ref(x, training=training))
        assert got.dtype == want.dtype
        tol = max(atol, 3e-3) if training else atol
        np.testing.assert_allclose(got.astype("float32"), want.astype("float32"), atol=tol)
    # One training call moved the statistics by the same rule (unbiased vs biased
    # variance: a relative 1/799 of the batch variance's 10% share).
    np.testing.assert_allclose(to_numpy(ours.moving_mean), to_numpy(ref.moving_mean), rtol=1e-4)
    np.testing.assert_allclose(to_numpy(ours.moving_variance), to_numpy(ref.moving_variance), rtol=1e-2)
    assert not np.allclose(to_numpy(ours.moving_mean), 0.3)
    ours.trainable = False
    before = to_numpy(ours.moving_mean).copy()
    frozen = to_numpy(ours(x, training=True)).astype("float32")
    np.testing.assert_array_equal(to_numpy(ours.moving_mean), before)
    np.testing.assert_allclose(frozen, to_numpy(ours(x, training=False)).astype("float32"), atol=1e-6)


def test_models_use_the_fused_batchnorm_unless_synchronized():
    from keras_resnet.layers import FusedBatchNormalization

    def bns(model):
        return [l for l in kr.walk_layers(model) if isinstance(l, keras.layers.BatchNormalization)]

    plain = bns(kr.ResNet((32, 32, 3), 10, depth=8))
    assert plain and all(isinstance(l, FusedBatchNormalization) for l in plain)
    synced = bns(kr.ResNet((32, 32, 3), 10, depth=8, sync_batchnorm=True))
    assert synced and not any(isinstance(l, FusedBatchNormalization) for l in synced)
    assert all(l.synchronized for l in synced)
