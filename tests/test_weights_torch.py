"""torchvision / timm checkpoints: parity with the real torch models, the file
checks, and weight tags with the download replaced by local files.

The torch models are built here with random weights (BatchNorm statistics
included) and saved as `.pth` and `.safetensors`; nothing is downloaded.
"""

import dataclasses
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
def no_downloads(monkeypatch):
    """Any attempt to fetch a file fails the test instead of reaching the network."""
    from keras.src.utils import file_utils

    def refuse(fname=None, origin=None, *args, **kwargs):
        raise AssertionError(f"test tried to download {origin or fname!r}")

    monkeypatch.setattr(file_utils, "get_file", refuse)
    monkeypatch.setattr(keras.utils, "get_file", refuse)


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
    loaded = kr.load_weights(model, str(_save(ref_model, tmp_path / f"{name}.safetensors")))
    assert "predictions" in loaded and len(loaded) == len([w for w in kr.walk_layers(model) if w.weights
                                                           and not isinstance(w, kr.ResidualBlock)
                                                           and not isinstance(w, kr.SqueezeExcite)])
    assert _parity(model, ref_model, name, ".safetensors")[0] <= 1e-4
