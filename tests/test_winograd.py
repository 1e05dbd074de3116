"""Winograd F(4x4, 3x3) inference convolutions (`keras_resnet.kernels.winograd_conv`).

The op pair is checked against TensorFlow's direct convolution in float64 on
shapes that exercise partial tiles (sizes not a multiple of 4), channel tails (not
a multiple of 16), the bias, the residual and the ReLU; its gradient against
TensorFlow's; then in whole models against the same models traced with
`direct_convolutions()`, where it must be used, where it must not (small
batches, bfloat16, 64 channels, training) and that no export contains it.
"""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_resnet as kr
from keras_resnet import kernels
from keras_resnet.layers import direct_convolutions


def direct64(x, kernel, bias, residual, relu):
    y = tf.nn.conv2d(tf.constant(x, tf.float64), tf.constant(kernel, tf.float64), 1, "SAME")
    y = y + bias
    if residual is not None:
        y = y + residual
    return tf.nn.relu(y).numpy() if relu else y.numpy()


@pytest.mark.parametrize("n,h,w,c,k,residual,relu", [
    (2, 8, 8, 16, 16, False, False),     # whole tiles
    (3, 7, 9, 20, 17, False, True),      # partial tiles, channel tails
    (1, 5, 13, 33, 40, True, True),      # + residual, odd sizes
    (2, 4, 4, 128, 64, True, False),     # one tile per image
    (1, 1, 1, 8, 8, False, True),        # a 1x1 image: all padding but the centre
])
def test_winograd_conv_matches_the_direct_convolution(ops, n, h, w, c, k, residual, relu):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, h, w, c)).astype("float32")
    kernel = (rng.standard_normal((3, 3, c, k)) / np.sqrt(9 * c)).astype("float32")
    bias = rng.standard_normal(k).astype("float32")
    res = rng.standard_normal((n, h, w, k)).astype("float32") if residual else None
    scale = rng.uniform(0.5, 2.0, k).astype("float32") if residual else None  # a folded BatchNorm's
    got = kernels.winograd_conv(tf.constant(x), tf.constant(kernel), tf.constant(bias),
                                residual=None if res is None else tf.constant(res), relu=relu,
                                scale=None if scale is None else tf.constant(scale))
    want = direct64(x, kernel if scale is None else kernel.astype("float64") * scale, bias, res, relu)
    assert got.shape == want.shape
    # F(4x4, 3x3) in float32: a few float32 roundings of the transforms, ~1e-5 of the scale.
    np.testing.assert_allclose(got.numpy(), want, atol=5e-5 * np.abs(want).max(), rtol=0)
    if relu:
        assert (got.numpy() >= 0).all()


def test_winograd_conv_keeps_a_nan(ops):
    x = np.ones((1, 8, 8, 16), "float32")
    x[0, 3, 3, 5] = np.nan
    got = kernels.winograd_conv(tf.constant(x), tf.ones((3, 3, 16, 16)), tf.zeros(16), relu=True).numpy()
    want = direct64(x, np.ones((3, 3, 16, 16)), 0.0, None, True)
    # The NaN reaches the outputs whose window covers it (and, through the
    # tile's transform, the rest of its tiles), and is never zeroed by the ReLU.
    assert np.isnan(got[0, 3, 3]).all() and np.isnan(want[0, 3, 3]).all()
    assert np.isnan(got).sum() >= np.isnan(want).sum()


def test_winograd_conv_gradient_is_the_convolution_gradient(ops):
    rng = np.random.default_rng(1)
    x = tf.constant(rng.standard_normal((2, 6, 7, 24)), tf.float32)
    kernel = tf.constant(rng.standard_normal((3, 3, 24, 20)) / 15, tf.float32)
    bias = tf.constant(rng.standard_normal(20), tf.float32)
    res = tf.constant(rng.standard_normal((2, 6, 7, 20)), tf.float32)
    scale = tf.constant(rng.uniform(0.5, 2.0, 20), tf.float32)
    dy = tf.constant(rng.standard_normal((2, 6, 7, 20)), tf.float32)
    sources = [x, kernel, bias, res, scale]

    def grads(fn):
        with tf.GradientTape() as tape:
            tape.watch(sources)
            y = fn()
        return [g.numpy() for g in tape.gradient(y, sources, output_gradients=dy)]

    got = grads(lambda: kernels.winograd_conv(x, kernel, bias, residual=res, relu=True, scale=scale))
    want = grads(lambda: tf.nn.relu(tf.nn.conv2d(x, kernel * scale, 1, "SAME") + bias + res))
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, atol=1e-4 * np.abs(w).max(), rtol=0)


def test_winograd_ops_reject_mismatched_shapes(ops):
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"expects a \[3, 3, C, K\] kernel"):
        ops.keras_resnet_winograd_filter(tf.zeros((5, 5, 2, 2)), tf.zeros([0]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="scale must be empty or have 2 values"):
        ops.keras_resnet_winograd_filter(tf.zeros((3, 3, 2, 2)), tf.zeros(3))
    m = tf.zeros((36, 5, 8))
    with pytest.raises(tf.errors.InvalidArgumentError, match="5 tiles do not fit 1 images of 8x8"):
        ops.keras_resnet_winograd_output(m, tf.zeros(8), tf.zeros((1, 8, 8, 4)), tf.zeros([0]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="bias must have 8 values"):
        ops.keras_resnet_winograd_output(tf.zeros((36, 4, 8)), tf.zeros(3), tf.zeros((1, 8, 8, 4)),
                                         tf.zeros([0]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="residual must have shape"):
        ops.keras_resnet_winograd_output(tf.zeros((36, 4, 8)), tf.zeros(8), tf.zeros((1, 8, 8, 4)),
                                         tf.zeros((1, 8, 8, 3)), has_residual=True)


def winograd_op_count(fn, *specs):
    graph = fn.get_concrete_function(*specs).graph
    count = sum(op.type == "KerasResnetWinogradInput" for op in graph.get_operations())
    for f in graph._functions.values():  # tf.cond branches (dynamic batch sizes)
        count += sum(op.type == "KerasResnetWinogradInput" for op in f.graph.get_operations())
    return count


def small_bottleneck_net(**kwargs):
    # Stage 2's 3x3 convolutions are 128 wide, where Winograd is used; the first
    # has stride 2, so two stride-1 ones at 16x16 (16 tiles per image).
    return kr.build_resnet((32, 32, 3), num_classes=10, block="bottleneck", stem="cifar",
                           stages=[(1, 32, 1), (3, 128, 2)], **kwargs)


def test_models_run_winograd_at_inference_with_direct_convolution_results(ops):
    model = kr.create_model("resnet18", input_shape=(64, 64, 3), num_classes=10)
    logits = keras.Model(model.input, model.layers[-1].input)  # before the softmax
    x = tf.constant(np.random.default_rng(2).uniform(0, 255, (16, 64, 64, 3)), tf.float32)
    winograd = tf.function(lambda v: logits(v, training=False))
    with direct_convolutions():
        direct = tf.function(lambda v: logits(v, training=False))
        spec = tf.TensorSpec(x.shape, tf.float32)
        assert winograd_op_count(direct, spec) == 0
    # resnet18 at 64 px, batch 16: the 128-channel stage at 8x8 has 64 tiles (its 3
    # stride-1 3x3 convs); 64 channels, and 256 / 512 at 4x4 / 2x2 (16 / 16 tiles), stay direct.
    assert winograd_op_count(winograd, spec) == 3
    got, want = winograd(x).numpy(), direct(x).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4 * np.abs(want).max(), rtol=0)


def test_dynamic_batch_picks_winograd_at_run_time(ops):
    model = small_bottleneck_net()
    fn = tf.function(lambda v: model(v, training=False))
    spec = tf.TensorSpec((None, 32, 32, 3), tf.float32)
    assert winograd_op_count(fn, spec) == 2  # in tf.cond branches: the batch size is dynamic
    with direct_convolutions():
        direct = tf.function(lambda v: model(v, training=False))
        for batch in (1, 8):  # 16 tiles (direct) and 128 tiles (Winograd) at 16x16
            x = tf.constant(np.random.default_rng(batch).uniform(0, 255, (batch, 32, 32, 3)), tf.float32)
            want = direct(x).numpy()
            np.testing.assert_allclose(fn(x).numpy(), want, atol=1e-5, rtol=1e-4)


def test_winograd_is_not_used_where_it_does_not_pay_or_apply(ops):
    x = tf.TensorSpec((32, 32, 32, 3), tf.float32)
    narrow = kr.create_model("resnet20", input_shape=(32, 32, 3), num_classes=10)  # <= 64 channels
    assert winograd_op_count(tf.function(lambda v: narrow(v, training=False)), x) == 0
    model = small_bottleneck_net()
    with kernels.disabled():
        assert winograd_op_count(tf.function(lambda v: model(v, training=False)), x) == 0
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        bf16 = small_bottleneck_net()
    finally:
        keras.config.set_dtype_policy(previous)
    assert winograd_op_count(tf.function(lambda v: bf16(v, training=False)), x) == 0


def test_training_runs_winograd_forward_and_backward_with_direct_results(ops):
    """In training (batch statistics) the wide 3x3 convolutions run as Winograd in
    the forward pass and for the input's gradient; the gradients match the direct
    convolutions'."""
    model = small_bottleneck_net()
    x = tf.constant(np.random.default_rng(6).uniform(0, 255, (8, 32, 32, 3)), tf.float32)
    y = tf.constant(np.arange(8) % 10)
    loss = keras.losses.SparseCategoricalCrossentropy()

    def step(v):
        with tf.GradientTape() as tape:
            value = loss(y, model(v, training=True))
        return value, tape.gradient(value, model.trainable_variables)

    winograd = tf.function(step)
    spec = tf.TensorSpec(x.shape, tf.float32)
    graph = winograd.get_concrete_function(spec).graph
    types = [op.type for op in graph.get_operations()]
    assert types.count("KerasResnetWinogradInput") == 2 * 2  # 2 convs: forward + input gradient
    with direct_convolutions():
        direct = tf.function(step)
        want_loss, want = direct(x)
    got_loss, got = winograd(x)
    np.testing.assert_allclose(got_loss.numpy(), want_loss.numpy(), rtol=1e-5)
    # Not elementwise: the forward passes differ by rounding (~1e-5), which flips a
    # few ReLU masks and moves BatchNorm's batch statistics, so single elements of the
    # earlier layers' gradients differ by up to ~1e-2 of their scale (measured), as
    # they would between any two float32 convolution algorithms. Each gradient as a
    # whole must agree to 1e-2 in L2 norm (a wrong transform gives order 1).
    for g, w in zip(got, want):
        g, w = g.numpy().ravel(), w.numpy().ravel()
        assert np.linalg.norm(g - w) <= 1e-2 * np.linalg.norm(w) + 1e-12


def test_frozen_batchnorm_fine_tuning_trains_through_winograd(ops):
    """A frozen BatchNorm (fine-tuning) folds at training=True too; the convolution
    must still get its gradient through the Winograd path."""
    model = small_bottleneck_net()
    kr.finetune.set_trainable_stages(model, "all", freeze_batchnorm=True)
    x = tf.constant(np.random.default_rng(3).uniform(0, 255, (8, 32, 32, 3)), tf.float32)
    y = tf.constant(np.arange(8) % 10)
    loss = keras.losses.SparseCategoricalCrossentropy()
    variables = model.trainable_variables

    def grads():
        with tf.GradientTape() as tape:
            value = loss(y, model(x, training=True))
        return tape.gradient(value, variables)

    got = tf.function(grads)()
    with direct_convolutions():
        want = tf.function(grads)()
    assert all(g is not None for g in got)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g.numpy(), w.numpy(), atol=1e-4 * (np.abs(w.numpy()).max() + 1e-6),
                                   rtol=0)


def test_exports_never_contain_the_winograd_ops(ops, tmp_path):
    model = small_bottleneck_net()
    x = np.random.default_rng(4).uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    want = model.predict(x, verbose=0)
    # Keras's own export (traced inside tf.saved_model.save's context or not).
    model.export(str(tmp_path / "keras_export"), verbose=False)
    # keras_resnet's serving export.
    kr.export(model, str(tmp_path / "served"), version=1)
    for root, _, files in os.walk(tmp_path):
        for name in files:
            if name.endswith(".pb"):
                data = open(os.path.join(root, name), "rb").read()
                assert b"KerasResnetWinograd" not in data, os.path.join(root, name)
    reloaded = tf.saved_model.load(str(tmp_path / "keras_export"))
    np.testing.assert_allclose(reloaded.serve(x).numpy(), want, atol=1e-5, rtol=1e-4)


def test_other_runtimes_converters_trace_without_the_winograd_ops(ops, tmp_path):
    """TFLite's converter and Keras's ONNX export trace the model with the same
    `training=False` call as `predict`; the graphs they convert must still be
    made of ops their runtimes have."""
    model = small_bottleneck_net()
    x = np.random.default_rng(5).uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    want = model.predict(x, verbose=0)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    flatbuffer = converter.convert()  # fails on an op TFLite does not have
    assert b"KerasResnetWinograd" not in flatbuffer
    pytest.importorskip("tf2onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    path = str(tmp_path / "model.onnx")
    model.export(path, format="onnx", verbose=False)
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-4)


def test_eager_calls_and_biased_convolutions_take_winograd(ops, monkeypatch):
    """Called eagerly (no tf.function), on a net without BatchNorm whose convolutions
    carry biases: the Winograd path is taken, forward and backward, with the direct
    path's results."""
    calls = []
    original = kernels.winograd_conv
    monkeypatch.setattr(kernels, "winograd_conv",
                        lambda *a, **k: calls.append(1) or original(*a, **k))
    model = small_bottleneck_net(normalization=None)
    x = tf.constant(np.random.default_rng(7).uniform(0, 1, (8, 32, 32, 3)), tf.float32)

    def run():
        with tf.GradientTape() as tape:
            y = model(x, training=True)
            loss = tf.reduce_sum(y * tf.range(10, dtype=tf.float32))
        return y.numpy(), [g.numpy() for g in tape.gradient(loss, model.trainable_variables)]

    got, got_grads = run()
    assert len(calls) == 2  # both stride-1 128-wide 3x3 convolutions
    with direct_convolutions():
        want, want_grads = run()
    assert len(calls) == 2
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-4)
    for g, w in zip(got_grads, want_grads):
        assert np.linalg.norm(g - w) <= 1e-3 * np.linalg.norm(w) + 1e-12


def test_training_with_a_dynamic_batch_differentiates_through_the_run_time_choice(ops):
    model = small_bottleneck_net()
    loss = keras.losses.SparseCategoricalCrossentropy()

    def step(v, y):
        with tf.GradientTape() as tape:
            value = loss(y, model(v, training=True))
        return value, tape.gradient(value, model.trainable_variables)

    specs = (tf.TensorSpec((None, 32, 32, 3), tf.float32), tf.TensorSpec((None,), tf.int64))
    winograd = tf.function(step, input_signature=specs)
    assert winograd_op_count(winograd, *specs) >= 2  # inside tf.cond branches
    with direct_convolutions():
        direct = tf.function(step, input_signature=specs)
        direct.get_concrete_function()
    for batch in (2, 8):  # 32 tiles (direct branch), 128 tiles (Winograd branch)
        x = tf.constant(np.random.default_rng(batch).uniform(0, 255, (batch, 32, 32, 3)), tf.float32)
        y = tf.constant(np.arange(batch) % 10, tf.int64)
        (got_loss, got), (want_loss, want) = winograd(x, y), direct(x, y)
        np.testing.assert_allclose(got_loss.numpy(), want_loss.numpy(), rtol=1e-5)
        for g, w in zip(got, want):
            assert np.linalg.norm(g.numpy() - w.numpy()) <= 1e-2 * np.linalg.norm(w.numpy()) + 1e-12


def test_xla_traces_tensorflow_ops_only(ops):
    """XLA cannot compile custom ops: under jit_compile neither kernel is traced."""
    model = small_bottleneck_net()
    x = tf.constant(np.random.default_rng(8).uniform(0, 255, (8, 32, 32, 3)), tf.float32)
    with direct_convolutions():
        want = model(x, training=False).numpy()
    got = tf.function(lambda v: model(v, training=False), jit_compile=True)(x).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-4)
