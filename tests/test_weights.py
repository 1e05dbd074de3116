"""Weights: the keras.applications port (parity), weight files, and `weights="imagenet"`
(offline: the applications are built with `weights=None`; nothing is downloaded)."""

import keras
import numpy as np
import pytest

import keras_resnet as kr
from harness import all_layers, random_inputs, randomize_weights, sublayer, to_numpy

APPS = ("ResNet50", "ResNet101", "ResNet152", "ResNet50V2", "ResNet101V2", "ResNet152V2")


@pytest.fixture(autouse=True)
def _refuse_downloads(no_downloads):
    """Every test here runs with downloads refused (conftest's `no_downloads`)."""


@pytest.fixture
def fake_imagenet(monkeypatch):
    """keras.applications ResNets whose "imagenet" weights are seeded random values
    (BatchNorm statistics included): exercises `weights="imagenet"` end to end offline."""
    built = []

    def factory(name):
        real = getattr(keras.applications, name)

        def fake(weights="imagenet", **kwargs):
            assert weights == "imagenet"
            app = real(weights=None, **kwargs)
            randomize_weights(app, seed=len(built) + 1)
            built.append(app)
            return app
        return fake

    for name in APPS:
        monkeypatch.setattr(keras.applications, name, factory(name))
    return built


def _weighted(model):
    """Leaf layers that own weights, by name (looking inside the blocks)."""
    return {l.name: l for l in all_layers(model)
            if l.weights and not list(l._flatten_layers(include_self=False))}


def _assert_same_weights(app, model, skip=()):
    """Every weighted layer of `app` has an equal-valued twin in `model`."""
    ours = _weighted(model)
    theirs = _weighted(app)
    assert set(theirs) - set(skip) <= set(ours)
    for name, layer in theirs.items():
        if name in skip:
            continue
        for a, b in zip(layer.weights, ours[name].weights):
            np.testing.assert_array_equal(to_numpy(a), to_numpy(b), err_msg=f"{name}/{a.name}")


def _max_diff(a, b):
    return float(np.abs(to_numpy(a) - to_numpy(b)).max())


# --- keras.applications parity ---------------------------------------------------

@pytest.mark.parametrize("app_name", ["ResNet50", "ResNet50V2"])
def test_keras_applications_parity(app_name):
    """Random weights (BN statistics too), ported: the same logits at 224 px."""
    app = getattr(keras.applications, app_name)(weights=None, classifier_activation=None)
    randomize_weights(app)
    ours = kr.from_keras_applications(app)
    assert ours.count_params() == app.count_params()
    assert ours.output_shape == (None, 1000)
    x = np.random.default_rng(1).normal(0, 1, (2, 224, 224, 3)).astype("float32")
    ref = to_numpy(app(x, training=False))
    got = to_numpy(ours(x, training=False))
    assert np.abs(ref).max() > 0.1 and ref.std(axis=-1).min() > 1e-2  # not a degenerate output
    assert _max_diff(got, ref) <= 1e-4

    # Negative controls: one mis-ported layer is far outside the tolerance.
    def corrupted(layer_name, corrupt):
        layer = sublayer(ours, layer_name)
        saved = layer.get_weights()
        layer.set_weights(corrupt([w.copy() for w in saved]))
        try:
            return _max_diff(ours(x, training=False), ref)
        finally:
            layer.set_weights(saved)

    block = "conv4_block2" if app_name == "ResNet50" else "conv4_block3"
    # Two same-shaped kernels swapped (a name-mapping slip).
    other = sublayer(ours, "conv4_block4_2_conv").get_weights()
    assert corrupted(f"{block}_2_conv", lambda w: other[:1] + w[1:]) > 1e-3
    # BatchNorm moving variance in reversed channel order (an ordering slip).
    assert corrupted(f"{block}_1_bn", lambda w: w[:3] + [w[3][::-1]]) > 1e-3
    # A kernel with its spatial axes transposed (a layout slip).
    assert corrupted(f"{block}_2_conv", lambda w: [w[0].transpose(1, 0, 2, 3)] + w[1:]) > 1e-3
    assert _max_diff(ours(x, training=False), ref) <= 1e-4  # restored


def test_headless_application_ports_headless_with_its_pooling():
    app = keras.applications.ResNet50V2(weights=None, include_top=False, pooling="avg",
                                        input_shape=(96, 96, 3))
    randomize_weights(app)
    ours = kr.from_keras_applications(app)
    assert ours.output_shape == app.output_shape == (None, 2048)
    x = random_inputs(app)
    assert _max_diff(ours(x), app(x)) <= 1e-4
    fmap = kr.from_keras_applications(keras.applications.ResNet50(weights=None, include_top=False,
                                                                  input_shape=(64, 64, 3)))
    assert fmap.output_shape == (None, 2, 2, 2048)


def test_port_to_new_classes_and_size_keeps_the_backbone():
    app = keras.applications.ResNet50(weights=None)
    randomize_weights(app)
    ours = kr.from_keras_applications(app, input_shape=(96, 96, 3), num_classes=10)
    assert ours.output_shape == (None, 10) and ours.input_shape == (None, 96, 96, 3)
    _assert_same_weights(app, ours, skip=("predictions",))
    x = random_inputs(ours)
    c5 = kr.feature_extractor(ours, stages=("C5",))(x)["C5"]
    headless = keras.applications.ResNet50(weights=None, include_top=False)
    headless.set_weights(app.get_weights()[:-2])  # all but the predictions kernel and bias
    assert _max_diff(c5, headless(x)) <= 1e-4


def test_port_weights_rejects_a_different_layout():
    app = keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3))
    v15 = kr.ResNet((64, 64, 3), 1000, depth=50)  # torchvision layout: no conv biases
    with pytest.raises(ValueError, match=r"Cannot port weights of layer 'conv1_conv': shapes"):
        kr.port_weights(app, v15)
    _, layout = kr.weights.imagenet_layout(50, False)
    shallower = kr.ResNet((64, 64, 3), 1000, stages=[(3, 64, 1), (4, 128, 2), (5, 256, 2), (3, 512, 2)],
                          stem="imagenet", **layout)  # one block fewer in conv4
    with pytest.raises(ValueError, match=r"layer 'conv4_block6_1_conv' of 'resnet50' has no counterpart"):
        kr.port_weights(app, shallower)
    with pytest.raises(ValueError, match=r"app_model.name='tiny'.*Supported"):
        kr.from_keras_applications(keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)], name="tiny"))


def test_strict_port_refuses_to_leave_layers_untouched():
    app = keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3))
    stages, layout = kr.weights.imagenet_layout(50, False)
    se = kr.ResNet((64, 64, 3), 1000, 50, stages=stages, stem="imagenet", se_ratio=1 / 16, **layout)
    ported = kr.port_weights(app, se)  # lenient: the SE layers keep their initial values
    assert "conv2_block1_1_conv" in ported and not any("_se" in n for n in ported)
    with pytest.raises(ValueError, match=r"have no counterpart in 'resnet50'.*conv2_block1_se"):
        kr.port_weights(app, se, strict=True)


# --- weight files --------------------------------------------------------------------

@pytest.mark.parametrize("fmt", [".weights.h5", ".keras"])
def test_weights_file_round_trip(tmp_path, fmt):
    src = kr.ResNet((32, 32, 3), 10)
    randomize_weights(src)
    path = tmp_path / f"w{fmt}"
    src.save_weights(str(path)) if fmt == ".weights.h5" else src.save(str(path))
    x = random_inputs(src)
    for weights in (str(path), path):  # str or pathlib.Path
        dst = kr.ResNet((32, 32, 3), 10, weights=weights)
        np.testing.assert_array_equal(to_numpy(dst(x)), to_numpy(src(x)))
    # A .keras file fills a model with a different head size (fine-tuning), backbone only.
    if fmt == ".keras":
        other = kr.ResNet((32, 32, 3), 5, weights=path)
        assert other.output_shape == (None, 5)
        _assert_same_weights(src, other, skip=("predictions",))


def test_weights_file_of_another_architecture(tmp_path):
    kr.ResNet((32, 32, 3), 10, 20).save(str(tmp_path / "r20.keras"))
    kr.ResNet((32, 32, 3), 10, 20).save_weights(str(tmp_path / "r20.weights.h5"))
    # resnet32 has every layer of resnet20 and more: a partial load must not pass silently.
    with pytest.raises(ValueError, match=r"have no counterpart in 'resnet20'.*conv2_block4"):
        kr.ResNet((32, 32, 3), 10, 32, weights=str(tmp_path / "r20.keras"))
    with pytest.raises(ValueError):
        kr.ResNet((32, 32, 3), 10, 32, weights=str(tmp_path / "r20.weights.h5"))


def test_bad_weights_arguments(tmp_path):
    (tmp_path / "w.h5").write_bytes(b"")
    with pytest.raises(ValueError, match=r"'\.weights\.h5' or '\.keras'.*w\.h5"):
        kr.ResNet((32, 32, 3), 10, weights=str(tmp_path / "w.h5"))
    with pytest.raises(ValueError, match=r"not found.*weights='.*nope\.keras'"):
        kr.ResNet((32, 32, 3), 10, weights=str(tmp_path / "nope.keras"))
    with pytest.raises(ValueError, match=r"weights=123"):
        kr.ResNet((32, 32, 3), 10, weights=123)


# --- weights="imagenet" ------------------------------------------------------------------

@pytest.mark.parametrize("build, match", [
    (lambda: kr.ResNet((224, 224, 3), 1000, 18, weights="imagenet"), r"\[50, 101, 152\].*depth=18"),
    (lambda: kr.ResNet((224, 224, 3), 1000, 34, weights="imagenet"), "depth=34"),
    (lambda: kr.ResNet((224, 224, 3), 1000, 200, weights="imagenet"), "depth=200"),
    (lambda: kr.create_model("resnet20", weights="imagenet"), "depth=20"),
    (lambda: kr.create_model("preact_resnet18", weights="imagenet"), r"depth=18, preact=True"),
    (lambda: kr.create_model("resnet50d", weights="imagenet"), r"conflicting options.*'stem': 'deep'"),
    (lambda: kr.create_model("se_resnet50", weights="imagenet"), r"no weights for.*'se_ratio': 0\.0625"),
    (lambda: kr.create_model("resnext50_32x4d", weights="imagenet"), r"no weights for.*'groups': 32"),
    (lambda: kr.ResNet((224, 224, 3), 1000, 50, width=2, weights="imagenet"), r"'width': 2"),
    (lambda: kr.ResNet((224, 224, 3), 1000, 50, stride_on="3x3", weights="imagenet"),
     r"conflicting options.*'stride_on': '3x3'"),
    (lambda: kr.ResNet((224, 224, 3), 1000, 50, shortcut="avg_pool", weights="imagenet"),
     r"conflicting options.*'shortcut': 'avg_pool'"),
])
def test_imagenet_weights_unavailable_raise_before_any_download(build, match, fake_imagenet):
    with pytest.raises(ValueError, match=match):
        build()
    assert fake_imagenet == [], "nothing may be built or fetched for an invalid request"


def test_imagenet_weights_v1(fake_imagenet):
    """ResNet50 with weights="imagenet" takes the keras.applications layout and values."""
    model = kr.ResNet50(weights="imagenet")  # the registry's default resnet50 is v1.5 ...
    (app,) = fake_imagenet
    assert app.name == "resnet50" and app.output_shape == (None, 1000)
    # ... so the weights force v1: stride on the first 1x1, conv biases.
    assert sublayer(model, "conv3_block1_1_conv").strides == (2, 2)
    assert sublayer(model, "conv3_block1_2_conv").use_bias
    _assert_same_weights(app, model)
    x = random_inputs(model, batch=1)
    assert _max_diff(model(x), app(x)) <= 1e-5


def test_imagenet_weights_v2_headless_and_new_head(fake_imagenet):
    model = kr.create_model("resnet50_v2", weights="imagenet", include_top=False, pooling="avg",
                            input_shape=(96, 96, 3))
    tuned = kr.ResNet((96, 96, 3), 5, 50, preact=True, weights="imagenet")
    first, second = fake_imagenet
    assert first.name == "resnet50v2" and first.output_shape == (None, None, None, 2048)  # no top
    assert second.output_shape == (None, None, None, 2048)  # 5 classes: the 1000-class head is useless
    _assert_same_weights(first, model)
    _assert_same_weights(second, tuned)
    assert tuned.output_shape == (None, 5)
    x = random_inputs(model, batch=1)
    ref = keras.layers.GlobalAveragePooling2D()(first(x))
    assert _max_diff(model(x), ref) <= 1e-4


# --- load_backbone(..., "imagenet") and train(weights="imagenet") by model name ---------

@pytest.mark.parametrize("name, app_name", [
    ("resnet50_v1", "ResNet50"), ("resnet101_v1", "ResNet101"), ("resnet152_v1", "ResNet152"),
    ("resnet50_v2", "ResNet50V2"), ("resnet101_v2", "ResNet101V2"), ("resnet152_v2", "ResNet152V2")])
def test_load_backbone_imagenet_for_every_keras_applications_layout(fake_imagenet, name, app_name):
    """The depth is read from the name's first number (resnet50_v1 is 50, not 501)."""
    from keras_resnet import finetune

    assert kr.weights.keras_applications_name(kr.create_model(name, num_classes=5)) == app_name
    if name not in ("resnet50_v1", "resnet50_v2"):
        return  # the deeper ones: the name check above; the copy below is the same code
    model = kr.create_model(name, num_classes=5, input_shape=(64, 64, 3))
    copied = finetune.load_backbone(model, "imagenet")
    app = fake_imagenet[-1]
    assert len(copied) > 50 and "predictions" not in copied
    _assert_same_weights(app, model, skip=("predictions",))


def test_load_backbone_imagenet_refuses_the_v15_layout_by_name():
    from keras_resnet import finetune

    with pytest.raises(ValueError, match=r"build resnet50_v1 instead.*model.name='resnet50'"):
        finetune.load_backbone(kr.create_model("resnet50", num_classes=5), "imagenet")
    with pytest.raises(ValueError, match=r"depth 18.*model.name='resnet18'"):
        finetune.load_backbone(kr.create_model("resnet18", num_classes=5), "imagenet")


def test_train_with_imagenet_weights_for_a_v1_model(fake_imagenet, tmp_path):
    from tests.conftest import tiny_image_arrays

    arrays = tiny_image_arrays()
    from keras_resnet import data

    train_ds, eval_ds, info = data.make_pipelines(arrays, 8, augment=None)
    result = kr.train({"recipe": "cifar10_fast", "model": "resnet50_v1", "weights": "imagenet",
                       "epochs": 1, "batch_size": 8, "learning_rate": 1e-12, "weight_decay": 0.0,
                       "output": str(tmp_path / "run"), "verbose": 0, "precision": "float32"},
                      train_data=(train_ds, info), eval_data=eval_ds)
    app = fake_imagenet[-1]
    conv = app.get_layer("conv1_conv").kernel.numpy()
    ours = kr.walk_layers(result.model)
    # Trained at a negligible learning rate: the stem is still the ImageNet one it started from.
    stem = next(l for l in ours if l.name == "conv1_conv").kernel.numpy()
    np.testing.assert_allclose(stem, conv, atol=1e-6)
