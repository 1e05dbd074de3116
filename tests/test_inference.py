"""`keras_resnet.InferenceSnapshot`: inference from weights folded once.

Its outputs must equal the model's own inference (Winograd and direct paths,
nontrivial BatchNorm statistics), its graphs must hold no per-call weight work
(no Winograd filter transform), it must keep the weights it read until
`refresh()`, and its `predict` must batch arrays and datasets like Keras's.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_resnet as kr


def small_bottleneck_net():
    # As in test_winograd.py: two stride-1 128-channel 3x3 convolutions at 16x16.
    # Logits (no softmax), so the comparisons see every output, not a saturated one.
    return kr.build_resnet((32, 32, 3), num_classes=10, block="bottleneck", stem="cifar",
                           stages=[(1, 32, 1), (3, 128, 2)], classifier_activation=None)


def randomize(model, seed):
    """Every weight moved: BatchNorm statistics and affine parameters far from
    their initial values (a wrong or missing fold shows), every kernel and bias
    (the stem and the classifier included) scaled and shifted."""
    rng = np.random.default_rng(seed)
    for w in model.weights:
        shape = tuple(w.shape)
        if w.path.endswith("moving_variance") or w.path.endswith("gamma"):
            w.assign(rng.uniform(0.5, 2.0, shape).astype("float32"))
        elif w.path.endswith("moving_mean") or w.path.endswith("beta"):
            w.assign(rng.normal(0.0, 0.5, shape).astype("float32"))
        else:
            value = w.numpy()
            w.assign((value * rng.uniform(0.7, 1.3, shape)
                      + rng.normal(0.0, 0.1 * (value.std() + 1e-3), shape)).astype("float32"))


def op_types(concrete):
    graph = concrete.graph
    types = [op.type for op in graph.get_operations()]
    for f in graph._functions.values():  # tf.cond branches
        types += [op.type for op in f.graph.get_operations()]
    return types


def images(batch, seed=0):
    return tf.constant(np.random.default_rng(seed).uniform(0, 255, (batch, 32, 32, 3)), tf.float32)


def test_snapshot_matches_the_model_and_drops_the_per_call_weight_work(ops):
    model = small_bottleneck_net()
    randomize(model, 0)
    snapshot = kr.InferenceSnapshot(model)
    for batch in (8, 1):  # 128 tiles (Winograd) and 16 (direct) at 16x16
        x = images(batch, batch)
        want = model.predict_on_batch(x)
        assert np.abs(want).std() > 0.1  # logits that differ, not a constant
        np.testing.assert_allclose(snapshot(x).numpy(), want, atol=1e-5 * np.abs(want).max(), rtol=1e-4)
    spec = tf.TensorSpec((8, 32, 32, 3), tf.float32)
    plain = op_types(tf.function(lambda v: model(v, training=False)).get_concrete_function(spec))
    frozen = op_types(snapshot._function.get_concrete_function(spec))
    assert plain.count("KerasResnetWinogradFilter") == 2
    assert frozen.count("KerasResnetWinogradFilter") == 0  # transformed once, at the snapshot
    assert frozen.count("KerasResnetWinogradInput") == 2  # still Winograd convolutions
    # The plain graph reads every BatchNorm's variables each call; the snapshot none.
    assert plain.count("Rsqrt") > 0 and frozen.count("Rsqrt") == 0


def test_snapshot_keeps_the_weights_it_read_until_refresh(ops):
    model = small_bottleneck_net()
    randomize(model, 1)
    x = images(8)
    before = model.predict_on_batch(x)
    snapshot = kr.InferenceSnapshot(model)
    randomize(model, 2)  # e.g. more training, or load_weights: every weight changes
    after = model.predict_on_batch(x)
    assert np.abs(after - before).max() > 0.1 * np.abs(before).max()
    tol = 1e-5 * np.abs(before).max()
    np.testing.assert_allclose(snapshot(x).numpy(), before, atol=tol, rtol=1e-4)
    # A batch size first seen now must use the same (old) weights, not a mix.
    np.testing.assert_allclose(snapshot(x[:3]).numpy(), before[:3], atol=tol, rtol=1e-4)
    np.testing.assert_allclose(snapshot.refresh()(x).numpy(), after, atol=tol, rtol=1e-4)
    # Only the classifier changes: still the old weights (they are copied, not read live).
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)][-1]
    dense.kernel.assign(dense.kernel.numpy() * 2.0)
    np.testing.assert_allclose(snapshot(x).numpy(), after, atol=tol, rtol=1e-4)


def test_predict_batches_arrays_and_datasets_like_keras():
    model = kr.create_model("resnet20", input_shape=(32, 32, 3), num_classes=10,
                            classifier_activation=None)
    randomize(model, 3)
    x = images(11).numpy()
    want = model.predict(x, batch_size=4, verbose=0)
    snapshot = kr.InferenceSnapshot(model)
    np.testing.assert_allclose(snapshot.predict(x, batch_size=4), want, atol=1e-5, rtol=1e-4)
    pairs = tf.data.Dataset.from_tensor_slices((x, np.zeros(11))).batch(5)
    np.testing.assert_allclose(snapshot.predict(pairs), want, atol=1e-5, rtol=1e-4)


def test_snapshot_errors_name_the_argument():
    with pytest.raises(TypeError, match="Received: model="):
        kr.InferenceSnapshot(lambda x: x)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    snapshot = kr.InferenceSnapshot(model)  # any Keras model works, unfolded
    x = np.ones((3, 4), "float32")
    np.testing.assert_allclose(snapshot.predict(x, batch_size=2), model.predict(x, verbose=0),
                               rtol=1e-6)
    with pytest.raises(ValueError, match="Received: batch_size=0"):
        snapshot.predict(x, batch_size=0)
    with pytest.raises(ValueError, match="no inputs"):
        snapshot.predict(x[:0])


class Scaled(keras.Model):
    """A subclassed model with a constructor argument and no get_config:
    clone_model cannot copy it."""

    def __init__(self, factor):
        super().__init__()
        self.factor = factor
        self.dense = keras.layers.Dense(2)

    def call(self, x):
        return self.dense(x) * self.factor


def test_a_model_clone_model_cannot_copy_runs_as_it_is_with_a_warning():
    model = Scaled(3.0)
    x = np.ones((2, 4), "float32")
    want = model(x).numpy()
    with pytest.warns(UserWarning, match="could not copy the model"):
        snapshot = kr.InferenceSnapshot(model)
    np.testing.assert_allclose(snapshot(x).numpy(), want, rtol=1e-6)
