"""A shared harness that keeps model and layer tests short (after keras-hub's
`src/tests/test_case.py`).

    run_model_test(model, tmp_path)      the whole contract of a keras_resnet model
    run_layer_test(Block, kwargs, shape) the whole contract of a block layer

Helpers: `trainable_count`, `sublayer` (find a layer inside the blocks),
`summary_rows`, `random_inputs`, `randomize_weights`, `depth_of`.
"""

import copy
import os

import keras
import numpy as np
import tensorflow as tf

import keras_resnet as kr


def trainable_count(model):
    return int(sum(np.prod(w.shape) for w in model.trainable_weights))


def to_numpy(x):
    return keras.ops.convert_to_numpy(x)


def all_layers(model):
    """Every layer of `model`, the ones nested inside blocks included."""
    return list(kr.walk_layers(model))


def sublayer(model, name):
    """The layer called `name`, looked up inside the residual blocks too."""
    found = [layer for layer in all_layers(model) if layer.name == name]
    if len(found) != 1:
        raise KeyError(f"{len(found)} layers named {name!r} in {model.name!r}")
    return found[0]


def blocks_of(model):
    return [layer for layer in model.layers if isinstance(layer, kr.ResidualBlock)]


def depth_of(model):
    """The depth as the papers count it: convolutions on the residual path of
    every block (shortcut and SE convs excluded), plus the stem conv and the
    classifier."""
    convs = 0
    for block in blocks_of(model):
        convs += sum(isinstance(l, keras.layers.Conv2D) for l in block.branch_layers)
    return convs + 2


def summary_rows(model):
    """`(layer name, class name, output shape, parameter count)` of each row
    `model.summary()` prints (rendered 160 columns wide: rich cuts the columns
    of a narrow, non-interactive console)."""
    lines = []
    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "160"
    try:
        model.summary(print_fn=lambda line, *args, **kwargs: lines.append(line))
    finally:
        if previous is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = previous
    rows = []
    for line in "\n".join(lines).splitlines():
        if not line.startswith("\u2502"):  # "│": a table row
            continue
        cells = [c.strip() for c in line.strip("\u2502 ").split("\u2502")]
        name, _, cls = cells[0].partition(" (")
        rows.append((name, cls.rstrip(")"), cells[1], int(cells[2].replace(",", ""))))
    return rows


def random_inputs(model, batch=2, seed=0):
    """Random images for `model`: raw 0-255 pixels when the model normalises
    them itself (`preprocessing=`), unit-scale values otherwise."""
    shape = (batch,) + tuple(model.input_shape[1:])
    rng = np.random.default_rng(seed)
    if any(layer.name == "preprocessing" for layer in model.layers):
        return rng.uniform(0, 255, shape).astype("float32")
    return rng.normal(0, 1, shape).astype("float32")


def randomize_weights(model, seed=0):
    """Random values for every weight, BatchNorm moving statistics included, so
    that a comparison between two models cannot pass by symmetry (fresh BN is
    gamma 1, beta 0, mean 0, variance 1, i.e. almost the identity)."""
    rng = np.random.default_rng(seed)
    for w in model.weights:
        name = w.path.rsplit("/", 1)[-1]
        shape = tuple(w.shape)
        if name in ("moving_variance", "gamma"):
            value = rng.uniform(0.5, 1.5, shape)
        elif name in ("moving_mean", "beta", "bias"):
            value = rng.normal(0.0, 0.1, shape)
        else:  # kernels: He-normal scale keeps deep activations finite
            fan_in = max(1, int(np.prod(shape[:-1])))
            value = rng.normal(0.0, np.sqrt(1.0 / fan_in), shape)
        w.assign(value.astype(w.dtype))


def _assert_same(actual, expected, what):
    actual, expected = to_numpy(actual), to_numpy(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    # Exact: the same weights through the same layers in the same process give the same bits.
    np.testing.assert_array_equal(actual, expected, err_msg=what)


def check_gradients(model, x, allow_zero=()):
    """Every trainable weight gets a gradient that is not all zeros, in training mode."""
    with tf.GradientTape() as tape:
        out = model(x, training=True)
        out = tf.cast(out, tf.float32)
        # A random projection of the outputs: every output unit matters.
        loss = tf.reduce_sum(out * tf.random.stateless_normal(tf.shape(out), seed=(1, 2)))
    assert np.isfinite(to_numpy(out)).all(), "NaN/Inf in training-mode outputs"
    grads = tape.gradient(loss, model.trainable_weights)
    missing = [w.path for w, g in zip(model.trainable_weights, grads) if g is None]
    assert not missing, f"no gradient for {len(missing)} weights, e.g. {missing[:5]}"
    zero = [w.path for w, g in zip(model.trainable_weights, grads)
            if not np.any(to_numpy(g)) and not any(p in w.path for p in allow_zero)]
    assert not zero, f"all-zero gradient for {len(zero)} weights, e.g. {zero[:5]}"
    bad = [w.path for w, g in zip(model.trainable_weights, grads) if not np.isfinite(to_numpy(g)).all()]
    assert not bad, f"non-finite gradient for {bad[:5]}"
    return out


def run_model_test(model, tmp_dir, batch=2, expected_output_shape=None, gradients=True,
                   finite_at_inference=True, allow_zero_grad=()):
    """The contract of every keras_resnet model.

    1. training-mode forward: shape, finite; every trainable weight gets a
       non-zero, finite gradient (`gradients=True`);
    2. inference forward: shape, finite (`finite_at_inference`; very deep nets
       with fresh BatchNorm statistics legitimately overflow);
    3. `get_config` -> `keras.Model.from_config` -> same config, same weights
       give identical outputs;
    4. `.keras` save -> `keras.saving.load_model(safe_mode=True)` restores the
       same layer types and identical outputs.

    Returns the inference outputs.
    """
    x = random_inputs(model, batch)
    expected = (batch,) + tuple(model.output_shape[1:])
    if expected_output_shape is not None:
        assert tuple(model.output_shape) == tuple(expected_output_shape), model.output_shape
    if gradients:
        out = check_gradients(model, x, allow_zero_grad)
        assert tuple(out.shape) == expected
    # Inference outputs are taken after the training pass (which moved the
    # BatchNorm statistics), so the copies below are compared like for like.
    y = to_numpy(model(x, training=False))
    assert y.shape == expected, f"output shape {y.shape} != {expected}"
    if finite_at_inference:
        assert np.isfinite(y).all(), "NaN/Inf in inference outputs"

    config = model.get_config()
    clone = keras.Model.from_config(copy.deepcopy(config))  # from_config consumes its argument
    assert clone.get_config() == config, "get_config/from_config is not a fixed point"
    clone.set_weights(model.get_weights())
    _assert_same(clone(x, training=False), y, "from_config clone")
    del clone

    path = os.path.join(str(tmp_dir), f"{model.name}.keras")
    model.save(path)
    restored = keras.saving.load_model(path, safe_mode=True)
    assert [type(l).__name__ for l in restored.layers] == [type(l).__name__ for l in model.layers]
    _assert_same(restored(x, training=False), y, ".keras round trip")
    return y


def run_layer_test(layer_cls, init_kwargs, input_shape, expected_output_shape,
                   expected_trainable=None, expected_non_trainable=None, batch=2, seed=0):
    """The contract of a keras_resnet layer: output shape (eager and symbolic),
    weight counts, config round trip (`from_config` and
    `keras.saving.serialize/deserialize`, safe mode) with identical outputs,
    and a gradient for every trainable weight."""
    x = np.random.default_rng(seed).normal(0, 1, (batch,) + tuple(input_shape)).astype("float32")
    layer = layer_cls(**init_kwargs)
    y = to_numpy(layer(x, training=False))
    assert y.shape == (batch,) + tuple(expected_output_shape), y.shape
    assert np.isfinite(y).all()
    symbolic = layer_cls(**init_kwargs)(keras.Input(tuple(input_shape)))
    assert tuple(symbolic.shape) == (None,) + tuple(expected_output_shape)
    if expected_trainable is not None:
        assert sum(int(np.prod(w.shape)) for w in layer.trainable_weights) == expected_trainable
    if expected_non_trainable is not None:
        assert sum(int(np.prod(w.shape)) for w in layer.non_trainable_weights) == expected_non_trainable

    config = layer.get_config()
    for k, v in init_kwargs.items():
        if isinstance(v, (int, float, str, bool, type(None))):
            assert config[k] == v, f"get_config()[{k!r}] = {config[k]!r}, expected {v!r}"
    clone = layer_cls.from_config(copy.deepcopy(config))
    clone(x)
    clone.set_weights(layer.get_weights())
    _assert_same(clone(x, training=False), y, "from_config clone")
    revived = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(layer), safe_mode=True)
    assert type(revived) is layer_cls
    revived(x)
    revived.set_weights(layer.get_weights())
    _assert_same(revived(x, training=False), y, "serialize/deserialize")

    if layer.trainable_weights:
        with tf.GradientTape() as tape:
            out = layer(x, training=True)
            loss = tf.reduce_sum(out * tf.random.stateless_normal(tf.shape(out), seed=(3, 4)))
        grads = tape.gradient(loss, layer.trainable_weights)
        dead = [w.path for w, g in zip(layer.trainable_weights, grads) if g is None or not np.any(to_numpy(g))]
        assert not dead, f"no gradient for {dead}"
    return layer, y
