"""keras_resnet's fused BatchNorm (+ add) (+ ReLU) CPU kernels (`keras_resnet.kernels`).

The op is checked against a float64 reference written with plain TensorFlow ops,
forward and gradient, on shapes that exercise the vector tails (channels not a
multiple of 16) and row blocking (fewer rows than one chunk, many chunks); then
in the layers and whole models, against the same models traced with
`kernels.disabled()`.
"""

import contextlib
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_resnet as kr
from keras_resnet import kernels
from keras_resnet.layers import (FusedBatchNormalization, biased_training_convolutions,
                                 convolution_filter_gradients, pointwise_conv, unfused_batchnorm)

from harness import sublayer, to_numpy


def reference(x, residual, gamma, beta, epsilon, relu, dy):
    """Float64 `act(bn(x) + residual)` with batch statistics, and its gradients."""
    x, gamma, beta, dy = (tf.constant(v, tf.float64) for v in (x, gamma, beta, dy))
    residual = None if residual is None else tf.constant(residual, tf.float64)
    with tf.GradientTape() as tape:
        tape.watch([x, gamma, beta] + ([] if residual is None else [residual]))
        mean, variance = tf.nn.moments(x, axes=[0, 1, 2])
        y = (x - mean) * tf.math.rsqrt(variance + epsilon) * gamma + beta
        if residual is not None:
            y = y + residual
        if relu:
            y = tf.nn.relu(y)
    sources = [x, gamma, beta] + ([] if residual is None else [residual])
    grads = tape.gradient(y, sources, output_gradients=dy)
    return [t.numpy() for t in [y, mean, variance] + grads]


def kernel_outputs(x, residual, gamma, beta, epsilon, relu, dy, dtype="float32"):
    gamma, beta = (tf.constant(v, tf.float32) for v in (gamma, beta))
    x, dy = (tf.constant(v, dtype) for v in (x, dy))
    residual = None if residual is None else tf.constant(residual, dtype)
    with tf.GradientTape() as tape:
        tape.watch([x, gamma, beta] + ([] if residual is None else [residual]))
        y, mean, variance = kernels.batchnorm_act(x, gamma, beta, epsilon, residual=residual, relu=relu)
    sources = [x, gamma, beta] + ([] if residual is None else [residual])
    grads = tape.gradient(y, sources, output_gradients=dy)
    assert y.dtype == dtype and grads[0].dtype == dtype and mean.dtype == grads[1].dtype == tf.float32
    return [tf.cast(t, tf.float64).numpy() for t in [y, mean, variance] + grads]


def as_bfloat16(v):
    """`v` rounded to bfloat16 (and back to float64): the values a bf16 tensor holds."""
    return None if v is None else tf.cast(tf.cast(v, tf.bfloat16), tf.float64).numpy()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (4, 9, 9, 40), (3, 16, 16, 64)])
@pytest.mark.parametrize("residual,relu", [(True, True), (False, True), (False, False), (True, False)])
def test_op_matches_float64_reference(ops, shape, residual, relu, dtype):
    """Float32 to float32 round-off; bfloat16 (mixed precision: bf16 tensors in and
    out, float32 statistics) to one bf16 rounding of the float64 result on the
    same bf16 inputs, while its statistics and parameter gradients, which are
    float32, stay at float32 round-off."""
    rng = np.random.default_rng(sum(shape))
    c = shape[-1]
    # An offset mean (3.0) checks the variance for cancellation; pre-activations
    # are kept away from 0 so both sides see the same ReLU mask.
    x = rng.normal(3.0, 2.0, shape)
    gamma, beta = rng.uniform(0.5, 1.5, c), rng.normal(0, 1, c)
    res = rng.normal(0, 1, shape) if residual else None
    dy = rng.normal(0, 1, shape)
    if dtype == "bfloat16":
        x, res, dy = as_bfloat16(x), as_bfloat16(res), as_bfloat16(dy)
    z = (x - x.mean((0, 1, 2))) / np.sqrt(x.var((0, 1, 2)) + 1e-3) * gamma + beta + (res if residual else 0)
    if relu:
        assert np.abs(z).min() > 0  # the reference's mask is the kernel's (no exact zeros)
    near_zero = np.abs(z) < 0.05
    if dtype == "float32":
        x = np.where(near_zero, x + 0.2 * np.sign(gamma), x)
    elif relu:  # bf16 inputs cannot be nudged off their grid: mask out the ambiguous elements
        dy = np.where(near_zero, 0.0, dy)
    want = reference(x, res, gamma, beta, 1e-3, relu, dy)
    got = kernel_outputs(x, res, gamma, beta, 1e-3, relu, dy, dtype)
    names = ["y", "mean", "variance", "dx", "dgamma", "dbeta", "dresidual"]
    # bf16 has 8 significant bits: its rounding is at most 2^-9 relative; computed in
    # float32 before that, so one bf16 ulp (2^-8) covers both, plus float32 round-off
    # where dx cancels.
    rounded = {"y", "dx", "dresidual"} if dtype == "bfloat16" else set()
    for name, g, w in zip(names, got, want):
        rtol = 2 ** -8 if name in rounded else 2e-4
        np.testing.assert_allclose(g, w, rtol=rtol, atol=2e-4 * np.abs(w).max(), err_msg=name)
    if relu:
        assert (got[0] == 0).any() and (got[0] > 0).any()  # the mask was exercised


@pytest.mark.parametrize("residual,relu", [(True, True), (False, False)])
def test_bfloat16_op_is_the_float32_op_rounded_like_tensorflow(ops, residual, relu):
    """On the same (bf16-representable) inputs the bf16 op computes exactly what the
    float32 op does and rounds it as `tf.cast(..., bfloat16)` does (to nearest even;
    NaN stays NaN): bit for bit, outputs and gradients (NaN payloads aside: NaNs
    compare equal here). A truncating or
    misplaced conversion fails here even where it hides inside the reference test's
    one-ulp tolerance."""
    rng = np.random.default_rng(7)
    shape = (4, 6, 6, 40)
    x, dy = as_bfloat16(rng.normal(1.0, 2.0, shape)), as_bfloat16(rng.normal(0, 1, shape))
    x[0, 0, 0, 5] = np.nan  # channel 5: NaN statistics, NaN outputs, in both types
    res = as_bfloat16(rng.normal(0, 1, shape)) if residual else None
    gamma, beta = rng.uniform(0.5, 1.5, 40), rng.normal(0, 1, 40)
    fp32 = kernel_outputs(x, res, gamma, beta, 1e-3, relu, dy, "float32")
    bf16 = kernel_outputs(x, res, gamma, beta, 1e-3, relu, dy, "bfloat16")
    for name, b, f in zip(["y", "mean", "variance", "dx", "dgamma", "dbeta", "dresidual"], bf16, fp32):
        want = as_bfloat16(f) if f.ndim == 4 else f  # the float32 statistics stay float32
        np.testing.assert_array_equal(b, want, err_msg=name)
    assert np.isnan(bf16[0][..., 5]).all() and not np.isnan(np.delete(bf16[0], 5, axis=-1)).any()
    # The bits too, NaNs included (their sign and quiet bit), for the forward output.
    bits = lambda t: tf.bitcast(t, tf.uint16).numpy()  # noqa: E731
    ours = kernels.batchnorm_act(tf.constant(x, tf.bfloat16), tf.constant(gamma, tf.float32),
                                 tf.constant(beta, tf.float32), 1e-3, relu=relu)[0]
    rounded = tf.cast(kernels.batchnorm_act(tf.constant(x, tf.float32), tf.constant(gamma, tf.float32),
                                            tf.constant(beta, tf.float32), 1e-3, relu=relu)[0], tf.bfloat16)
    np.testing.assert_array_equal(bits(ours), bits(rounded))


def test_op_empty_batch_gives_nan_statistics_like_tensorflow(ops):
    x = tf.zeros([0, 4, 4, 3])
    y, mean, variance = kernels.batchnorm_act(x, tf.ones([3]), tf.zeros([3]), 1e-3, relu=True)
    _, tf_mean, tf_variance = tf.compat.v1.nn.fused_batch_norm(
        x, tf.ones([3]), tf.zeros([3]), epsilon=1e-3, is_training=True)
    assert y.shape == (0, 4, 4, 3)
    assert np.isnan(mean.numpy()).all() and np.isnan(variance.numpy()).all()
    assert np.isnan(tf_mean.numpy()).all() and np.isnan(tf_variance.numpy()).all()


def test_op_rejects_mismatched_residual(ops):
    with pytest.raises(tf.errors.InvalidArgumentError, match="residual shape"):
        kernels.batchnorm_act(tf.zeros([2, 4, 4, 3]), tf.ones([3]), tf.zeros([3]), 1e-3,
                              residual=tf.zeros([2, 4, 4, 4]))


def test_layer_training_call_matches_tensorflow_path(ops):
    """Same output and moving statistics as the layer's FusedBatchNormV3 path."""
    x = np.random.default_rng(0).normal(2.0, 3.0, (8, 10, 10, 24)).astype("float32")
    layers = []
    for use_kernels in (True, False):
        layer = FusedBatchNormalization(momentum=0.9, epsilon=1e-3)
        layer.build(x.shape)
        layer.set_weights([np.linspace(0.5, 1.5, 24), np.linspace(-1, 1, 24), np.full(24, 0.3),
                           np.full(24, 2.0)])
        if use_kernels:
            out = layer(x, training=True)
        else:
            with kernels.disabled():
                out = layer(x, training=True)
        layers.append((layer, to_numpy(out)))
    (ours, got), (ref, want) = layers
    np.testing.assert_allclose(got, want, atol=1e-4)
    np.testing.assert_allclose(to_numpy(ours.moving_mean), to_numpy(ref.moving_mean), rtol=1e-5)
    np.testing.assert_allclose(to_numpy(ours.moving_variance), to_numpy(ref.moving_variance), rtol=1e-5)
    assert not np.allclose(to_numpy(ours.moving_variance), 2.0)


def block_gradients(block, x, dy, mode):
    context = {"kernels": contextlib.nullcontext(), "tensorflow": kernels.disabled(),
               "keras": unfused_batchnorm()}[mode]
    with tf.GradientTape() as tape:
        tape.watch(x)
        with context:
            out = block(x, training=True)
    grads = tape.gradient(out, [x] + block.trainable_variables, output_gradients=dy)
    return out.numpy(), [g.numpy() for g in grads], [v.numpy() for v in block.non_trainable_variables]


@pytest.mark.parametrize("cls,kwargs,in_channels", [
    (kr.BasicBlock, dict(filters=32), 32),
    (kr.BasicBlock, dict(filters=64, strides=2, shortcut="zero_pad"), 32),
    (kr.BasicBlock, dict(filters=64, strides=2, shortcut="projection"), 32),
    (kr.BottleneckBlock, dict(filters=16, strides=2), 32),                       # v1.5
    (kr.BottleneckBlock, dict(filters=16, stride_on="1x1", conv_bias=True), 64),  # v1, identity
    (kr.BottleneckBlock, dict(filters=16, strides=2, shortcut="avg_pool"), 32),   # ResNet-D
])
def test_blocks_match_tensorflow_to_round_off(ops, cls, kwargs, in_channels):
    """Every post-activation block type: output, input and weight gradients and
    moving statistics through the kernels differ from TensorFlow's ops by no more
    than Keras's own BatchNorm composition does (plus 1e-6)."""
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(0, 1, (8, 16, 16, in_channels)).astype("float32"))
    results = {}
    for mode in ("kernels", "tensorflow", "keras"):
        keras.utils.set_random_seed(0)
        block = cls(name="b", **kwargs)
        block.build(x.shape)
        if mode == "kernels":
            dy = tf.constant(rng.normal(0, 1, block.compute_output_shape(x.shape)).astype("float32"))
        results[mode] = block_gradients(block, x, dy, mode)
    ref = results["tensorflow"]
    error = lambda got: max(np.linalg.norm(g - w) / np.linalg.norm(w)
                            for g, w in zip(got[1], ref[1]) if np.abs(w).max() > 1e-6)
    assert error(results["kernels"]) <= 3 * error(results["keras"]) + 1e-6
    np.testing.assert_allclose(results["kernels"][0], ref[0], atol=1e-5)
    for got, want in zip(results["kernels"][2], ref[2]):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.fixture
def mixed_bfloat16():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    yield
    keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("cls,kwargs,in_channels", [
    (kr.BasicBlock, dict(filters=64, strides=2, shortcut="projection"), 32),
    (kr.BottleneckBlock, dict(filters=16, strides=2), 32),                       # v1.5
    (kr.BottleneckBlock, dict(filters=16, stride_on="1x1", conv_bias=True), 64),  # v1, identity
])
def test_blocks_in_mixed_bfloat16_are_as_accurate_as_tensorflow(ops, cls, kwargs, in_channels):
    """Under mixed_bfloat16 the blocks train through the kernels' bf16 variant. Against
    the same block in float32, its output, gradients and moving statistics are as close
    as TensorFlow's own bf16 ops get (about 6-17% relative for the weight gradients at
    this size: bf16 has 8 significant bits); a wrong formula or a misread bf16 would
    be off by O(1)."""
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (8, 16, 16, in_channels)).astype("float32")
    results = {}
    for policy, mode in (("float32", "tensorflow"), ("mixed_bfloat16", "kernels"),
                         ("mixed_bfloat16", "tensorflow")):
        keras.mixed_precision.set_global_policy(policy)
        try:
            keras.utils.set_random_seed(0)
            block = cls(name="b", **kwargs)
            block.build(x.shape)
            if policy == "float32":
                dy = rng.normal(0, 1, block.compute_output_shape(x.shape)).astype("float32")
            dtype = block.compute_dtype
            out, grads, stats = block_gradients(block, tf.constant(x, dtype), tf.constant(dy, dtype), mode)
            if mode == "kernels":  # else "ours" could silently be TensorFlow's path again
                graph = tf.function(lambda x: block(x, training=True)).get_concrete_function(
                    tf.constant(x, dtype)).graph
                assert "KerasResnetBatchNormAct" in [op.type for op in graph.get_operations()]
        finally:
            keras.mixed_precision.set_global_policy("float32")
        results[(policy, mode)] = (np.asarray(out, "float32"), [np.asarray(g, "float32") for g in grads], stats)
    ref = results[("float32", "tensorflow")]
    largest = max(np.linalg.norm(w) for w in ref[1])

    def error(got):  # skips gradients that are round-off in float32 too (biases before a BN)
        return max(np.linalg.norm(g - w) / np.linalg.norm(w) for g, w in zip(got[1], ref[1])
                   if np.linalg.norm(w) > 1e-4 * largest)

    ours, theirs = results[("mixed_bfloat16", "kernels")], results[("mixed_bfloat16", "tensorflow")]
    assert ours[0].dtype == np.float32 and error(ours) <= 1.25 * error(theirs) + 1e-3, (error(ours), error(theirs))
    output_error = lambda got: np.abs(got[0] - ref[0]).max()  # noqa: E731
    assert output_error(ours) <= 1.25 * output_error(theirs) + 1e-3
    for got, want in zip(ours[2], theirs[2]):
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)


def traced_op_types(model, x, y, use_kernels):
    """Op types of one compiled training step (loss and gradients) of `model`."""
    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, model(x, training=True)))
        return loss, tape.gradient(loss, model.trainable_variables)

    if use_kernels:
        graph = step.get_concrete_function(x, y).graph
    else:
        with kernels.disabled():
            graph = step.get_concrete_function(x, y).graph
    return [op.type for op in graph.get_operations()]


def gradients_and_statistics(name, input_shape, use_kernels, nudge=False, keras_batchnorm=False):
    """Loss, gradients and moving statistics after one training call; `nudge`
    moves every input pixel by one float32 ulp, `keras_batchnorm` traces Keras's
    own BatchNorm composition instead of any fused kernel (the two yardsticks)."""
    keras.utils.set_random_seed(0)
    model = kr.create_model(name, input_shape=input_shape, num_classes=10)
    x = np.random.default_rng(1).normal(0, 1, (8,) + input_shape).astype("float32")
    if nudge:
        x = np.nextafter(x, np.float32(np.inf))
    y = np.arange(8) % 10
    context = (unfused_batchnorm() if keras_batchnorm else
               contextlib.nullcontext() if use_kernels else kernels.disabled())
    with tf.GradientTape() as tape:
        with context:
            out = model(x, training=True)
        loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, out))
    grads = tape.gradient(loss, model.trainable_variables)
    return (float(loss), {v.path: g.numpy() for v, g in zip(model.trainable_variables, grads)},
            {v.path: v.numpy() for v in model.non_trainable_variables})


def relative_errors(got, want):
    """Per-variable ||got - want|| / ||want||, skipping biases before a
    BatchNorm (no gradient but round-off)."""
    return {path: float(np.linalg.norm(got[path] - w) / np.linalg.norm(w))
            for path, w in want.items() if not (path.endswith("bias") and np.abs(w).max() < 1e-6)}


@pytest.mark.parametrize("name,input_shape", [
    ("resnet20", (32, 32, 3)), ("resnet50", (64, 64, 3)), ("resnet50_v1", (64, 64, 3))])
def test_models_train_through_the_kernels_with_the_same_gradients(ops, name, input_shape):
    """A whole model's loss, every gradient and every moving statistic after one
    training call match the same model traced with TensorFlow's ops.

    How close is close enough is measured, not guessed: the same comparison is
    made for two changes that are round-off by construction, Keras's own
    BatchNorm composition in place of TensorFlow's fused kernel, and every input
    pixel moved by one ulp. Deep nets at small batches amplify round-off (in
    resnet50 here either change moves the stem's gradient by a few percent, as
    ReLU mask bits near zero flip), so the kernels may differ by three times the
    larger of the two, or 1e-3 where the net is too well conditioned for either
    to show (resnet20: 1e-5; the kernels 2e-4, from one block where a round-off
    difference tips a ReLU, while every block alone agrees to 1e-6, see
    `test_blocks_match_tensorflow_to_round_off`). A wrong formula differs by O(1).
    """
    loss_k, grads_k, stats_k = gradients_and_statistics(name, input_shape, True)
    loss_t, grads_t, stats_t = gradients_and_statistics(name, input_shape, False)
    loss_n, grads_n, _ = gradients_and_statistics(name, input_shape, False, nudge=True)
    loss_b, grads_b, _ = gradients_and_statistics(name, input_shape, False, keras_batchnorm=True)
    assert abs(loss_k - loss_t) <= max(3 * abs(loss_n - loss_t), 3 * abs(loss_b - loss_t), 1e-5 * loss_t)
    errors = relative_errors(grads_k, grads_t)
    yardstick = max(max(relative_errors(grads_n, grads_t).values()),
                    max(relative_errors(grads_b, grads_t).values()))
    assert max(errors.values()) <= max(3 * yardstick, 1e-3), (max(errors.values()), yardstick)
    for path, want in stats_t.items():
        np.testing.assert_allclose(stats_k[path], want, rtol=1e-4, atol=1e-5, err_msg=path)


def test_every_batchnorm_of_resnet50_runs_fused_in_training(ops):
    """resnet50 (v1.5) has 53 BatchNorms, and a training step traces all 53 (and
    their gradients) as keras_resnet's op: 16 with the residual add and ReLU
    (the block ends), 32 with a ReLU (inside the branches), 5 plain (the stem,
    whose ReLU stays a separate layer, and the 4 projection shortcuts)."""
    model = kr.create_model("resnet50", input_shape=(64, 64, 3), num_classes=10)
    x, y = tf.zeros([2, 64, 64, 3]), tf.constant([0, 1])
    with_kernels = traced_op_types(model, x, y, True)
    without = traced_op_types(model, x, y, False)
    assert with_kernels.count("KerasResnetBatchNormAct") == 53
    assert with_kernels.count("KerasResnetBatchNormActGrad") == 53
    assert without.count("KerasResnetBatchNormAct") == 0
    batchnorms = lambda types: sum(t.startswith("FusedBatchNorm") and "Grad" not in t for t in types)
    assert batchnorms(without) == 53 and batchnorms(with_kernels) == 0
    # The 16 sums and their ReLUs are inside the op: 16 fewer Relu ops in the step.
    assert without.count("Relu") - with_kernels.count("Relu") == 48


def test_mixed_bfloat16_resnet50_trains_every_batchnorm_through_the_kernels(ops, mixed_bfloat16):
    model = kr.create_model("resnet50", input_shape=(64, 64, 3), num_classes=10)
    types = traced_op_types(model, tf.zeros([2, 64, 64, 3]), tf.constant([0, 1]), True)
    assert types.count("KerasResnetBatchNormAct") == types.count("KerasResnetBatchNormActGrad") == 53
    assert not any(t.startswith("FusedBatchNorm") for t in types)


def test_kernels_skip_float16_frozen_batchnorm_and_inference(ops):
    x, y = tf.zeros([2, 32, 32, 3]), tf.constant([0, 1])
    keras.mixed_precision.set_global_policy("mixed_float16")  # no float16 variant
    try:
        fp16 = kr.create_model("resnet20", input_shape=(32, 32, 3), num_classes=10)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert "KerasResnetBatchNormAct" not in traced_op_types(fp16, x, y, True)
    assert kernels.status("mixed_float16").startswith("not used: precision mixed_float16")
    assert kernels.status("mixed_bfloat16") == kernels.status("float32") == "used"
    frozen = kr.create_model("resnet20", input_shape=(32, 32, 3), num_classes=10)
    for layer in frozen._flatten_layers():
        if isinstance(layer, FusedBatchNormalization):
            layer.trainable = False
    assert "KerasResnetBatchNormAct" not in traced_op_types(frozen, x, y, True)
    model = kr.create_model("resnet20", input_shape=(32, 32, 3), num_classes=10)
    inference = tf.function(lambda x: model(x, training=False)).get_concrete_function(x).graph
    assert "KerasResnetBatchNormAct" not in [op.type for op in inference.get_operations()]


def test_trained_model_exports_without_the_custom_ops(ops, tmp_path):
    """TF Serving has no keras_resnet library: a model trained through the
    kernels must export a SavedModel free of them, and serve the same outputs."""
    model = kr.create_model("resnet20", input_shape=(32, 32, 3), num_classes=10)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    x = np.random.default_rng(0).normal(0, 1, (8, 32, 32, 3)).astype("float32")
    model.fit(x, np.arange(8) % 10, epochs=1, verbose=0)
    model.export(str(tmp_path / "sm"), verbose=False)
    saved = (tmp_path / "sm" / "saved_model.pb").read_bytes()
    assert b"KerasResnetBatchNormAct" not in saved
    reloaded = tf.saved_model.load(str(tmp_path / "sm"))
    served = reloaded.serve(x)
    np.testing.assert_allclose(to_numpy(served), to_numpy(model(x, training=False)), atol=1e-5)


@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16"])
def test_fit_reduces_the_loss_through_the_kernels(ops, precision):
    keras.utils.set_random_seed(0)
    keras.mixed_precision.set_global_policy(precision)
    try:  # the layers keep the policy they were built under
        model = kr.create_model("resnet20", input_shape=(16, 16, 3), num_classes=4)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert "KerasResnetBatchNormAct" in traced_op_types(model, tf.zeros([2, 16, 16, 3]), tf.constant([0, 1]), True)
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    y = np.arange(64) % 4
    x = (rng.normal(0, 1, (64, 16, 16, 3)) + y[:, None, None, None]).astype("float32")
    losses = model.fit(x, y, batch_size=16, epochs=4, verbose=0).history["loss"]
    assert losses[-1] < 0.7 * losses[0]


def run_python(code, **env):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **env}, timeout=300)


def test_switched_off_by_environment_variable_with_a_reason():
    code = ("from keras_resnet import kernels; print(kernels.load()); "
            "print(kernels.unavailable_reason())")
    result = run_python(code, KERAS_RESNET_KERNELS="0")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-2:] == ["None", "turned off by KERAS_RESNET_KERNELS=0"]
    assert "using TensorFlow's ops" in result.stderr


def test_failed_build_falls_back_to_tensorflow_and_says_why(tmp_path):
    """No compiler: one warning naming the reason, and training still works."""
    code = (
        "import numpy as np, keras_resnet as kr\n"
        "from keras_resnet import kernels\n"
        "m = kr.create_model('resnet20', input_shape=(16, 16, 3), num_classes=2)\n"
        "m.compile(optimizer='sgd', loss='sparse_categorical_crossentropy')\n"
        "m.fit(np.zeros((4, 16, 16, 3), 'float32'), np.array([0, 1, 0, 1]), verbose=0)\n"
        "print('reason:', kernels.unavailable_reason())\n")
    result = run_python(code, CXX=str(tmp_path / "no-such-compiler"),
                        KERAS_RESNET_CACHE=str(tmp_path / "cache"))
    assert result.returncode == 0, result.stderr
    assert re.search(r"reason: the C\+\+ compiler .*no-such-compiler.* could not run", result.stdout)
    assert len(re.findall(r"CPU kernels \(fused BatchNorm, Winograd\) unavailable", result.stderr)) == 1


def test_conv_biases_before_training_batchnorms_are_left_out(ops):
    """keras.applications' layout (conv_bias=True): in training, each conv's bias
    before a BatchNorm is not computed (no BiasAdd, no bias-gradient reduction),
    gets an exact zero gradient, and still reaches the moving mean, whose update
    equals the one of the block traced with the biases added."""
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(0, 1, (8, 16, 16, 32)).astype("float32"))
    blocks = {}
    for variant in ("unbiased", "biased"):
        keras.utils.set_random_seed(0)
        block = kr.BottleneckBlock(filters=16, strides=2, stride_on="1x1", conv_bias=True, name="b")
        block.build(x.shape)
        for w in block.weights:  # biases far from zero: a dropped one would show in the mean
            if w.path.endswith("bias"):
                w.assign(rng.normal(0, 1, w.shape).astype("float32"))
        blocks[variant] = block
    blocks["biased"].set_weights(blocks["unbiased"].get_weights())
    out, grads = {}, {}
    for variant, block in blocks.items():
        context = contextlib.nullcontext() if variant == "unbiased" else biased_training_convolutions()
        with context, tf.GradientTape() as tape:
            out[variant] = block(x, training=True)
            loss = tf.reduce_sum(out[variant] * tf.cos(out[variant]))
        grads[variant] = dict(zip([v.path for v in block.trainable_variables],
                                  tape.gradient(loss, block.trainable_variables)))
    np.testing.assert_allclose(out["unbiased"].numpy(), out["biased"].numpy(), atol=1e-5)
    biases = [p for p in grads["unbiased"] if p.endswith("bias") and "conv" in p]
    assert len(biases) == 4  # three branch convs and the projection
    for path in biases:
        assert not np.any(grads["unbiased"][path].numpy())  # exactly zero
        assert np.abs(grads["biased"][path].numpy()).max() < 1e-3  # round-off of a true zero
    for a, b in zip(blocks["unbiased"].non_trainable_variables, blocks["biased"].non_trainable_variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-5)
    spec = tf.TensorSpec(x.shape, tf.float32)

    def bias_ops(context):
        @tf.function
        def step(v):
            with tf.GradientTape() as tape:
                y = blocks["unbiased"](v, training=True)
            return tape.gradient(y, blocks["unbiased"].trainable_variables)

        with context:
            types = [op.type for op in step.get_concrete_function(spec).graph.get_operations()]
        return types.count("BiasAdd") + types.count("BiasAddGrad")

    assert bias_ops(contextlib.nullcontext()) == 0
    assert bias_ops(biased_training_convolutions()) == 8  # a BiasAdd and its gradient per conv


def test_pointwise_conv_gradients_match_tensorflow_and_use_one_matmul():
    """`pointwise_conv` (1x1 convolutions in float32 training): same output and
    gradients as tf.nn.conv2d, with the kernel's gradient a MatMul."""
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(0, 1, (4, 7, 9, 24)).astype("float32"))
    kernel = tf.constant(rng.normal(0, 0.2, (1, 1, 24, 40)).astype("float32"))
    dy = tf.constant(rng.normal(0, 1, (4, 7, 9, 40)).astype("float32"))

    def grads(fn):
        with tf.GradientTape() as tape:
            tape.watch([x, kernel])
            y = fn(x, kernel)
        return [y] + tape.gradient(y, [x, kernel], output_gradients=dy)

    got, want = grads(pointwise_conv), grads(lambda a, k: tf.nn.conv2d(a, k, 1, "VALID"))
    for g, w in zip(got, want):
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-4, atol=1e-4)

    model = kr.create_model("resnet50", input_shape=(32, 32, 3), num_classes=10)
    y = np.arange(2) % 10
    x = np.zeros((2, 32, 32, 3), "float32")
    types = traced_op_types(model, x, y, use_kernels=True)
    with convolution_filter_gradients():
        reference = traced_op_types(model, x, y, use_kernels=True)
    # resnet50's 1x1 stride-1 convs (every bottleneck's two, the stride-1 projection):
    # their kernel gradients move from Conv2DBackpropFilter to MatMul.
    moved = reference.count("Conv2DBackpropFilter") - types.count("Conv2DBackpropFilter")
    assert moved == 16 * 2 + 1
    assert types.count("MatMul") - reference.count("MatMul") == moved
