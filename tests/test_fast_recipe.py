"""The fast-CIFAR options (issue 27): each trick is a library option with a test.

Patch-whitening stem, fixed BatchNorm scales, BatchNorm-bias learning-rate
multiplier, lookahead, alternating flip, reflect-padded translation, multi-crop
TTA, and a smoke run of the `cifar10_airbench` recipe.
"""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_resnet as kr
from keras_resnet import augment as aug
from keras_resnet import layers as blocks
from keras_resnet import optimizers, recipes
from keras_resnet.data import make_pipelines
from keras_resnet.lookahead import Lookahead
from keras_resnet.training import evaluate_model, train


# ------------------------------------------------------------------ whitening stem
def correlated_images(n=256, size=8, seed=0):
    """Images whose neighbouring pixels and channels are strongly correlated."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, size // 2, size // 2, 1))
    smooth = np.repeat(np.repeat(base, 2, axis=1), 2, axis=2)
    colour = np.concatenate([smooth, 0.8 * smooth, 0.5 * smooth], axis=-1)
    return (colour + 0.1 * rng.normal(size=colour.shape)).astype("float32")


def test_patch_whitening_output_has_identity_covariance():
    images = correlated_images()
    layer = blocks.PatchWhitening(2, epsilon=1e-6)
    layer.adapt(images)
    out = np.asarray(layer(images))
    assert out.shape == (256, 7, 7, 24)
    half = out[..., :12].reshape(-1, 12)  # the eigen-filters; the rest are their negatives
    covariance = half.T @ half / len(half)
    np.testing.assert_allclose(covariance, np.eye(12), atol=0.02)
    np.testing.assert_allclose(out[..., 12:], -out[..., :12], atol=1e-5)
    # Before adapt, the input covariance is far from white.
    raw = np.lib.stride_tricks.sliding_window_view(images, (2, 2), axis=(1, 2))
    raw = raw.transpose(0, 1, 2, 4, 5, 3).reshape(-1, 12)
    assert np.abs(raw.T @ raw / len(raw) - np.eye(12)).max() > 0.3


def test_patch_whitening_kernel_is_frozen_bias_trains_and_config_round_trips():
    layer = blocks.PatchWhitening(2)
    layer.build((None, 8, 8, 3))
    assert [w.name for w in layer.trainable_weights] == ["bias"]
    assert [w.name for w in layer.non_trainable_weights] == ["kernel"]
    clone = blocks.PatchWhitening.from_config(layer.get_config())
    assert (clone.kernel_size, clone.epsilon) == (2, 5e-4)


@pytest.mark.parametrize("kwargs, message", [
    (dict(kernel_size=0), "kernel_size=0"),
    (dict(epsilon=-1.0), "epsilon=-1.0"),
])
def test_patch_whitening_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        blocks.PatchWhitening(**kwargs)


def test_patch_whitening_adapt_rejects_bad_images():
    layer = blocks.PatchWhitening(2)
    with pytest.raises(ValueError, match="images.shape"):
        layer.adapt(np.zeros((4, 8, 8)))
    bad = correlated_images(n=4)
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        layer.adapt(bad)


def test_resnet9_whiten_model_saves_and_loads_exactly(tmp_path):
    model = kr.create_model("resnet9_whiten")
    model.get_layer("conv1_whiten").adapt(correlated_images(n=16, size=32))
    assert not any(isinstance(l, keras.layers.BatchNormalization) and l.scale
                   for l in blocks.walk_layers(model))
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(model.predict(x, verbose=0), loaded.predict(x, verbose=0))


def test_resnet9_rejects_unknown_stem_and_zero_init_without_scale():
    with pytest.raises(ValueError, match="stem='patch'"):
        kr.create_model("resnet9_half", stem="patch")
    with pytest.raises(ValueError, match="bn_scale=False"):
        kr.create_model("resnet9_half", bn_scale=False, zero_init_last_bn=True)


@pytest.mark.parametrize("training", [True, False])
def test_fused_batchnorm_without_scale_matches_keras(training):
    x = np.random.default_rng(0).normal(size=(4, 5, 5, 6)).astype("float32")
    ours = blocks.FusedBatchNormalization(scale=False, momentum=0.4)
    ref = keras.layers.BatchNormalization(scale=False, momentum=0.4)
    for layer in (ours, ref):
        layer.build(x.shape)
        layer.beta.assign(np.linspace(-1, 1, 6))
        layer.moving_mean.assign(np.linspace(0, 1, 6))
        layer.moving_variance.assign(np.linspace(1, 2, 6))
    np.testing.assert_allclose(ours(x, training=training), ref(x, training=training), atol=1e-4)
    # The moving statistics move with the same momentum (unbiased vs biased
    # variance differ by 1 / (N - 1)).
    np.testing.assert_allclose(ours.moving_mean, ref.moving_mean, atol=1e-5)
    np.testing.assert_allclose(ours.moving_variance, ref.moving_variance, rtol=0.02)


# ----------------------------------------------------- BatchNorm-bias learning rate
def _tiny_bn_model():
    inputs = keras.Input((4, 4, 2))
    x = keras.layers.Conv2D(3, 1, use_bias=False, name="conv")(inputs)
    x = blocks.FusedBatchNormalization(name="bn")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(2, name="dense")(x))


def _one_sgd_step(multiplier):
    keras.utils.set_random_seed(3)
    model = _tiny_bn_model()
    optimizer = optimizers.SGD(learning_rate=0.01, momentum=0.9, nesterov=True)
    model.compile(optimizer=optimizer, loss="mse")
    if multiplier is not None:
        per_path = optimizers.batchnorm_bias_multipliers(model, multiplier)
        assert list(per_path) == [model.get_layer("bn").beta.path]
        optimizers.scale_learning_rates(optimizer, model, per_path, group="batchnorm_bias")
    before = [w.numpy().copy() for w in model.trainable_weights]
    x = np.random.default_rng(0).normal(size=(8, 4, 4, 2)).astype("float32")
    y = np.random.default_rng(1).normal(size=(8, 2)).astype("float32")
    model.train_on_batch(x, y)
    return {w.path: w.numpy() - b for w, b in zip(model.trainable_weights, before)}


def test_batchnorm_bias_multiplier_scales_only_the_bias_step():
    plain, scaled = _one_sgd_step(None), _one_sgd_step(64.0)
    for path, step in plain.items():
        factor = 64.0 if path.endswith("bn/beta") else 1.0
        np.testing.assert_allclose(scaled[path], factor * step, rtol=1e-4, atol=1e-9)
    assert np.abs(plain["bn/beta"]).max() > 0  # the comparison is not vacuous


def test_learning_rate_groups_compose_and_replace():
    model = _tiny_bn_model()
    optimizer = optimizers.SGD(learning_rate=0.1)
    beta, kernel = model.get_layer("bn").beta.path, model.get_layer("dense").kernel.path
    optimizers.scale_learning_rates(optimizer, model, {beta: 4.0}, group="a")
    effective = optimizers.scale_learning_rates(optimizer, model, {beta: 0.5, kernel: 2.0}, group="b")
    assert effective == {beta: 2.0, kernel: 2.0}
    effective = optimizers.scale_learning_rates(optimizer, model, {kernel: 3.0}, group="b")
    assert effective == {beta: 4.0, kernel: 3.0}
    with pytest.raises(ValueError, match="-1"):
        optimizers.scale_learning_rates(optimizer, model, {beta: -1}, group="c")


# ---------------------------------------------------------------------- lookahead
def test_lookahead_update_rule_and_final_weights():
    model = _tiny_bn_model()
    model.compile(optimizer="sgd", loss="mse")
    look = Lookahead(total_steps=10, every=5, max_decay=0.5, power=1.0)
    look.set_model(model)
    look.on_train_begin()
    start = [v.numpy().copy() for v in look._variables]
    for v in look._variables:
        v.assign(v.numpy() + 1.0)
    look.sync(look.decay(5))  # decay 0.25: slow moves 3/4 of the way
    assert look.decay(5) == pytest.approx(0.25)
    for v, s in zip(look._variables, start):
        np.testing.assert_allclose(v.numpy(), s + 0.75, rtol=1e-6)
    moving = model.get_layer("bn").moving_mean.path
    assert moving in [v.path for v in look._variables]  # BN statistics are averaged too


def test_lookahead_in_fit_keeps_slow_weights_at_the_end():
    model = _tiny_bn_model()
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    x = np.random.default_rng(0).normal(size=(32, 4, 4, 2)).astype("float32")
    y = np.random.default_rng(1).normal(size=(32, 2)).astype("float32")
    look = Lookahead(total_steps=8, every=2, max_decay=0.9, power=1.0)
    syncs = []
    original = look.sync
    look.sync = lambda decay: (syncs.append(decay), original(decay))
    model.fit(x, y, batch_size=8, epochs=2, callbacks=[look], verbose=0)
    assert syncs == pytest.approx([0.9 * s / 8 for s in (2, 4, 6, 8)] + [1.0])
    for v, slow in zip(look._variables, look._slow):
        np.testing.assert_array_equal(v.numpy(), slow)


@pytest.mark.parametrize("kwargs, message", [
    (dict(total_steps=0), "total_steps=0"),
    (dict(total_steps=10, every=0), "every=0"),
    (dict(total_steps=10, max_decay=1.5), "max_decay=1.5"),
])
def test_lookahead_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Lookahead(**kwargs)


# -------------------------------------------------------------- flips and crops
def test_alternating_flip_is_deterministic_and_alternates():
    seed = tf.constant([7, 2], tf.int64)
    ids = tf.range(200, dtype=tf.int64)
    first = np.array([bool(aug.alternating_flip(i, tf.constant(0, tf.int64), seed)) for i in ids])
    again = np.array([bool(aug.alternating_flip(i, tf.constant(0, tf.int64), seed)) for i in ids])
    second = np.array([bool(aug.alternating_flip(i, tf.constant(1, tf.int64), seed)) for i in ids])
    third = np.array([bool(aug.alternating_flip(i, tf.constant(2, tf.int64), seed)) for i in ids])
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(second, ~first)
    np.testing.assert_array_equal(third, first)
    assert 60 < first.sum() < 140  # a fair coin per image in the first pass


def _id_images(n, size=8):
    """Image i: left half i, right half i + 100 (a flip is visible and undoable)."""
    x = np.zeros((n, size, size, 3), "uint8")
    x[:, :, : size // 2] = np.arange(n)[:, None, None, None]
    x[:, :, size // 2:] = np.arange(n)[:, None, None, None] + 100
    return x


def test_pipeline_alternating_flip_flips_each_image_every_other_pass(monkeypatch):
    from keras_resnet.data import pipeline

    # A buffer half a pass long, as CIFAR-10's 20,000 of 50,000: neighbouring
    # passes mix, yet an image's copies still come out in pass order.
    monkeypatch.setattr(pipeline, "SHUFFLE_BUFFER", 32)
    n = 64
    x, y = _id_images(n), np.arange(n) % 2
    train_ds, _, _ = make_pipelines((x, y), batch_size=16, augment="cifar", flip="alternating",
                                    crop_padding=0, seed=3, deterministic=True, validation_split=0.0)
    images = np.concatenate([b[0].numpy() for b in train_ds.take(6 * n // 16)])
    ids = np.where(images[:, 0, 0, 0] < 100, images[:, 0, 0, 0], images[:, 0, -1, 0]).astype(int)
    flipped = images[:, 0, 0, 0] >= 100
    # Each image's consecutive appearances show it the other way (random flips:
    # half the time; numbering passes after the shuffle: about a third repeat).
    changes = [a != b for i in range(n) for a, b in zip(flipped[ids == i][:-1], flipped[ids == i][1:])]
    assert len(changes) > 4 * n and np.mean(changes) > 0.85, np.mean(changes)  # 0.61 if passes were numbered after the shuffle
    assert 0.2 < flipped[:n].mean() < 0.8
    random_ds, _, _ = make_pipelines((x, y), batch_size=16, augment="cifar", crop_padding=0, seed=3,
                                     deterministic=True, validation_split=0.0)
    rand = np.concatenate([b[0].numpy() for b in random_ds.take(6 * n // 16)])
    rand_flipped = rand[:, 0, 0, 0] >= 100
    rand_ids = np.where(rand[:, 0, 0, 0] < 100, rand[:, 0, 0, 0], rand[:, 0, -1, 0]).astype(int)
    rand_changes = [a != b for i in range(n) for a, b in zip(rand_flipped[rand_ids == i][:-1],
                                                             rand_flipped[rand_ids == i][1:])]
    assert np.mean(rand_changes) < 0.75  # the test can tell the two apart


def test_recipe_model_options_are_merged():
    cfg = recipes.get_recipe("cifar10_airbench", model_options={"bn_momentum": 0.6})
    assert cfg.model_options["bn_momentum"] == 0.6
    assert tuple(cfg.model_options["stage_filters"]) == (64, 256, 256)


@pytest.mark.parametrize("field, value", [("tta_translate", -1), ("whitening_examples", 0),
                                          ("initial_lr_fraction", 1.5)])
def test_train_rejects_bad_fast_options_before_training(tmp_path, field, value):
    with pytest.raises(ValueError, match=f"{field}={value}"):
        train(recipes.get_recipe("cifar10_airbench", output=str(tmp_path / "r"), **{field: value}))


def test_reflect_padding_translation_shows_no_border():
    image = tf.fill([8, 8, 3], 50.0) + tf.reshape(tf.range(8, dtype=tf.float32), [1, 8, 1])
    for s in range(20):
        out = aug.cifar_augment(image, tf.constant([s, 0], tf.int64), pad=2, pad_mode="reflect")
        assert float(tf.reduce_min(out)) >= 50.0
    zero = [float(tf.reduce_min(aug.cifar_augment(image, tf.constant([s, 0], tf.int64), pad=2)))
            for s in range(20)]
    assert min(zero) == 0.0


@pytest.mark.parametrize("kwargs, message", [
    (dict(flip="sometimes"), "flip='sometimes'"),
    (dict(crop_padding=-1), "crop_padding=-1"),
    (dict(crop_pad_mode="wrap"), "crop_pad_mode='wrap'"),
])
def test_pipeline_rejects_bad_flip_and_crop_options(kwargs, message):
    x, y = _id_images(8), np.arange(8) % 2
    with pytest.raises(ValueError, match=message):
        make_pipelines((x, y), batch_size=4, **kwargs)


# ---------------------------------------------------------------- multi-crop TTA
def test_multicrop_tta_matches_an_independent_computation():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    h = keras.layers.Flatten()(h)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(h))
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (40, 8, 8, 3)).astype("float32")
    y = rng.integers(0, 3, 40)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    metrics = evaluate_model(model, ds, tta_flip=True, tta_translate=1)

    def logp(images):
        return np.log(model.predict(images, verbose=0))

    def pair(images):
        return (logp(images) + logp(images[:, :, ::-1])) / 2

    padded = np.pad(x, [(0, 0), (1, 1), (1, 1), (0, 0)], mode="reflect")
    views = [pair(padded[:, 0:8, 0:8]), pair(padded[:, 2:10, 2:10])]
    expected = 0.5 * pair(x) + 0.25 * (views[0] + views[1])
    assert metrics["test_accuracy_multicrop_tta"] == np.mean(expected.argmax(-1) == y)
    assert metrics["test_accuracy_flip_tta"] == np.mean(pair(x).argmax(-1) == y)
    assert metrics["test_accuracy"] == np.mean(logp(x).argmax(-1) == y)
    with pytest.raises(ValueError, match="tta_translate=-1"):
        evaluate_model(model, ds, tta_translate=-1)


# ----------------------------------------------------------------- recipe smoke
@pytest.mark.slow
def test_airbench_recipe_smoke_run(tmp_path):
    """Every option of `cifar10_airbench` on a tiny budget: runs, learns, records them."""
    from tests.test_training import make_npz

    cfg = recipes.get_recipe(
        "cifar10_airbench", dataset=make_npz(tmp_path / "d.npz", n=256, size=16),
        batch_size=32, epochs=2, steps_per_epoch=6, precision="float32",
        output=str(tmp_path / "run"), verbose=0, whitening_examples=64)
    result = train(cfg)
    assert result.metrics["epochs"] == 2
    assert "test_accuracy_multicrop_tta" in result.metrics
    losses = [float(v) for v in result.history["loss"]]
    assert losses[-1] < losses[0]
    stem = result.model.get_layer("conv1_whiten")
    assert np.abs(stem.kernel.numpy()).max() > 1.0  # set from data (glorot values are < 1)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["config"]
    assert saved["flip"] == "alternating" and saved["bn_bias_lr_multiplier"] == 64.0


def test_resnet9_stage_filters_set_each_stage_width():
    model = kr.create_model("resnet9_whiten", stage_filters=(64, 256, 256))
    widths = [model.get_layer(f"conv{i}_conv").filters for i in (2, 3, 4)]
    assert widths == [64, 256, 256]
    assert model.get_layer("conv4_block1").filters == 256
    default = kr.create_model("resnet9_half")
    assert [default.get_layer(f"conv{i}_conv").filters for i in (2, 3, 4)] == [64, 128, 256]
    with pytest.raises(ValueError, match="stage_filters=\\(1, 2\\)"):
        kr.create_model("resnet9_half", stage_filters=(1, 2))
