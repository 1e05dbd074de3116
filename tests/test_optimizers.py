"""keras_resnet.optimizers: Keras's SGD, Adam and AdamW results from one fused kernel per variable."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_resnet import optimizers, recipes
from keras_resnet.training import make_optimizer


def _small_model(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((8, 8, 3)),
        keras.layers.Conv2D(4, 3, use_bias=False),
        keras.layers.BatchNormalization(),
        keras.layers.ReLU(),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(5),
    ])


def _train(optimizer, steps=6, **compile_options):
    model = _small_model()
    model.compile(optimizer=optimizer,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), **compile_options)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((16, 8, 8, 3)).astype("float32")
    y = rng.integers(0, 5, 16)
    losses = [float(model.train_on_batch(x, y)) for _ in range(steps)]
    return model, losses


@pytest.mark.parametrize("options", [
    dict(momentum=0.9),
    dict(momentum=0.9, nesterov=True),
    dict(momentum=0.9, nesterov=True, weight_decay=5e-4, clipnorm=1.0),
    dict(momentum=0.0),  # Keras's own update (nothing to fuse)
])
def test_same_weights_as_keras_sgd(options):
    schedule = keras.optimizers.schedules.PolynomialDecay(0.1, 10, 0.01)
    reference, ref_losses = _train(keras.optimizers.SGD(schedule, **options))
    fused, losses = _train(optimizers.SGD(schedule, **options))
    assert losses[-1] < losses[0]
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, atol=1e-6)
    for a, b in zip(reference.weights, fused.weights):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-5, atol=1e-6, err_msg=a.path)


@pytest.mark.parametrize("name, options, policy, jit_compile", [
    ("SGD", dict(momentum=0.9, nesterov=True), "float32", True),  # XLA has the fused kernels too
    ("AdamW", dict(weight_decay=0.05), "float32", True),
    ("SGD", dict(momentum=0.9, nesterov=True), "mixed_bfloat16", False),
    ("AdamW", dict(weight_decay=0.05), "mixed_bfloat16", False),
    ("SGD", dict(momentum=0.9, nesterov=True), "mixed_float16", False),  # in a LossScaleOptimizer
])
def test_same_weights_as_keras_under_xla_and_mixed_precision(name, options, policy, jit_compile):
    keras.mixed_precision.set_global_policy(policy)
    try:
        reference, ref_losses = _train(getattr(keras.optimizers, name)(0.05, **options),
                                       jit_compile=jit_compile)
        fused, losses = _train(getattr(optimizers, name)(0.05, **options), jit_compile=jit_compile)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert losses[-1] < losses[0]
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-4, atol=1e-5)
    for a, b in zip(reference.weights, fused.weights):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-4, atol=1e-5, err_msg=a.path)


@pytest.mark.parametrize("name, options", [
    ("Adam", dict()),
    ("Adam", dict(beta_1=0.8, beta_2=0.99, epsilon=1e-5, clipnorm=1.0)),
    ("AdamW", dict(weight_decay=0.05)),
    ("AdamW", dict(weight_decay=0.05, amsgrad=True)),  # Keras's own update (AMSGrad is not fused)
])
def test_adam_and_adamw_same_weights_as_keras(name, options):
    schedule = keras.optimizers.schedules.PolynomialDecay(0.01, 10, 0.001)
    reference, ref_losses = _train(getattr(keras.optimizers, name)(schedule, **options))
    fused, losses = _train(getattr(optimizers, name)(schedule, **options))
    assert losses[-1] < losses[0]
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, atol=1e-6)
    for a, b in zip(reference.weights, fused.weights):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-5, atol=1e-6, err_msg=a.path)


def _update_op_types(optimizer):
    variable = keras.Variable(np.ones((3, 3), "float32"))
    optimizer.build([variable])

    @tf.function
    def step():
        optimizer.apply_gradients([(tf.ones((3, 3)), variable)])

    return {op.type for op in step.get_concrete_function().graph.get_operations()}


def test_each_step_is_one_fused_kernel():
    assert "ResourceApplyKerasMomentum" in _update_op_types(optimizers.SGD(0.1, momentum=0.9))
    assert "ResourceApplyKerasMomentum" not in _update_op_types(keras.optimizers.SGD(0.1, momentum=0.9))
    assert "ResourceApplyAdam" in _update_op_types(optimizers.Adam(0.1))
    assert "ResourceApplyAdam" in _update_op_types(optimizers.AdamW(0.1, weight_decay=0.01))
    assert "ResourceApplyAdam" not in _update_op_types(keras.optimizers.AdamW(0.1))
    assert "ResourceApplyAdam" not in _update_op_types(optimizers.AdamW(0.1, amsgrad=True))


@pytest.mark.parametrize("optimizer", [optimizers.SGD(0.05, momentum=0.9, nesterov=True),
                                       optimizers.AdamW(0.01, weight_decay=0.01)],
                         ids=["SGD", "AdamW"])
def test_config_and_model_save_round_trip(tmp_path, optimizer):
    model, _ = _train(optimizer)
    restored_opt = keras.optimizers.deserialize(keras.optimizers.serialize(model.optimizer))
    assert type(restored_opt) is type(optimizer)
    assert restored_opt.get_config() == model.optimizer.get_config()

    path = str(tmp_path / "m.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    assert type(restored.optimizer) is type(optimizer)
    for a, b in zip(model.optimizer.variables, restored.optimizer.variables):
        np.testing.assert_array_equal(b.numpy(), a.numpy())


def test_recipes_train_with_the_fused_optimizers():
    config = recipes.get_recipe("cifar10_fast")
    optimizer = make_optimizer(config, steps_per_epoch=10, total_steps=100, global_batch=512)
    assert type(optimizer) is optimizers.SGD
    assert optimizer.nesterov and optimizer.momentum == pytest.approx(0.9)
    config = recipes.get_recipe("cifar10_fast", optimizer="adamw", weight_decay_mode="decoupled",
                                weight_decay=0.05)
    optimizer = make_optimizer(config, steps_per_epoch=10, total_steps=100, global_batch=512)
    assert type(optimizer) is optimizers.AdamW and optimizer.weight_decay == pytest.approx(0.05)
