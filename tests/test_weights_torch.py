"""torchvision / timm checkpoints: parity with the real torch models, the file
checks, and weight tags with the download replaced by local files.

The torch models are built here with random weights (BatchNorm statistics
included) and saved as `.pth` and `.safetensors`; nothing is downloaded.
"""

import dataclasses
import re
import shutil
import sys

import keras
import numpy as np
import pytest

import keras_resnet as kr
from harness import to_numpy

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")
from safetensors.numpy import save_file  # noqa: E402

SIZE = (80, 72)  # odd feature maps in conv4/conv5: padding and ceil-mode pooling must agree
MEAN = np.array([0.485, 0.456, 0.406], "float32")
STD = np.array([0.229, 0.224, 0.225], "float32")


def _import(name):
    """torchvision / timm, or a skip. Both import torch._dynamo, which imports
    triton, whose C extension crashes a process that loaded TensorFlow first
    (torch 2.14 + TF 2.21 here); the converter needs neither."""
    sys.modules.setdefault("triton", None)
    return pytest.importorskip(name)


def _torch_model(name):
    if name.startswith("tv:"):
        return getattr(_import("torchvision").models, name[3:])(weights=None)
    return _import("timm").create_model(name[5:], pretrained=False)


# keras_resnet name -> the torch model with the same layout.
CASES = {
    "resnet18": "tv:resnet18",
    "resnet50": "tv:resnet50",
    "resnet18d": "timm:resnet18d",
    "resnext50_32x4d": "tv:resnext50_32x4d",
    "se_resnet50": "timm:seresnet50",
    "resnet50d": "timm:resnet50d",
}
# Over 20 s each on a 2-core machine: the second tier.
SLOW = ("resnext50_32x4d", "se_resnet50", "resnet50d")


@pytest.fixture(autouse=True)
def _refuse_downloads(no_downloads):
    """Every test here runs with downloads refused (conftest's `no_downloads`)."""


def _randomize(model, seed):
    """Random BatchNorm weights and statistics that matter: the statistics of one
    training-mode batch, then perturbed per channel (a fresh BN is mean 0, var 1)."""
    gen = torch.Generator().manual_seed(seed)
    named = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    bns = [m for _, m in named]
    # The BatchNorm that ends each residual branch: smaller gammas keep fifty
    # random layers from growing the activations (and the logits) without bound.
    last = {id(m) for n, m in named if n.endswith(("bn3", "layer1.0.bn2", ".bn2"))
            and not (n.endswith(".bn2") and hasattr(model.get_submodule(n.rsplit(".", 1)[0]), "bn3"))}
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative: one batch gives its own statistics
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, *SIZE, generator=gen))
        for bn in bns:
            c = bn.num_features
            bn.running_mean += 0.2 * bn.running_var.sqrt() * torch.randn(c, generator=gen)
            bn.running_var *= 0.5 + 1.5 * torch.rand(c, generator=gen)
            low, high = (0.1, 0.4) if id(bn) in last else (0.5, 1.5)
            bn.weight.copy_(low + (high - low) * torch.rand(c, generator=gen))
            bn.bias.copy_(0.1 * torch.randn(c, generator=gen))
    return model.eval()


def _pixels(seed=0, batch=2):
    return np.random.default_rng(seed).integers(0, 256, (batch, *SIZE, 3)).astype("float32")


def _torch_logits(model, pixels):
    x = (pixels / 255.0 - MEAN) / STD  # what torchvision / timm transforms feed
    with torch.no_grad():
        return model(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()


def _save(model, path):
    state = model.state_dict()
    if str(path).endswith(".pth"):
        torch.save(state, path)
    else:
        save_file({k: v.numpy() for k, v in state.items()}, str(path))
    return path


@pytest.fixture(scope="module")
def torch_models():
    """Each torch model once per module, randomised (built lazily)."""
    cache = {}

    def get(name):
        if name not in cache:
            torch.manual_seed(0)
            cache[name] = _randomize(_torch_model(CASES[name]), seed=len(cache) + 1)
        return cache[name]
    return get


def _parity(model, ref_model, name, what):
    pixels = _pixels()
    ref = _torch_logits(ref_model, pixels)
    got = to_numpy(model((pixels / 255.0 - MEAN) / STD, training=False))
    diff = float(np.abs(got - ref).max())
    print(f"{name} {what}: max |logit diff| {diff:.2e} (max |logit| {np.abs(ref).max():.2f})")
    return diff, ref


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n
                                  for n in CASES])
def test_parity_with_torch(name, torch_models, tmp_path):
    """Our model with the converted file gives torch's logits, through .pth and .safetensors."""
    ref_model = torch_models(name)
    pth = _save(ref_model, tmp_path / f"{name}.pth")
    model = kr.create_model(name, input_shape=(*SIZE, 3), classifier_activation=None, weights=str(pth))
    assert "preprocessing" not in [l.name for l in model.layers]  # a bare file: no mean/std known
    diff, ref = _parity(model, ref_model, name, ".pth")
    assert ref.std(axis=-1).min() > 0.05, "a degenerate reference proves nothing"
    assert diff <= 1e-4
    # The same model, scrambled, then filled from the .safetensors file (no torch involved).
    rng = np.random.default_rng(0)
    for w in model.weights:
        w.assign(rng.uniform(0.0, 0.05, w.shape).astype(w.dtype))
    assert _parity(model, ref_model, name, "scrambled")[0] > 1e-2
    loaded = kr.weights.loading.load(model, str(_save(ref_model, tmp_path / f"{name}.safetensors")))
    assert "predictions" in loaded and len(loaded) == len([w for w in kr.walk_layers(model) if w.weights
                                                           and not isinstance(w, kr.ResidualBlock)
                                                           and not isinstance(w, kr.SqueezeExcite)])
    assert _parity(model, ref_model, name, ".safetensors")[0] <= 1e-4


# --- the file checks: every tensor accounted for, by name -------------------------------

@pytest.fixture(scope="module")
def resnet18_state(torch_models):
    """A random torchvision ResNet-18 state dict as numpy arrays."""
    return {k: v.numpy().copy() for k, v in torch_models("resnet18").state_dict().items()}


def _write(state, path):
    save_file(state, str(path))
    return str(path)


def test_missing_left_over_and_misshapen_tensors_are_named(resnet18_state, tmp_path):
    model = kr.create_model("resnet18", input_shape=(*SIZE, 3))
    before = [to_numpy(w).copy() for w in model.weights]

    missing = dict(resnet18_state)
    del missing["layer3.1.bn2.running_var"]
    with pytest.raises(ValueError, match=r"1 tensors of 'resnet18' are missing from "
                                         r"missing\.safetensors: \['layer3\.1\.bn2\.running_var'\]"):
        kr.load_weights(model, _write(missing, tmp_path / "missing.safetensors"))

    bad = dict(resnet18_state, **{"layer2.0.conv1.weight": np.zeros((128, 64, 3, 2), "float32")})
    with pytest.raises(ValueError, match=r"Tensor 'layer2\.0\.conv1\.weight' of bad\.safetensors has "
                                         r"shape \(128, 64, 3, 2\); 'resnet18' needs \(128, 64, 3, 3\)"):
        kr.load_weights(model, _write(bad, tmp_path / "bad.safetensors"))

    extra = dict(resnet18_state, **{"layer4.2.conv1.weight": np.zeros((512, 512, 3, 3), "float32")})
    with pytest.raises(ValueError, match=r"1 tensors of extra\.safetensors have no place in "
                                         r"'resnet18': \['layer4\.2\.conv1\.weight'\]"):
        kr.load_weights(model, _write(extra, tmp_path / "extra.safetensors"))

    # A refused file changes nothing (every check runs before the first assignment).
    for w, old in zip(model.weights, before):
        np.testing.assert_array_equal(to_numpy(w), old)
    # A deeper model misses the tensors of its extra blocks.
    with pytest.raises(ValueError, match=r"missing from .*'layer1\.2\.bn1\.bias'"):
        kr.create_model("resnet34", input_shape=(*SIZE, 3),
                        weights=_write(resnet18_state, tmp_path / "r18.safetensors"))
    # A layout torch has no counterpart for is named, not half-loaded.
    with pytest.raises(ValueError, match=r"Layer 'conv2_block1_preact_bn' of 'preact_resnet18' has no "
                                         r"torchvision/timm counterpart"):
        kr.create_model("preact_resnet18", input_shape=(*SIZE, 3), weights=str(tmp_path / "r18.safetensors"))


def test_new_head_skips_fc_only_when_asked(resnet18_state, tmp_path):
    path = _write(resnet18_state, tmp_path / "r18.safetensors")
    model = kr.create_model("resnet18", input_shape=(*SIZE, 3), num_classes=10)
    head = [to_numpy(w).copy() for w in model.get_layer("predictions").weights]
    with pytest.raises(ValueError, match=r"Tensor 'fc\.weight' .* \(1000, 512\); 'resnet18' needs "
                                         r"\(10, 512\)\. Pass skip_head=True"):
        kr.weights.load_torch_checkpoint(model, path, skip_head=False)
    loaded = kr.weights.loading.load(model, path)  # skip_head="auto": a new head keeps its own
    assert "predictions" not in loaded and "conv1_conv" in loaded
    for w, old in zip(model.get_layer("predictions").weights, head):
        np.testing.assert_array_equal(to_numpy(w), old)
    np.testing.assert_array_equal(to_numpy(model.get_layer("conv1_conv").kernel),
                                  resnet18_state["conv1.weight"].transpose(2, 3, 1, 0))
    # Headless (include_top=False): the file's fc is ignored, the rest must still match.
    headless = kr.create_model("resnet18", input_shape=(*SIZE, 3), include_top=False, pooling="avg",
                               weights=path)
    assert headless.output_shape == (None, 512)


def test_torch_files_are_never_unpickled(tmp_path):
    """`torch.load(weights_only=True)`: a file holding any other object is refused unrun."""
    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": torch.zeros(1), "payload": _Payload()}, path)
    _Payload.ran = False
    with pytest.raises(ValueError, match=r"objects other than tensors.*weights='.*evil\.pth'"):
        kr.weights.read_checkpoint(path)
    assert not _Payload.ran


class _Payload:
    ran = False

    def __setstate__(self, state):
        type(self).ran = True


@pytest.mark.parametrize("weights, match", [
    ("timm_b9", r"Unknown weights tag for 'resnet18'\. Received: weights='timm_b9'\. "
                r"Tags for 'resnet18': \['torchvision_v1', 'timm_a1'\]"),
    ("ftp://example.com/resnet18.pth", r"http:// or https://\. Received: weights='ftp://example\.com/resnet18\.pth'"),
    ("s3://bucket/resnet18.safetensors", r"Received: weights='s3://bucket/resnet18\.safetensors'"),
    ("weights.npz", r"not found\. Received: weights='weights\.npz'"),
    (123, r"Received: weights=123"),
])
def test_unknown_tags_and_url_schemes_are_named(weights, match):
    with pytest.raises(ValueError, match=match):
        kr.create_model("resnet18", input_shape=(64, 64, 3), weights=weights)
    with pytest.raises(ValueError, match=r"weights='torchvision_v1'\. No published weights fit 'resnet20'"):
        kr.create_model("resnet20", weights="torchvision_v1")


# --- tags: the download replaced by local files -------------------------------------------

@pytest.fixture
def fake_download(monkeypatch, tmp_path):
    """`keras.utils.get_file` serving local files: `serve[origin] = path`. Records each call."""
    serve, calls = {}, []
    cache = tmp_path / "cache"

    def get_file(fname=None, origin=None, cache_subdir="datasets", **kwargs):
        calls.append(dict(fname=fname, origin=origin, cache_subdir=cache_subdir, **kwargs))
        target = cache / cache_subdir / fname
        if not target.exists():  # cached like get_file: fetched once
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(serve[origin], target)
        return str(target)

    monkeypatch.setattr(keras.utils, "get_file", get_file)
    return serve, calls


def _sha256(path):
    import hashlib

    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_torchvision_tag_checks_the_hash_and_brings_its_preprocessing(
        torch_models, tmp_path, fake_download, monkeypatch):
    serve, calls = fake_download
    hub = kr.weights.hub
    entry = hub.PRETRAINED[("resnet18", "torchvision_v1")]
    assert entry.url == "https://download.pytorch.org/models/resnet18-f37072fd.pth"
    assert entry.sha256 == "f37072fd" and entry.top1 == 69.758
    ref_model = torch_models("resnet18")
    serve[entry.url] = _save(ref_model, tmp_path / "random-resnet18.pth")

    # The real entry: our random file is not torchvision's, and the 8 hex digits say so.
    with pytest.raises(ValueError, match=r"Hash mismatch: resnet18-f37072fd\.pth has SHA-256 [0-9a-f]{64}, "
                                         r"expected one starting 'f37072fd'"):
        kr.create_model("resnet18", input_shape=(*SIZE, 3), weights="torchvision_v1")
    assert calls[-1] == dict(fname="resnet18-f37072fd.pth", origin=entry.url, cache_subdir="keras_resnet")
    assert not (tmp_path / "cache" / "keras_resnet" / "resnet18-f37072fd.pth").exists()  # removed

    # An entry whose hash is this file's: loads, and the model takes 0-255 pixels.
    digest = _sha256(serve[entry.url])
    monkeypatch.setitem(hub.PRETRAINED, ("resnet18", "torchvision_v1"),
                        dataclasses.replace(entry, sha256=digest[:8]))
    model = kr.create_model("resnet18", input_shape=(*SIZE, 3), classifier_activation=None,
                            weights="torchvision_v1")
    assert model.get_layer("preprocessing") is not None
    assert model.pretrained_weights.crop_fraction == 224 / 256
    pixels = _pixels(seed=3)
    diff = float(np.abs(to_numpy(model(pixels)) - _torch_logits(ref_model, pixels)).max())
    print(f"resnet18 torchvision_v1 tag, raw pixels: max |logit diff| {diff:.2e}")
    assert diff <= 1e-4
    # Cached: a second model reads the same file (and checks its hash again).
    kr.create_model("resnet18", input_shape=(*SIZE, 3), weights="torchvision_v1")
    assert len(calls) == 3
    with open(tmp_path / "cache" / "keras_resnet" / "resnet18-f37072fd.pth", "ab") as f:
        f.write(b"tampered")
    with pytest.raises(ValueError, match="Hash mismatch"):
        kr.create_model("resnet18", input_shape=(*SIZE, 3), weights="torchvision_v1")


def test_timm_tag_and_url_without_torch_files(torch_models, tmp_path, fake_download):
    """timm tags name Hugging Face safetensors (no hash published: not checked)."""
    serve, calls = fake_download
    entry = kr.weights.hub.PRETRAINED[("resnet18d", "timm_ra2")]
    assert entry.url == "https://huggingface.co/timm/resnet18d.ra2_in1k/resolve/main/model.safetensors"
    assert entry.sha256 is None and entry.interpolation == "bicubic"
    ref_model = torch_models("resnet18d")
    serve[entry.url] = _save(ref_model, tmp_path / "r18d.safetensors")
    model = kr.create_model("resnet18d", input_shape=(*SIZE, 3), classifier_activation=None,
                            weights="timm_ra2")
    assert calls[-1]["fname"] == "timm-resnet18d.ra2_in1k.safetensors"
    pixels = _pixels(seed=4)
    assert float(np.abs(to_numpy(model(pixels)) - _torch_logits(ref_model, pixels)).max()) <= 1e-4
    # Any https URL: downloaded under its own file name, cached, loaded by its suffix.
    url = "https://example.com/weights/r18d.safetensors?download=1"
    serve[url] = serve[entry.url]
    other = kr.create_model("resnet18d", input_shape=(*SIZE, 3), num_classes=7, weights=url)
    assert calls[-1]["origin"] == url and calls[-1]["cache_subdir"] == "keras_resnet"
    assert re.fullmatch(r"url-[0-9a-f]{12}-r18d\.safetensors", calls[-1]["fname"])
    # Another URL with the same file name gets its own cache file.
    serve["https://example.org/r18d.safetensors"] = serve[entry.url]
    kr.weights.hub.download("https://example.org/r18d.safetensors")
    assert calls[-1]["fname"] != calls[-2]["fname"]
    assert other.output_shape == (None, 7)
    assert "preprocessing" not in [l.name for l in other.layers]  # a URL: no mean/std known


def test_load_backbone_and_train_with_a_tag(torch_models, tmp_path, fake_download, monkeypatch):
    from keras_resnet import data, finetune

    serve, _ = fake_download
    hub = kr.weights.hub
    entry = hub.PRETRAINED[("resnet18", "torchvision_v1")]
    serve[entry.url] = _save(torch_models("resnet18"), tmp_path / "r18.pth")
    monkeypatch.setitem(hub.PRETRAINED, ("resnet18", "torchvision_v1"),
                        dataclasses.replace(entry, sha256=_sha256(serve[entry.url])))  # the whole digest
    stem = torch_models("resnet18").state_dict()["conv1.weight"].numpy().transpose(2, 3, 1, 0)

    model = kr.create_model("resnet18", num_classes=5, input_shape=(64, 64, 3), preprocessing="imagenet")
    head = to_numpy(model.get_layer("predictions").kernel).copy()
    copied = finetune.load_backbone(model, "torchvision_v1")
    assert "conv1_conv" in copied and "predictions" not in copied and len(copied) == 40
    np.testing.assert_array_equal(to_numpy(model.get_layer("conv1_conv").kernel), stem)
    np.testing.assert_array_equal(to_numpy(model.get_layer("predictions").kernel), head)
    with pytest.warns(UserWarning, match=r"normalises with nothing.*preprocessing='imagenet'"):
        finetune.load_backbone(kr.create_model("resnet18", num_classes=5, input_shape=(64, 64, 3)),
                               "torchvision_v1")

    from tests.conftest import tiny_image_arrays

    arrays = tiny_image_arrays()
    train_ds, eval_ds, info = data.make_pipelines(arrays, 8, augment=None)
    result = kr.train({"recipe": "cifar10_fast", "model": "resnet18", "weights": "torchvision_v1",
                       "epochs": 1, "batch_size": 8, "learning_rate": 1e-12, "weight_decay": 0.0,
                       "output": str(tmp_path / "run"), "verbose": 0, "precision": "float32"},
                      train_data=(train_ds, info), eval_data=eval_ds)
    trained = result.model
    # The ImageNet mean/std of the weights, not the dataset's (CIFAR-10) statistics.
    norm = trained.get_layer("preprocessing")
    np.testing.assert_allclose(to_numpy(norm.mean).ravel(), [123.675, 116.28, 103.53], rtol=1e-6)
    np.testing.assert_allclose(to_numpy(trained.get_layer("conv1_conv").kernel), stem, atol=1e-6)
    with pytest.raises(ValueError, match=r"weights='timm_zz'"):
        kr.train({"recipe": "cifar10_fast", "model": "resnet18", "weights": "timm_zz", "epochs": 1,
                  "output": str(tmp_path / "run2"), "verbose": 0},
                 train_data=(train_ds, info), eval_data=eval_ds)


def test_every_tag_names_a_registered_model_and_a_sane_evaluation():
    table = kr.weights.PRETRAINED
    assert kr.get_recipe("finetune").weights in kr.weights.list_pretrained(kr.get_recipe("finetune").model)
    for (name, tag), entry in table.items():
        assert name in kr.list_models() and entry.model == name and entry.tag == tag
        assert 60 < entry.top1 < 90 and 0.8 < entry.crop_fraction <= 1.0
        assert entry.url.startswith("https://")
        if tag.startswith("torchvision"):
            # torch.hub's convention: the name carries the SHA-256's first 8 hex digits.
            assert entry.url.endswith(f"-{entry.sha256}.pth") and len(entry.sha256) == 8
        else:
            assert entry.sha256 is None and entry.fname.endswith(".safetensors")
