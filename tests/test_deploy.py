"""`keras_resnet.deploy.fold_batchnorm`: the one deploy transform (export and in-process inference)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_resnet as kr
from harness import randomize_weights

# One model of each block and shortcut kind, small, emitting logits (softmax
# would hide differences) from normalised inputs.
COMMON = dict(classifier_activation=None, preprocessing="cifar10")
MODELS = {
    "basic_option_a": lambda: kr.ResNet((32, 32, 3), 10, depth=8, **COMMON),
    "preact_basic": lambda: kr.ResNet((32, 32, 3), 10, depth=8, preact=True, **COMMON),
    "bottleneck_se_resnext": lambda: kr.ResNet(
        (32, 32, 3), 10, stages=[(1, 8, 1), (1, 16, 2)], block="bottleneck", stem="cifar",
        stem_filters=8, groups=2, base_width=32, se_ratio=0.25, drop_path_rate=0.1, **COMMON),
    "resnet_d": lambda: kr.ResNet((32, 32, 3), 10, stages=[(1, 8, 1), (1, 16, 2)], block="basic",
                                  stem="deep", stem_filters=8, shortcut="avg_pool", **COMMON),
    "v1_conv_bias": lambda: kr.ResNet((32, 32, 3), 10, stages=[(1, 8, 1), (1, 16, 2)],
                                      stem="imagenet", stem_filters=8, conv_bias=True,
                                      stride_on="1x1", **COMMON),
    "v2_preact_subsample": lambda: kr.ResNet(
        (32, 32, 3), 10, stages=[(2, 8, 2), (1, 16, 1)], preact=True, stem="imagenet",
        stem_filters=8, conv_bias=True, downsample_block="last", shortcut="subsample", **COMMON),
    "resnet9": lambda: kr.models.build_resnet9((32, 32, 3), 10, base_filters=8, **COMMON),
}
# Relative to the largest logit: float32 rounding; bfloat16's 8-bit mantissa.
TOLERANCE = {"float32": 1e-5, "mixed_bfloat16": 3e-2}


def _batchnorms(model):
    return [l for l in kr.walk_layers(model) if isinstance(l, keras.layers.BatchNormalization)]


@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_folded_model_computes_the_same_outputs(name, precision):
    keras.mixed_precision.set_global_policy(precision)
    model = MODELS[name]()
    keras.mixed_precision.set_global_policy("float32")
    randomize_weights(model)
    x = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    folded = kr.fold_batchnorm(model)
    expected = np.asarray(model(x, training=False), "float32")
    got = np.asarray(folded(x, training=False), "float32")
    assert np.max(np.abs(got - expected)) <= TOLERANCE[precision] * np.max(np.abs(expected))
    # Same precision as the model it came from.
    assert folded.get_layer("predictions").compute_dtype == model.get_layer("predictions").compute_dtype


@pytest.mark.parametrize("name, left", [
    ("basic_option_a", 0), ("bottleneck_se_resnext", 0), ("resnet_d", 0), ("v1_conv_bias", 0),
    # Pre-activation BatchNorms follow a sum, not a convolution: 3 blocks + post_bn.
    ("preact_basic", 4),
    # v2: 3 pre-activation BatchNorms + post_bn.
    ("v2_preact_subsample", 4),
    # ResNet-9's stage BatchNorms follow a max-pool (conv -> pool -> BN): 3 stay.
    ("resnet9", 3),
])
def test_every_batchnorm_after_a_convolution_is_gone(name, left):
    model = MODELS[name]()
    folded = kr.fold_batchnorm(model)
    assert len(_batchnorms(folded)) == left
    removed = len(_batchnorms(model)) - left
    # Each folded BatchNorm's 4 x C weights became (at most) a C-wide conv bias.
    assert folded.count_params() < model.count_params() or removed == 0


def test_folded_model_has_its_own_weights():
    model = MODELS["basic_option_a"]()
    randomize_weights(model)
    x = np.random.default_rng(1).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    folded = kr.fold_batchnorm(model)
    before = np.asarray(folded(x, training=False))
    for w in model.weights:
        w.assign(np.zeros(w.shape, w.dtype))
    np.testing.assert_array_equal(np.asarray(folded(x, training=False)), before)


def test_keras_applications_style_functional_model_is_folded_too():
    inputs = keras.Input((16, 16, 3))
    y = keras.layers.Conv2D(4, 3, use_bias=False, name="c")(inputs)
    y = keras.layers.BatchNormalization(name="bn")(y)
    branch = keras.layers.Conv2D(4, 1, name="c2")(y)
    # c2's output feeds a BatchNorm and a second reader: folding would change the latter.
    z = keras.layers.Add()([keras.layers.BatchNormalization(name="bn2")(branch), branch])
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(z))
    randomize_weights(model)
    folded = kr.fold_batchnorm(model)
    assert [l.name for l in _batchnorms(folded)] == ["bn2"]
    x = np.random.default_rng(2).normal(size=(2, 16, 16, 3)).astype("float32")
    np.testing.assert_allclose(folded(x), model(x, training=False), atol=1e-5)


def test_folded_graph_is_conv_biasadd_relu_without_batchnorm_ops():
    model = MODELS["basic_option_a"]()
    folded = kr.fold_batchnorm(model)
    graph = tf.function(lambda x: folded(x, training=False)).get_concrete_function(
        tf.TensorSpec((None, 32, 32, 3), tf.float32)).graph
    types = [op.type for op in graph.get_operations()]
    assert "FusedBatchNormV3" not in types and "Rsqrt" not in types
    assert types.count("Conv2D") == types.count("BiasAdd") - 1  # + the classifier's bias


def test_bad_argument_is_a_clear_error():
    with pytest.raises(ValueError, match="Received: model="):
        kr.fold_batchnorm("resnet20")


def test_a_conv_output_read_elsewhere_is_not_folded():
    """A conv whose output is also a model output, or read by a plain op, keeps its BatchNorm."""
    inputs = keras.Input((8, 8, 3))
    y = keras.layers.Conv2D(4, 3, name="c")(inputs)
    z = keras.layers.BatchNormalization(name="bn")(y)
    as_output = keras.Model(inputs, [y, z])
    randomize_weights(as_output)
    assert [l.name for l in _batchnorms(kr.fold_batchnorm(as_output))] == ["bn"]
    y2 = keras.layers.Conv2D(4, 3, name="c2")(inputs)
    summed = keras.layers.BatchNormalization(name="bn2")(y2) + keras.ops.relu(y2)
    as_op = keras.Model(inputs, summed)
    randomize_weights(as_op)
    folded = kr.fold_batchnorm(as_op)
    assert [l.name for l in _batchnorms(folded)] == ["bn2"]
    x = np.random.default_rng(3).normal(size=(2, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(folded(x), as_op(x, training=False), atol=1e-5)


def test_sequential_models_are_refused_clearly_and_left_alone_by_evaluation():
    from keras_resnet.deploy import is_foldable_model

    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3),
                              keras.layers.BatchNormalization(), keras.layers.GlobalAveragePooling2D()])
    assert not is_foldable_model(model)
    with pytest.raises(ValueError, match="Sequential and subclassed"):
        kr.fold_batchnorm(model)
