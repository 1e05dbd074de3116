"""Fine-tuning: frozen stages stay bit-identical, per-stage learning rates are exact,
head replacement keeps the backbone, and resumption continues the schedule."""

import numpy as np
import pytest
import keras

import keras_resnet as kr
from keras_resnet import finetune


def tiny(num_classes=4, **kw):
    # Two stages, one block each: fast, but every mechanism is exercised.
    return kr.ResNet((16, 16, 3), num_classes, stages=[(1, 8, 1), (1, 16, 2)], block="basic",
                     stem="cifar", stem_filters=8, **kw)


def data(n=32, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (n, 16, 16, 3)).astype("float32")
    y = keras.utils.to_categorical(rng.integers(0, classes, n), classes)
    return x, y


def snapshot(layers):
    return [w.numpy().copy() for layer in layers for w in layer.weights]


def stage_layers(model, stage):
    return [l for l in model.layers if finetune.stage_of(l.name) == stage and l.weights]


def test_stage_names():
    m = tiny()
    assert finetune.stage_names(m) == ["stem", "conv2", "conv3", "head"]


def test_frozen_stage_bit_identical_then_changes_after_scheduled_epoch():
    m = tiny()
    m.compile(keras.optimizers.SGD(0.1, momentum=0.9), "categorical_crossentropy")
    x, y = data()
    conv2 = stage_layers(m, "conv2")
    before = snapshot(conv2)
    bn_vars = [v for l in conv2 for v in l.weights if "moving" in v.path]
    assert bn_vars, "the stage must hold BatchNorm moving statistics"
    recorder = []

    class Record(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            recorder.append(snapshot(conv2))

    cb = finetune.GradualUnfreezing({0: ["head"], 1: ["head", "conv3"], 2: "all"}, verbose=0)
    m.fit(x, y, batch_size=8, epochs=3, verbose=0, callbacks=[cb, Record()])
    # Epochs 0 and 1: conv2 frozen, every weight incl. moving mean/variance identical.
    for epoch in (0, 1):
        for a, b in zip(before, recorder[epoch]):
            np.testing.assert_array_equal(a, b)
    # Epoch 2: it trains, so its weights and BN statistics move.
    assert any(not np.array_equal(a, b) for a, b in zip(before, recorder[2]))


def test_freeze_batchnorm_keeps_statistics_while_convs_train():
    m = tiny()
    finetune.set_trainable_stages(m, "all", freeze_batchnorm=True)
    m.compile(keras.optimizers.SGD(0.1), "categorical_crossentropy")
    bns = [l for l in kr.walk_layers(m) if isinstance(l, keras.layers.BatchNormalization)]
    stats = [v.numpy().copy() for bn in bns for v in (bn.moving_mean, bn.moving_variance)]
    conv = m.get_layer("conv1_conv").kernel.numpy().copy()
    m.fit(*data(), batch_size=8, epochs=1, verbose=0)
    for a, b in zip(stats, [v.numpy() for bn in bns for v in (bn.moving_mean, bn.moving_variance)]):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(conv, m.get_layer("conv1_conv").kernel.numpy())


def test_stage_learning_rates_are_exact_multiples():
    m = tiny(classifier_activation=None)
    opt = keras.optimizers.SGD(0.1)  # plain SGD: delta = lr * mult * grad
    m.compile(opt, keras.losses.CategoricalCrossentropy(from_logits=True))
    mults = {"head": 1.0, "conv3": 0.5, "conv2": 0.25, "stem": 0.0}
    cb = finetune.DiscriminativeLearningRates(mults)
    x, y = data(8)
    probe = {s: stage_layers(m, s)[0] for s in ("head", "conv3", "conv2", "stem")}
    kernels = {s: next(w for w in l.trainable_weights if "kernel" in w.path) for s, l in probe.items()}
    before = {s: k.numpy().copy() for s, k in kernels.items()}
    import tensorflow as tf
    with tf.GradientTape() as tape:
        loss = m.compute_loss(x=x, y=y, y_pred=m(x, training=True))
    grads = dict(zip([v.path for v in m.trainable_variables], tape.gradient(loss, m.trainable_variables)))
    # One fit step on the same batch; BN in training mode gives the same grads.
    m.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False, callbacks=[cb])
    for stage, k in kernels.items():
        delta = before[stage] - k.numpy()
        expected = 0.1 * mults[stage] * grads[k.path].numpy()
        np.testing.assert_allclose(delta, expected, rtol=2e-3, atol=1e-7)


def test_decay_multipliers():
    m = tiny()
    assert finetune.resolve_multipliers(m, "decay:0.5") == {
        "head": 1.0, "conv3": 0.5, "conv2": 0.25, "stem": 0.125}
    with pytest.raises(ValueError, match="conv9"):
        finetune.resolve_multipliers(m, {"conv9": 1.0})


def test_replace_head_keeps_backbone():
    m = tiny(num_classes=10)
    new = finetune.replace_head(m, 3)
    assert new.output_shape == (None, 3)
    for layer in m.layers:
        if layer.weights and finetune.stage_of(layer.name) != "head":
            for a, b in zip(layer.weights, new.get_layer(layer.name).weights):
                np.testing.assert_array_equal(a.numpy(), b.numpy())
    with pytest.raises(ValueError, match="num_classes=0"):
        finetune.replace_head(m, 0)


def test_load_backbone_from_keras_file_with_new_classes(tmp_path):
    src = tiny(num_classes=10)
    path = str(tmp_path / "src.keras")
    src.save(path)
    dst = tiny(num_classes=3)
    ported = finetune.load_backbone(dst, path)
    assert "predictions" not in ported and "conv1_conv" in ported
    np.testing.assert_array_equal(src.get_layer("conv1_conv").kernel.numpy(),
                                  dst.get_layer("conv1_conv").kernel.numpy())


@pytest.mark.parametrize("fmt", [".keras", ".weights.h5"])
def test_load_backbone_keeps_a_fresh_head_for_the_same_class_count(tmp_path, fmt):
    """Fine-tuning 5 old classes to 5 new ones: the old classifier must not be copied
    (same shape, so a name-based port would copy it silently), unless asked for."""
    keras.utils.set_random_seed(1)
    src = tiny(num_classes=5)
    path = str(tmp_path / f"src{fmt}")
    src.save(path) if fmt == ".keras" else src.save_weights(path)
    keras.utils.set_random_seed(2)
    dst = tiny(num_classes=5)
    fresh_head = dst.get_layer("predictions").kernel.numpy().copy()
    ported = finetune.load_backbone(dst, path)
    assert "predictions" not in ported and "conv1_conv" in ported
    np.testing.assert_array_equal(dst.get_layer("predictions").kernel.numpy(), fresh_head)
    np.testing.assert_array_equal(dst.get_layer("conv1_conv").kernel.numpy(),
                                  src.get_layer("conv1_conv").kernel.numpy())
    finetune.load_backbone(dst, path, include_head=True)
    np.testing.assert_array_equal(dst.get_layer("predictions").kernel.numpy(),
                                  src.get_layer("predictions").kernel.numpy())


def test_resume_mid_schedule_continues(tmp_path):
    """Kill after epoch 1 of a 3-stage schedule; the resumed fit trains conv3 at epoch 1."""
    x, y = data()
    schedule = {0: ["head"], 1: ["head", "conv3"], 2: "all"}

    def run(epochs, stop_after=None):
        keras.utils.set_random_seed(0)
        m = tiny()
        m.compile(keras.optimizers.SGD(0.05, momentum=0.9), "categorical_crossentropy")
        seen = []

        class Spy(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                seen.append((epoch, sorted({finetune.stage_of(l.name) for l in self.model.layers
                                            if l.trainable and l.trainable_weights})))

            def on_epoch_end(self, epoch, logs=None):
                if stop_after is not None and epoch == stop_after:
                    raise KeyboardInterrupt

        backup = kr.callbacks.AtomicBackupAndRestore(str(tmp_path / "backup"))
        # Spy after the backup: the "kill" lands once epoch 0 is backed up.
        cbs = [finetune.GradualUnfreezing(schedule, verbose=0), backup, Spy()]
        try:
            m.fit(x, y, batch_size=8, epochs=epochs, verbose=0, callbacks=cbs)
        except KeyboardInterrupt:
            pass
        return seen

    first = run(3, stop_after=0)
    assert first == [(0, ["head"])]
    resumed = run(3)
    assert resumed[0] == (1, ["conv3", "head"])
    assert resumed[1] == (2, ["conv2", "conv3", "head", "stem"])


def test_recalibrate_batchnorm_gives_batch_statistics():
    import tensorflow as tf
    m = tiny()
    x = np.random.default_rng(1).normal(3.0, 2.0, (64, 16, 16, 3)).astype("float32")
    ds = tf.data.Dataset.from_tensor_slices(x).batch(16)
    used = finetune.recalibrate_batchnorm(m, ds, steps=4)
    assert used == 4
    bn = m.get_layer("conv1_bn")
    feats = keras.Model(m.input, m.get_layer("conv1_conv").output)(x).numpy()
    batch_means = feats.reshape(4, 16, -1, feats.shape[-1]).mean(axis=(1, 2))
    np.testing.assert_allclose(bn.moving_mean.numpy(), batch_means.mean(0), rtol=1e-4, atol=1e-4)
