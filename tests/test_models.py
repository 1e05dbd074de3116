"""The model zoo: parameter counts against the papers and reference implementations,
every registered model through the shared harness, the factory's options, bad input."""

import pathlib
import re
import warnings

import keras
import numpy as np
import pytest

import keras_resnet as kr
from harness import (all_layers, blocks_of, depth_of, random_inputs, run_model_test,
                     sublayer, summary_rows, to_numpy, trainable_count)

# Trainable parameters of each registered model at its registry defaults
# (CIFAR: 10 classes, ImageNet: 1000): (count, relative tolerance, source).
# Exact where a reference implementation fixes the layout.
TV = "torchvision"
KA = "keras.applications (Keras 3.15, weights=None)"
REFERENCE = {
    "resnet20": (269_722, 0, "He et al. 2015 sec. 4.2, option A"),
    "resnet32": (464_154, 0, "He et al. 2015 sec. 4.2, option A (0.46M)"),
    "resnet44": (658_586, 0, "He et al. 2015 sec. 4.2, option A (0.66M)"),
    "resnet56": (853_018, 0, "He et al. 2015 sec. 4.2, option A"),
    "resnet110": (1_727_962, 0, "He et al. 2015 sec. 4.2, option A"),
    "resnet1202": (19.4e6, 0.01, "He et al. 2015 table 6 (19.4M)"),
    # 3x3 convs + BN over the sec. 4.2 layout with n=2 and 32/64/128 filters,
    # counted by hand: 464 stem + 32,512 + 129,536 + 517,120 stages + 1,290 head.
    "resnet14_w2": (680_922, 0, "by hand: He et al. 2015 sec. 4.2 layout, n=2, 2x filters"),
    # Page 2018 (DAWNBench ResNet-9, 6.5M): 3x3 convs of 64, 128 (+2 residual),
    # 256, 512 (+2 residual) filters with BN, bias-free 512x10 classifier:
    # 1,728 + 73,728 + 2*147,456 + 294,912 + 1,179,648 + 2*2,359,296 convs,
    # 2 * 2,240 BN, 5,120 head. Half width: every filter count halved.
    "resnet9": (6_573_120, 0, "by hand: Page 2018 DAWNBench ResNet-9 (6.5M)"),
    "resnet9_half": (1_646_112, 0, "by hand: ResNet-9 with half the filters"),
    # resnet9_half with a 2x2 whitening stem (24 outputs: only its bias trains) and
    # BatchNorm without scales: 24 + 13,824 + 73,728 + 73,728 + 294,912 + 1,179,648
    # convs, 1,088 BN biases, 2,560 head.
    "resnet9_whiten": (1_639_512, 0, "by hand: resnet9_half, whitening stem, no BN scales"),
    "resnet18": (11_689_512, 0, TV), "resnet34": (21_797_672, 0, TV),
    "resnet50": (25_557_032, 0, TV), "resnet101": (44_549_160, 0, TV),
    "resnet152": (60_192_808, 0, TV), "resnet200": (64_673_832, 0, "timm resnet200"),
    "resnet50_v1": (25_583_592, 0, KA), "resnet101_v1": (44_601_832, 0, KA),
    "resnet152_v1": (60_268_520, 0, KA), "resnet50_v2": (25_568_360, 0, KA),
    "resnet101_v2": (44_577_896, 0, KA), "resnet152_v2": (60_236_904, 0, KA),
    "resnet18d": (11_708_744, 0, "timm resnet18d"), "resnet34d": (21_816_904, 0, "timm resnet34d"),
    "resnet50d": (25_576_264, 0, "timm resnet50d"), "resnet101d": (44_568_392, 0, "timm resnet101d"),
    "se_resnet18": (11_778_592, 0, "timm seresnet18"), "se_resnet34": (21_958_868, 0, "timm seresnet34"),
    "se_resnet50": (28_088_024, 0, "timm seresnet50"), "se_resnet101": (49_326_872, 0, "timm seresnet101"),
    # Pre-activation only moves BatchNorms: the CIFAR option-A nets keep their
    # count exactly, the ImageNet ones stay within 0.1% of torchvision's
    # post-activation count (one missing block would be >= 0.6%).
    "preact_resnet20": (269_722, 0, "same as resnet20"),
    "preact_resnet56": (853_018, 0, "same as resnet56"),
    "preact_resnet110": (1_727_962, 0, "He et al. 2016 (1.7M)"),
    "preact_resnet164": (1.7e6, 0.01, "He et al. 2016 (1.7M)"),
    "preact_resnet18": (11_689_512, 0.001, TV), "preact_resnet34": (21_797_672, 0.001, TV),
    "preact_resnet50": (25_557_032, 0.001, TV), "preact_resnet101": (44_549_160, 0.001, TV),
    "preact_resnet152": (60_192_808, 0.001, TV),
    "wrn28_10": (36_479_194, 0, "WideResNet-pytorch; Zagoruyko & Komodakis 2016: 36.5M"),
    "wrn16_8": (11.0e6, 0.01, "Zagoruyko & Komodakis 2016 (11.0M)"),
    "wrn40_4": (8.9e6, 0.01, "Zagoruyko & Komodakis 2016 (8.9M)"),
    "resnext50_32x4d": (25_028_904, 0, TV), "resnext101_32x8d": (88_791_336, 0, TV),
}
# He et al. 2016 count convolution weights only for ResNet-1001 (10.2M; with
# BatchNorm it is 10.33M).
CONV_ONLY_REFERENCE = {"preact_resnet1001": (10.2e6, 0.01, "He et al. 2016 (10.2M)")}
# And the rounded paper figures, within 1%.
PAPER = {"wrn28_10": 36.5e6, "resnext50_32x4d": 25.0e6}
NO_REFERENCE = {"wrn16_4"}  # checked for depth and 6n+4 layout only

# The full harness runs for these only with `-m slow` (each 15-60 s on 2 CPUs);
# the default run builds them and checks parameters, depth and a training-mode
# forward pass. Every block type and option they use gets the full treatment in
# a smaller sibling (resnet50, resnet50_v1/_v2, resnet50d, se_resnet50,
# preact_resnet50/110, resnext50_32x4d, resnet110).
LARGE = ["resnet1202", "preact_resnet1001", "resnet200", "resnext101_32x8d", "resnet152",
         "resnet152_v1", "resnet152_v2", "preact_resnet152",
         "resnet101", "resnet101_v1", "resnet101_v2", "resnet101d", "se_resnet101",
         "preact_resnet101", "preact_resnet164"]
FULL = [n for n in kr.list_models() if n not in LARGE]
# The first test tier runs one model per family; the second tier (-m slow) all of them.
TIER1 = {"resnet20", "resnet18", "resnet50", "resnet50_v1", "resnet50_v2", "resnet50d", "se_resnet18",
         "preact_resnet20", "preact_resnet18", "wrn16_4", "resnext50_32x4d", "resnet9_half"}
FULL_TIERED = [n if n in TIER1 else pytest.param(n, marks=pytest.mark.slow) for n in FULL]


def _small_input(name, side=64):
    return (32, 32, 3) if kr.model_config(name)["input_shape"][0] == 32 else (side, side, 3)


def _expected_trainable(name, model):
    """The reference count, corrected for the model's classifier size."""
    count, tol, source = REFERENCE[name]
    head = model.get_layer("predictions")
    default_classes = kr.model_config(name)["num_classes"]
    per_class = head.kernel.shape[0] + int(head.use_bias)
    return count - (default_classes - head.units) * per_class, tol, source


def _check_structure(name, model):
    """Parameter count against the reference, and depth as the papers count it."""
    if name in REFERENCE:
        expected, tol, source = _expected_trainable(name, model)
        got = trainable_count(model)
        assert abs(got - expected) <= tol * expected, f"{name}: {got:,} params, {source}: {expected:,.0f}"
    if name in PAPER:
        head = model.get_layer("predictions")
        paper = PAPER[name] - (kr.model_config(name)["num_classes"] - head.units) * (head.kernel.shape[0] + 1)
        assert abs(trainable_count(model) - paper) / paper < 0.01, name
    if name in CONV_ONLY_REFERENCE:
        expected, tol, source = CONV_ONLY_REFERENCE[name]
        got = sum(int(np.prod(l.kernel.shape)) for l in all_layers(model)
                  if isinstance(l, (keras.layers.Conv2D, keras.layers.Dense)))
        assert abs(got - expected) <= tol * expected, f"{name}: {got:,} conv weights, {source}"
    depth = int(re.search(r"(\d+)", name.replace("resnext", "resnet")).group(1))
    if name.startswith("wrn"):
        depth -= 2  # WRN-d-k counts d = 6n + 4, the two downsampling shortcut convs included
    if name.startswith("resnet9"):
        # Its transition convs sit outside the residual units: count every layer.
        weighted = [l for l in all_layers(model)
                    if isinstance(l, (keras.layers.Conv2D, keras.layers.Dense, kr.layers.PatchWhitening))]
        assert len(weighted) == depth, f"{name}: {len(weighted)} layers"
    else:
        assert depth_of(model) == depth, f"{name}: {depth_of(model)} layers"
    names = [b.name for b in blocks_of(model)]
    assert all(re.fullmatch(r"conv[2-5]_block\d+", n) for n in names), names[:5]


def test_every_registered_model_has_a_reference_and_a_test():
    names = set(kr.list_models())
    assert {"resnet20", "resnet50", "resnet50d", "se_resnet50", "preact_resnet18", "wrn28_10",
            "resnext50_32x4d"} <= names
    covered = set(REFERENCE) | set(CONV_ONLY_REFERENCE) | NO_REFERENCE
    assert names == covered, f"no reference count for {sorted(names - covered)}"
    assert set(FULL) | set(LARGE) == names and set(LARGE) <= names


@pytest.mark.parametrize("depth, option_a, projection", [
    (20, 269_722, 272_474), (56, 853_018, 855_770), (110, 1_727_962, 1_730_714)])
def test_cifar_counts_option_a_and_projection(depth, option_a, projection):
    assert trainable_count(kr.ResNet((32, 32, 3), 10, depth)) == option_a
    assert trainable_count(kr.ResNet((32, 32, 3), 10, depth, shortcut="projection")) == projection


def test_keras_applications_counts():
    """resnet50_v1 / _v2 are the keras.applications layouts: same trainable and total counts."""
    for name, app in (("resnet50_v1", keras.applications.ResNet50),
                      ("resnet50_v2", keras.applications.ResNet50V2)):
        ours = kr.create_model(name, input_shape=(64, 64, 3))
        ref = app(weights=None, input_shape=(64, 64, 3))
        assert (trainable_count(ours), ours.count_params()) == (trainable_count(ref), ref.count_params())


@pytest.mark.parametrize("name", FULL_TIERED)
def test_registered_model(name, tmp_path):
    """Every registered model: reference count, depth, then the harness (forward,
    shape, finite, gradients, config round trip, .keras with safe_mode)."""
    model = kr.create_model(name, input_shape=_small_input(name), num_classes=7)
    _check_structure(name, model)
    run_model_test(model, tmp_path, expected_output_shape=(None, 7))


@pytest.mark.slow
@pytest.mark.parametrize("name", LARGE)
def test_large_registered_model_builds(name):
    """The cheap check of the largest models: build, count, depth, a training-mode pass."""
    model = kr.create_model(name, input_shape=(32, 32, 3), num_classes=7)
    _check_structure(name, model)
    y = to_numpy(model(random_inputs(model), training=True))
    assert y.shape == (2, 7) and np.isfinite(y).all()
    np.testing.assert_allclose(y.sum(-1), 1.0, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", LARGE)
def test_large_registered_model_full(name, tmp_path):
    model = kr.create_model(name, input_shape=_small_input(name), num_classes=7)
    # Fresh BatchNorm statistics (mean 0, variance 1) do not normalise: over
    # 600 (resnet1202) or 333 (preact_resnet1001) residual sums the inference
    # activations overflow float32 before any training. Training mode is finite.
    deep = name in ("resnet1202", "preact_resnet1001")
    run_model_test(model, tmp_path, expected_output_shape=(None, 7), finite_at_inference=not deep)


@pytest.mark.slow
@pytest.mark.parametrize("name, app", [
    ("resnet101_v1", "ResNet101"), ("resnet152_v1", "ResNet152"),
    ("resnet101_v2", "ResNet101V2"), ("resnet152_v2", "ResNet152V2")])
def test_keras_applications_counts_deep(name, app):
    ours = kr.create_model(name, input_shape=(64, 64, 3))
    ref = getattr(keras.applications, app)(weights=None, input_shape=(64, 64, 3))
    assert (trainable_count(ours), ours.count_params()) == (trainable_count(ref), ref.count_params())


def test_named_constructors_map_to_registered_models(monkeypatch):
    calls = []
    monkeypatch.setattr(kr, "create_model", lambda name, **kw: calls.append((name, kw)) or name)
    constructors = {n: getattr(kr, n) for n in dir(kr)
                    if re.fullmatch(r"(PreAct|SE|Wide)?Res(Net|NeXt)\d+\w*", n)
                    and not isinstance(getattr(kr, n), type)}  # not the ResNet9Block layer
    assert {"ResNet20", "ResNet50", "PreActResNet18", "WideResNet28_10", "ResNeXt50_32x4d",
            "ResNet1202", "PreActResNet1001", "ResNet50V1", "ResNet50V2", "ResNet50D",
            "SEResNet50", "ResNet9", "ResNet9Half"} <= set(constructors)
    for n, constructor in constructors.items():
        target = constructor((40, 40, 3), 5, dropout_rate=0.1)
        assert target in kr.list_models(), f"{n} -> unknown model {target!r}"
        assert calls[-1][1] == dict(input_shape=(40, 40, 3), num_classes=5, dropout_rate=0.1)
    assert len({c[0] for c in calls}) == len(constructors)  # no two constructors share a model


def test_named_constructor_builds():
    model = kr.ResNet20()
    assert model.name == "resnet20" and model.output_shape == (None, 10)
    assert kr.ResNet18(input_shape=(64, 64, 3), num_classes=3).output_shape == (None, 3)


def test_default_factory_just_works():
    small = kr.ResNet((32, 32, 3), 10)
    assert small.name == "resnet20" and small.output_shape == (None, 10)
    assert trainable_count(small) == 269_722
    big = kr.ResNet((224, 224, 3), 1000)
    assert big.name == "resnet50" and big.output_shape == (None, 1000)
    assert trainable_count(big) == 25_557_032
    # The CIFAR/ImageNet switch sits at 64 px a side; unknown sides get ImageNet.
    assert kr.ResNet((64, 64, 3), 10).name == "resnet20"
    assert kr.ResNet((65, 65, 3), 10).name == "resnet50"
    assert kr.ResNet((None, None, 3), 10).name == "resnet50"


def test_create_model_overrides_and_config_is_a_copy():
    config = kr.model_config("wrn28_10")
    config["stages"][0]["filters"] = 1
    assert kr.model_config("wrn28_10")["stages"][0]["filters"] == 160
    model = kr.create_model("resnet50", input_shape=(96, 96, 3), num_classes=3, name="mine")
    assert model.name == "mine" and model.input_shape == (None, 96, 96, 3)
    assert kr.list_models("resnext") == ["resnext101_32x8d", "resnext50_32x4d"]


def test_docs_registry_table_is_complete_and_matches_the_references():
    text = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "models.md").read_text()
    rows = re.findall(r"^\| `(\w+)` \| `kr\.(\w+)` \| (\d+) \| ([\d,]+) \| ([\d,]+) \|", text, re.M)
    assert sorted(r[0] for r in rows) == kr.list_models()
    for name, constructor, side, trainable, _ in rows:
        assert callable(getattr(kr, constructor)) and kr.model_config(name)["input_shape"][0] == int(side)
        count, tol, _ = REFERENCE.get(name, (None, None, None))
        if tol == 0:
            assert int(trainable.replace(",", "")) == count, name


# --- feature extraction and heads --------------------------------------------

def test_resnet9_layout_and_options():
    model = kr.ResNet9Half()
    names = [l.name for l in model.layers]
    for stage, filters in (("conv2", 64), ("conv3", 128), ("conv4", 256)):
        # conv -> max-pool -> BN -> ReLU: BN and ReLU run on the pooled map.
        i = names.index(f"{stage}_conv")
        assert names[i:i + 4] == [f"{stage}_conv", f"{stage}_pool", f"{stage}_bn", f"{stage}_relu"]
        assert model.get_layer(f"{stage}_conv").filters == filters
    assert [b.name for b in blocks_of(model)] == ["conv2_block1", "conv4_block1"]
    assert model.get_layer("max_pool").output.shape == (None, 256)
    assert not model.get_layer("predictions").use_bias
    # The logits are scaled by 1/8 (Page): compare against the unscaled model.
    logits = kr.create_model("resnet9_half", classifier_activation=None)
    plain = kr.create_model("resnet9_half", classifier_activation=None, logit_scale=1.0)
    plain.set_weights(logits.get_weights())
    x = random_inputs(logits)
    np.testing.assert_allclose(to_numpy(logits(x)), 0.125 * to_numpy(plain(x)), rtol=1e-5, atol=1e-6)
    assert trainable_count(kr.create_model("resnet9", num_classes=100)) == 6_573_120 + 90 * 512
    headless = kr.create_model("resnet9", include_top=False, pooling="avg", input_shape=(64, 64, 3))
    assert headless.output_shape == (None, 512)
    l2 = kr.create_model("resnet9_half", weight_decay=5e-4)
    assert all(l.kernel_regularizer.l2 == pytest.approx(2.5e-4) for l in all_layers(l2)
               if isinstance(l, (keras.layers.Conv2D, keras.layers.Dense)))


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(input_shape=(4, 4, 3)), ValueError, r"smallest input is 8x8. Received: input_shape=\(4, 4, 3\)"),
    (dict(base_filters=0), ValueError, "Received: base_filters=0"),
    (dict(drop_path_rate=0.1), TypeError, r"'resnet9' got unknown option\(s\) \['drop_path_rate'\]"),
])
def test_resnet9_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        kr.create_model("resnet9", **kwargs)


@pytest.mark.parametrize("name, channels", [
    ("resnet18", (64, 128, 256, 512)),
    ("resnet50", (256, 512, 1024, 2048)),
    ("resnet50_v1", (256, 512, 1024, 2048)),
    ("resnet50_v2", (256, 512, 1024, 2048)),  # downsample_block="last"
])
def test_feature_extractor_c2_to_c5(name, channels):
    model = kr.create_model(name, input_shape=(64, 64, 3), include_top=False)
    features = kr.feature_extractor(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a single-input model: no input-structure warning
        out = features(random_inputs(model, batch=1))
    assert list(out) == ["C2", "C3", "C4", "C5"]
    # Ck has stride 2**k: 64 px -> 16, 8, 4, 2.
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        f"C{k}": (1, 64 // 2 ** k, 64 // 2 ** k, c) for k, c in zip((2, 3, 4, 5), channels)}
    # The feature maps share the model's weights.
    assert {id(w) for w in features.weights} <= {id(w) for w in model.weights}


def test_feature_extractor_cifar_stages_and_subsets():
    model = kr.ResNet((32, 32, 3), 10)
    features = kr.feature_extractor(model)
    assert [tuple(o.shape) for o in features.outputs] == [
        (None, 32, 32, 16), (None, 16, 16, 32), (None, 8, 8, 64)]
    sub = kr.feature_extractor(model, stages=("C4", "C3"))
    x = random_inputs(model)
    out = sub(x)
    assert {k: tuple(v.shape) for k, v in out.items()} == {"C4": (2, 8, 8, 64), "C3": (2, 16, 16, 32)}
    # The last stage is what the classifier pools.
    head = model.get_layer("predictions")
    c4 = to_numpy(out["C4"])
    expected = keras.activations.softmax(head(c4.mean(axis=(1, 2))))
    np.testing.assert_allclose(to_numpy(model(x)), to_numpy(expected), atol=1e-5)
    with pytest.raises(ValueError, match=r"C9.*Valid: \['C2', 'C3', 'C4'\]"):
        kr.feature_extractor(model, stages=("C9",))
    with pytest.raises(ValueError, match="no keras_resnet stages"):
        kr.feature_extractor(keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]))


def test_headless_pooling():
    args = dict(input_shape=(64, 64, 3), num_classes=10, depth=18, stem="imagenet", include_top=False)
    fmap = kr.ResNet(**args)
    assert fmap.output_shape == (None, 2, 2, 512)
    x = random_inputs(fmap)
    y = to_numpy(fmap(x))
    for pooling, reduce in (("avg", np.mean), ("max", np.max)):
        pooled = kr.ResNet(**args, pooling=pooling)
        assert pooled.output_shape == (None, 512)
        pooled.set_weights(fmap.get_weights())
        np.testing.assert_allclose(to_numpy(pooled(x)), reduce(y, axis=(1, 2)), atol=1e-5)
    assert not any(l.name == "predictions" for l in fmap.layers)


def test_classifier_activation_none_gives_logits():
    probs = kr.ResNet((32, 32, 3), 10)
    logits = kr.ResNet((32, 32, 3), 10, classifier_activation=None)
    logits.set_weights(probs.get_weights())
    x = random_inputs(probs)
    z = to_numpy(logits(x))
    assert (z < 0).any() and not np.allclose(z.sum(-1), 1.0)
    np.testing.assert_allclose(to_numpy(keras.activations.softmax(z)), to_numpy(probs(x)), atol=1e-6)
    assert logits.get_layer("predictions_activation").get_config()["activation"] == "linear"


def test_preprocessing_takes_raw_uint8_pixels():
    model = kr.ResNet((32, 32, 3), 10, classifier_activation=None, preprocessing="cifar10")
    plain = kr.ResNet((32, 32, 3), 10, classifier_activation=None)
    plain.set_weights(model.get_weights())
    pixels = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3)).astype("uint8")
    out = to_numpy(model(pixels))
    mean, std = kr.NORMALIZATION_STATS["cifar10"]
    np.testing.assert_allclose(out, to_numpy(plain((pixels - np.float32(mean)) / np.float32(std))),
                               rtol=1e-4, atol=1e-4)
    # predict() runs the graph, where oneDNN fuses each folded conv with its bias,
    # sum and ReLU: float32 rounding of logits as large as ~100.
    atol = 1e-6 * np.abs(out).max()
    np.testing.assert_allclose(model.predict(pixels, verbose=0), out, rtol=1e-5, atol=atol)
    import tensorflow as tf
    ds = tf.data.Dataset.from_tensor_slices(pixels).batch(2)  # a uint8 pipeline
    np.testing.assert_allclose(model.predict(ds, verbose=0), out, rtol=1e-5, atol=atol)


def test_input_tensor():
    tensor = keras.Input((32, 32, 3), name="pixels")
    model = kr.ResNet((32, 32, 3), 10, input_tensor=tensor)
    assert model.inputs[0] is tensor
    # A tensor computed upstream: the model starts at its source input.
    raw = keras.Input((32, 32, 3))
    scaled = keras.layers.Rescaling(1 / 255.0)(raw)
    chained = kr.ResNet((32, 32, 3), 10, input_tensor=scaled)
    assert chained.inputs[0] is raw
    ref = kr.ResNet((32, 32, 3), 10)
    ref.set_weights(chained.get_weights())
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = to_numpy(chained(x))
    np.testing.assert_allclose(y, to_numpy(ref(x / 255.0)), atol=1e-6)


def test_mixed_precision_keeps_float32_predictions():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    model = kr.ResNet((32, 32, 3), 10, preprocessing="cifar10")
    assert sublayer(model, "conv2_block1_1_conv").compute_dtype == "bfloat16"
    y = model(np.zeros((2, 32, 32, 3), "uint8"))
    assert keras.backend.standardize_dtype(y.dtype) == "float32" and np.allclose(to_numpy(y).sum(-1), 1.0, atol=1e-5)


# --- options -------------------------------------------------------------------

def _strided_convs(model):
    return {l.name for l in all_layers(model)
            if isinstance(l, keras.layers.Conv2D) and l.strides == (2, 2) and "_block" in l.name}


def test_stride_placement_v1_v15_and_v2():
    v15 = kr.create_model("resnet50", input_shape=(64, 64, 3))
    v1 = kr.create_model("resnet50_v1", input_shape=(64, 64, 3))
    v2 = kr.create_model("resnet50_v2", input_shape=(64, 64, 3))
    first = [f"conv{s}_block1" for s in (3, 4, 5)]
    # v1.5 (torchvision/timm): the 3x3 of the first block carries the stride.
    assert _strided_convs(v15) == {f"{b}_{c}_conv" for b in first for c in ("2", "0")}
    # v1 (paper, keras.applications): the first 1x1.
    assert _strided_convs(v1) == {f"{b}_{c}_conv" for b in first for c in ("1", "0")}
    # v2 (keras.applications ResNetV2): the 3x3 of the *last* block of conv2..conv4,
    # with a 1x1 max-pool shortcut.
    last = ["conv2_block3", "conv3_block4", "conv4_block6"]
    assert _strided_convs(v2) == {f"{b}_2_conv" for b in last}
    assert all(isinstance(v2.get_layer(b).shortcut_layers[0], keras.layers.MaxPooling2D) for b in last)
    for model in (v15, v1, v2):
        assert model.get_layer("conv5_block3").output.shape[1:3] == (2, 2)


@pytest.mark.parametrize("stem, convs, first_block_side", [
    ("imagenet", [("conv1_conv", (7, 7), (2, 2), 64)], 16),
    ("deep", [("conv1_1_conv", (3, 3), (2, 2), 32), ("conv1_2_conv", (3, 3), (1, 1), 32),
              ("conv1_3_conv", (3, 3), (1, 1), 64)], 16),
    ("cifar", [("conv1_conv", (3, 3), (1, 1), 16)], 64),
])
def test_stems(stem, convs, first_block_side):
    model = kr.ResNet((64, 64, 3), 10, 18 if stem != "cifar" else 20, stem=stem)
    stem_convs = [(l.name, l.kernel_size, l.strides, l.filters) for l in model.layers
                  if isinstance(l, keras.layers.Conv2D)]
    assert stem_convs == convs
    assert model.get_layer("conv2_block1").input.shape[1] == first_block_side
    assert any(l.name == "pool1_pool" for l in model.layers) == (stem != "cifar")


def test_deep_stem_parameter_cost():
    """ResNet-C stem: 3x3 convs 3->32->32->64 (+2 BN(32)) replace the 7x7 3->64 conv."""
    plain = trainable_count(kr.ResNet((64, 64, 3), 1000, 18, stem="imagenet"))
    deep = trainable_count(kr.ResNet((64, 64, 3), 1000, 18, stem="deep"))
    assert deep - plain == 27 * 32 + 9 * 32 * 32 + 9 * 32 * 64 + 2 * 64 - 49 * 3 * 64


def test_shortcut_types_and_their_parameters():
    count = {s: trainable_count(kr.ResNet((32, 32, 3), 10, 20, shortcut=s))
             for s in ("zero_pad", "projection", "avg_pool", "auto")}
    # Two downsampling blocks: 16->32 and 32->64, each a 1x1 conv + BN.
    assert count["zero_pad"] == 269_722
    assert count["projection"] - count["zero_pad"] == (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)
    assert count["avg_pool"] == count["projection"] == count["auto"]
    option_a = kr.ResNet((32, 32, 3), 10)  # the CIFAR default is option A, as in the paper
    assert [b.name for b in blocks_of(option_a) if b.shortcut_kind == "zero_pad"] == [
        "conv3_block1", "conv4_block1"]
    assert all(b.shortcut_kind == "identity" for b in blocks_of(option_a)
               if b.name not in ("conv3_block1", "conv4_block1"))
    d = kr.create_model("resnet50d", input_shape=(64, 64, 3))
    assert isinstance(d.get_layer("conv3_block1").shortcut_layers[0], keras.layers.AveragePooling2D)
    with pytest.raises(ValueError, match=r"shortcut='identity'.*conv3_block1"):
        kr.ResNet((32, 32, 3), 10, shortcut="identity")


def test_normalization_none_is_the_plain_block():
    model = kr.ResNet((32, 32, 3), 10, normalization=None)
    layers = all_layers(model)
    assert not any(isinstance(l, keras.layers.BatchNormalization) for l in layers)
    convs = [l for l in layers if isinstance(l, keras.layers.Conv2D)]
    assert len(convs) == 19 and all(c.use_bias for c in convs)
    for block in blocks_of(model):  # (strided blocks pad explicitly before conv 1)
        assert [type(l).__name__ for l in block.sublayers()
                if isinstance(l, (keras.layers.Conv2D, keras.layers.Activation, keras.layers.Add))
                ] == ["Conv2D", "Activation", "Conv2D", "Add", "Activation"]
        assert type(block.add).__name__ == "Add" and hasattr(block, "out_relu")
    # Each BN(c) (2c trainable) becomes a conv bias (c): 688 channels in all.
    channels = 16 + 6 * (16 + 32 + 64)
    assert trainable_count(model) == 269_722 - 2 * channels + channels
    y = to_numpy(model(random_inputs(model), training=True))
    assert np.isfinite(y).all()


def test_zero_init_last_bn_in_a_model():
    model = kr.ResNet((32, 32, 3), 10, zero_init_last_bn=True)
    for layer in all_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            assert np.all(to_numpy(layer.gamma) == (0 if layer.name.endswith("_2_bn") else 1)), layer.name
    # conv2 keeps shape: its three fresh blocks pass the stem's (non-negative) output through.
    probe = keras.Model(model.input, [model.get_layer("conv1_relu").output,
                                       model.get_layer("conv2_block3").output])
    stem, stage = probe(random_inputs(model), training=False)
    np.testing.assert_allclose(to_numpy(stage), to_numpy(stem), atol=1e-6)


def test_stochastic_depth_linear_rule():
    rate = 0.2
    model = kr.ResNet((32, 32, 3), 10, drop_path_rate=rate)
    blocks = blocks_of(model)
    np.testing.assert_allclose([b.drop_path_rate for b in blocks], np.linspace(0, rate, 9), atol=1e-9)
    assert not any(isinstance(l, kr.DropPath) for l in blocks[0].sublayers())
    assert [b.get_layer(f"{b.name}_drop_path").rate for b in blocks[1:]] == pytest.approx(list(np.linspace(0, rate, 9)[1:]))
    plain = kr.ResNet((32, 32, 3), 10)
    plain.set_weights(model.get_weights())
    x = random_inputs(model, batch=8)
    np.testing.assert_allclose(to_numpy(model(x, training=False)), to_numpy(plain(x, training=False)),
                               atol=1e-6)  # inference: DropPath is the identity
    a, b = to_numpy(model(x, training=True)), to_numpy(model(x, training=True))
    assert not np.allclose(a, b)  # training: random per call
    np.testing.assert_array_equal(to_numpy(plain(x, training=True)), to_numpy(plain(x, training=True)))


def test_squeeze_excite_option():
    model = kr.ResNet((32, 32, 3), 10, se_ratio=0.25)
    assert all(isinstance(b.se, kr.SqueezeExcite) and b.se.ratio == 0.25 for b in blocks_of(model))
    # 16 -> 4 -> 16, 32 -> 8 -> 32, 64 -> 16 -> 64 per block, with biases, three blocks a stage.
    extra = sum(3 * (2 * c * c // 4 + c // 4 + c) for c in (16, 32, 64))
    assert trainable_count(model) == 269_722 + extra


def test_weight_decay_is_l2_on_every_kernel():
    wd = 1e-4
    model = kr.ResNet((32, 32, 3), 10, weight_decay=wd, se_ratio=0.25)
    kernels = [l.kernel for l in all_layers(model) if isinstance(l, (keras.layers.Conv2D, keras.layers.Dense))]
    assert len(model.losses) == len(kernels)
    # In the SGD sense: the loss gains wd/2 * |w|^2, so the gradient gains wd * w.
    expected = wd / 2 * sum(float(np.sum(to_numpy(k) ** 2)) for k in kernels)
    np.testing.assert_allclose(float(sum(to_numpy(l) for l in model.losses)), expected, rtol=1e-5)
    assert not kr.ResNet((32, 32, 3), 10).losses
    custom = kr.ResNet((32, 32, 3), 10, kernel_regularizer=keras.regularizers.L1(0.1))
    assert len(custom.losses) == 20


def test_kernel_initializer():
    zeros = kr.ResNet((32, 32, 3), 10, kernel_initializer="zeros")
    convs = [l for l in all_layers(zeros) if isinstance(l, keras.layers.Conv2D)]
    assert len(convs) == 19 and not any(np.any(to_numpy(c.kernel)) for c in convs)
    he = kr.ResNet((32, 32, 3), 10)  # He normal by default
    kernel = to_numpy(sublayer(he, "conv4_block3_2_conv").kernel)
    assert abs(kernel.std() / np.sqrt(2 / (9 * 64)) - 1) < 0.05


def test_head_dropout():
    model = kr.ResNet((32, 32, 3), 10, dropout_rate=0.5)
    assert [l.name for l in model.layers[-4:]] == ["avg_pool", "head_dropout", "predictions",
                                                   "predictions_activation"]
    assert model.get_layer("head_dropout").rate == 0.5
    x = random_inputs(model, batch=4)
    np.testing.assert_array_equal(to_numpy(model(x)), to_numpy(model(x)))
    assert not np.allclose(to_numpy(model(x, training=True)), to_numpy(model(x, training=True)))


def test_custom_stage_layout():
    model = kr.ResNet((32, 32, 3), 4, stages=[(1, 8, 1), dict(blocks=2, filters=16, strides=2, block="basic")],
                      block="bottleneck", stem="cifar", stem_filters=8)
    blocks = blocks_of(model)
    assert [(b.name, type(b).__name__, b.strides) for b in blocks] == [
        ("conv2_block1", "BottleneckBlock", 1), ("conv3_block1", "BasicBlock", 2),
        ("conv3_block2", "BasicBlock", 1)]
    assert model.get_layer("conv3_block2").output.shape[1:] == (16, 16, 16)


def test_summary_has_one_row_per_block():
    model = kr.ResNet((32, 32, 3), 10)
    rows = summary_rows(model)
    assert [r[0] for r in rows] == (
        ["image", "conv1_conv", "conv1_bn", "conv1_relu"]
        + [f"conv{s}_block{b}" for s in (2, 3, 4) for b in (1, 2, 3)]
        + ["avg_pool", "predictions", "predictions_activation"])
    assert {r[1] for r in rows if "_block" in r[0]} == {"BasicBlock"}
    assert sum(r[3] for r in rows) == model.count_params()
    by_name = {r[0]: r for r in rows}
    assert by_name["conv3_block1"][2] == "(None, 16, 16, 32)"
    assert by_name["conv2_block1"][3] == 2 * (9 * 16 * 16) + 4 * 16 * 2  # convs + BN (4 per channel)
    big = [r for r in summary_rows(kr.create_model("resnet50", input_shape=(64, 64, 3))) if "_block" in r[0]]
    assert [r[0] for r in big] == [f"conv{s}_block{b}" for s, n in zip((2, 3, 4, 5), (3, 4, 6, 3))
                                   for b in range(1, n + 1)]
    assert {r[1] for r in big} == {"BottleneckBlock"}


# --- bad input ---------------------------------------------------------------

@pytest.mark.parametrize("kwargs, match", [
    (dict(depth=21), r"depth=21\. Valid CIFAR depths are 6n\+2"),
    (dict(depth=0), "depth=0"),
    (dict(depth=-20), "depth=-20"),
    (dict(depth=20.5), "depth=20.5"),
    (dict(depth="20"), "depth='20'"),
    (dict(depth=True), "depth=True"),
    (dict(depth=18), r"depth=18.*stem='imagenet'"),  # an ImageNet depth on a CIFAR-sized input
    (dict(depth=19, stem="imagenet"), r"depth=19.*\[18, 34, 50, 101, 152, 200\]"),
    (dict(depth=57, block="bottleneck"), r"depth=57.*9n\+2"),
    (dict(num_classes=0), "num_classes=0"),
    (dict(num_classes=-3), "num_classes=-3"),
    (dict(num_classes=2.5), "num_classes=2.5"),
    (dict(input_shape=(32, 32)), r"input_shape=\(32, 32\)"),
    (dict(input_shape=(1, 32, 32, 3)), r"input_shape=\(1, 32, 32, 3\)"),
    (dict(input_shape=(0, 32, 3)), r"input_shape=\(0, 32, 3\)"),
    (dict(input_shape=None), "input_shape=None"),
    (dict(input_shape=(16, 16, 3), depth=50, stem="imagenet"), r"too small.*32x32.*input_shape=\(16, 16, 3\)"),
    (dict(input_shape=(2, 2, 3), depth=20), r"too small.*4x4"),
    (dict(stem="huge"), r"stem='huge'.*'imagenet', 'cifar', 'deep'"),
    (dict(shortcut="magic"), r"shortcut='magic'.*'projection'"),
    (dict(pooling="sum", include_top=False), r"pooling='sum'.*'avg', 'max'"),
    (dict(block="triple"), r"block='triple'.*'basic', 'bottleneck'"),
    (dict(normalization="layer"), r"normalization='layer'.*'batch'"),
    (dict(stride_on="2x2"), r"stride_on='2x2'"),
    (dict(downsample_block="middle"), r"downsample_block='middle'"),
    (dict(classifier_activation="nope"), "classifier_activation='nope'"),
    (dict(preprocessing="imagenet21k"), "preprocessing='imagenet21k'"),
    (dict(width=0), "width=0"),
    (dict(stages=[(1, 16, 3)]), "strides=3"),
    (dict(stages="abc"), r"stages\[0\]='a'"),
    (dict(drop_path_rate=1.5), "drop_path_rate=1.5"),
    (dict(drop_path_rate="0.1"), "drop_path_rate='0.1'"),
    (dict(dropout_rate=-0.1), "dropout_rate=-0.1"),
    (dict(dropout_rate=None), "dropout_rate=None"),
    (dict(se_ratio=2), "se_ratio=2"),
    (dict(se_ratio="1/16"), "se_ratio='1/16'"),
    (dict(weight_decay=-1e-4), "weight_decay=-0.0001"),
    (dict(weight_decay="1e-4"), "weight_decay='1e-4'"),
    (dict(weight_decay=1e-4, kernel_regularizer="l2"), "either `weight_decay` or `kernel_regularizer`"),
    (dict(depth=18, stem="imagenet", weights="imagenet"), r"weights='imagenet'.*depth=18"),
    (dict(weights="missing.weights.h5"), "weights='missing.weights.h5'"),
])
def test_bad_input_raises_value_error_naming_argument(kwargs, match):
    args = dict(input_shape=(32, 32, 3), num_classes=10)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        kr.ResNet(args.pop("input_shape"), args.pop("num_classes"), **args)


def test_unknown_option_is_a_clear_type_error():
    with pytest.raises(TypeError, match=r"ResNet\(\) got unknown option\(s\) \['bogus_option'\]"
                                        r".*Valid options: .*drop_path_rate.*se_ratio"):
        kr.ResNet((32, 32, 3), 10, bogus_option=1)
    with pytest.raises(TypeError, match=r"\['pooling_type'\]\. Did you mean 'pooling'"):
        kr.create_model("resnet20", pooling_type="avg")


def test_unknown_model_name():
    with pytest.raises(ValueError, match=r"name='resnet51'.*list_models"):
        kr.create_model("resnet51")
    with pytest.raises(ValueError, match=r"name='wrn28'.*Did you mean.*wrn28_10"):
        kr.create_model("wrn28")
