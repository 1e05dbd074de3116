"""Published ImageNet weights by model name and tag: where they live, how they
were evaluated, and the cached, hash-checked download.

Tags (`weights=` of `create_model`, `ResNet`, `load_backbone`, `train` and the
CLI's `--weights`):

    torchvision_v1  torchvision's IMAGENET1K_V1 (the original recipe).
    torchvision_v2  torchvision's IMAGENET1K_V2 (the "new training recipe",
                    long schedule, heavy augmentation).
    timm_a1 / _a1h  timm's "ResNet strikes back" A1 / A1h recipes.
    timm_ra2        timm's RandAugment recipe (ResNet-D and SE-ResNet weights).
    imagenet        keras.applications' weights (the `_v1` / `_v2` layouts);
                    not in this table, see `keras_resnet.weights.keras_applications`.

Every entry records the published top-1 on the ImageNet validation set and
the evaluation it was measured with (resize, centre crop, interpolation,
mean/std): the model that loads a tag gets that mean/std as its in-model
preprocessing, so it takes 0-255 pixels.

What a download checks: torchvision's file names carry the first 8 hex digits
of the file's SHA-256 (torch.hub's convention), and those 8 digits are compared
after every download and every load from the cache. timm's files come from the
Hugging Face Hub (`model.safetensors`), which publishes no hash this table could
pin: nothing but the converter's own check (every tensor present, by name and
shape) guards them. Files are cached by `keras.utils.get_file` under
`~/.keras/keras_resnet/` (or `$KERAS_HOME`).
"""

import dataclasses
import hashlib
import os
import re

import keras

CACHE_SUBDIR = "keras_resnet"
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # on a 0-1 scale, as torchvision and timm publish them
IMAGENET_STD = (0.229, 0.224, 0.225)
TORCHVISION_URL = "https://download.pytorch.org/models/{}"
HF_URL = "https://huggingface.co/timm/{}/resolve/main/model.safetensors"


@dataclasses.dataclass(frozen=True)
class PretrainedWeights:
    """One published checkpoint and the evaluation its top-1 comes from.

    Attributes:
        model: The registered keras_resnet model name it fills.
        tag: Its tag (`"torchvision_v2"`).
        url: Where the file is downloaded from.
        sha256: The expected SHA-256, or its leading hex digits (torchvision's 8),
            or None when the publisher gives none (Hugging Face files).
        fname: The file name in the cache.
        top1: Published ImageNet-1k validation top-1, in percent.
        image_size: Side of the centre crop the top-1 was measured at.
        crop_fraction: `image_size / resize`: the short side is resized to
            `image_size / crop_fraction` before the centre crop.
        interpolation: The resize's interpolation (`"bilinear"`, `"bicubic"`).
        mean, std: Per-channel normalisation on a 0-1 scale.
        source: Who published it and under which name.
    """

    model: str
    tag: str
    url: str
    sha256: str
    fname: str
    top1: float
    image_size: int
    crop_fraction: float
    interpolation: str
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    source: str = ""

    @property
    def preprocessing(self):
        """The `preprocessing=` argument of a model using these weights (0-255 pixels in)."""
        if (self.mean, self.std) == (IMAGENET_MEAN, IMAGENET_STD):
            return "imagenet"
        return {"mean": tuple(255.0 * m for m in self.mean), "std": tuple(255.0 * s for s in self.std)}


def _torchvision(model, tag, file, top1, resize):
    return PretrainedWeights(
        model, tag, TORCHVISION_URL.format(file), file.rsplit("-", 1)[1].split(".")[0], file,
        top1, 224, 224 / resize, "bilinear",
        source=f"torchvision {file.split('-')[0]} IMAGENET1K_{tag[-2:].upper()}")


def _timm(model, tag, timm_name, top1, crop_fraction, image_size=224):
    return PretrainedWeights(
        model, tag, HF_URL.format(timm_name), None, f"timm-{timm_name}.safetensors",
        top1, image_size, crop_fraction, "bicubic", source=f"timm {timm_name}")


# Top-1: torchvision's model metadata; timm's results-imagenet.csv at the entry's
# image_size and crop (timm's default evaluation of that checkpoint).
_ENTRIES = [
    _torchvision("resnet18", "torchvision_v1", "resnet18-f37072fd.pth", 69.758, 256),
    _torchvision("resnet34", "torchvision_v1", "resnet34-b627a593.pth", 73.314, 256),
    _torchvision("resnet50", "torchvision_v1", "resnet50-0676ba61.pth", 76.130, 256),
    _torchvision("resnet50", "torchvision_v2", "resnet50-11ad3fa6.pth", 80.858, 232),
    _torchvision("resnet101", "torchvision_v1", "resnet101-63fe2227.pth", 77.374, 256),
    _torchvision("resnet101", "torchvision_v2", "resnet101-cd907fc2.pth", 81.886, 232),
    _torchvision("resnet152", "torchvision_v1", "resnet152-394f9c45.pth", 78.312, 256),
    _torchvision("resnet152", "torchvision_v2", "resnet152-f82ba261.pth", 82.284, 232),
    _torchvision("resnext50_32x4d", "torchvision_v1", "resnext50_32x4d-7cdf4587.pth", 77.618, 256),
    _torchvision("resnext50_32x4d", "torchvision_v2", "resnext50_32x4d-1a0047aa.pth", 81.198, 232),
    _torchvision("resnext101_32x8d", "torchvision_v1", "resnext101_32x8d-8ba56ff5.pth", 79.312, 256),
    _torchvision("resnext101_32x8d", "torchvision_v2", "resnext101_32x8d-110c445d.pth", 82.834, 232),
    _timm("resnet18", "timm_a1", "resnet18.a1_in1k", 71.504, 0.95),
    _timm("resnet34", "timm_a1", "resnet34.a1_in1k", 76.420, 0.95),
    _timm("resnet50", "timm_a1", "resnet50.a1_in1k", 80.382, 0.95),
    _timm("resnet101", "timm_a1", "resnet101.a1_in1k", 81.494, 0.95),
    _timm("resnet101", "timm_a1h", "resnet101.a1h_in1k", 81.950, 0.95),
    _timm("resnet152", "timm_a1", "resnet152.a1_in1k", 81.998, 0.95),
    _timm("resnet152", "timm_a1h", "resnet152.a1h_in1k", 82.818, 0.95),
    _timm("resnext50_32x4d", "timm_a1", "resnext50_32x4d.a1_in1k", 80.526, 0.95),
    _timm("resnext50_32x4d", "timm_a1h", "resnext50_32x4d.a1h_in1k", 81.140, 0.95),
    _timm("resnet18d", "timm_ra2", "resnet18d.ra2_in1k", 72.296, 0.875),
    _timm("resnet34d", "timm_ra2", "resnet34d.ra2_in1k", 77.108, 0.875),
    _timm("resnet50d", "timm_ra2", "resnet50d.ra2_in1k", 80.546, 0.875),
    _timm("resnet50d", "timm_a1", "resnet50d.a1_in1k", 80.730, 0.95),
    _timm("resnet101d", "timm_ra2", "resnet101d.ra2_in1k", 82.254, 0.95, image_size=256),
    _timm("se_resnet50", "timm_ra2", "seresnet50.ra2_in1k", 80.260, 0.875),
    _timm("se_resnet50", "timm_a1", "seresnet50.a1_in1k", 80.012, 0.95),
]
PRETRAINED = {(e.model, e.tag): e for e in _ENTRIES}
_TAG = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def list_pretrained(model=None):
    """`{model name: [tags]}` of every published checkpoint, or the tags of `model`."""
    table = {}
    for name, tag in PRETRAINED:
        table.setdefault(name, []).append(tag)
    return table if model is None else table.get(model, [])


def looks_like_tag(weights):
    """A bare word (`"timm_a1"`): not a URL, not a path, no file suffix."""
    return isinstance(weights, str) and bool(_TAG.match(weights)) and not os.path.exists(weights)


def pretrained(model, tag):
    """The `PretrainedWeights` of `model` (a registered name) under `tag`.

    Raises:
        ValueError: naming the tag and the model, with the tags that exist.
    """
    entry = PRETRAINED.get((model, tag))
    if entry is None:
        tags = list_pretrained(model)
        known = (f"Tags for {model!r}: {tags}" if tags else
                 f"No published weights fit {model!r}; models with tags: {sorted(list_pretrained())}")
        raise ValueError(f"Unknown weights tag for {model!r}. Received: weights={tag!r}. {known}, "
                         "'imagenet' for the keras.applications layouts (_v1/_v2), a URL or a file.")
    return entry


def check_sha256(path, expected):
    """Compares the file's SHA-256 with `expected` (the whole digest or its
    leading hex digits); a mismatch removes the file from the cache.

    Raises:
        ValueError: on a mismatch, naming the file and both digests.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    actual = digest.hexdigest()
    if not actual.startswith(expected.lower()):
        os.remove(path)
        raise ValueError(f"Hash mismatch: {os.path.basename(path)} has SHA-256 {actual}, expected one "
                         f"starting {expected!r}; the file was removed from the cache, try again. "
                         f"Received: weights={path!r}")
    return actual


def download(url, fname=None, sha256=None):
    """The local path of `url`, downloaded once into the keras_resnet cache
    through `keras.utils.get_file`, its SHA-256 checked when `sha256` is given
    (an arbitrary URL has none: only the converter's checks guard it).

    Raises:
        ValueError: for a URL that is not http(s), or a hash mismatch.
    """
    if not re.match(r"^https?://", url):
        raise ValueError(f"Weights URLs must be http:// or https://. Received: weights={url!r}")
    if fname is None:
        # Many URLs end alike (Hugging Face's `.../model.safetensors`): the cache
        # name carries a digest of the whole URL so that two never share a file.
        base = url.split("?")[0].rstrip("/").rsplit("/", 1)[-1]
        fname = f"url-{hashlib.sha256(url.encode()).hexdigest()[:12]}-{base}"
    path = keras.utils.get_file(fname, origin=url, cache_subdir=CACHE_SUBDIR)
    if sha256:
        check_sha256(path, sha256)
    return path


def fetch(entry):
    """The local file of a `PretrainedWeights` entry (see `download`)."""
    return download(entry.url, entry.fname, entry.sha256)
