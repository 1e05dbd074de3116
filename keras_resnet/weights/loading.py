"""`weights=`: one entry point for every kind of weights a model can start from."""

import os
import warnings

import keras

from keras_resnet.models import KERAS_APPLICATIONS
from keras_resnet.preprocessing import resolve_stats
from keras_resnet.weights import hub, torch_convert
from keras_resnet.weights.keras_applications import port_weights

KERAS_SUFFIXES = (".weights.h5", ".keras")


def resolve_tag(model_name, weights):
    """The `PretrainedWeights` entry when `weights` is a tag, else None.

    `"imagenet"`, URLs, paths and non-strings are not tags. Raises a
    ValueError for a word that is no tag of `model_name`.
    """
    if isinstance(weights, hub.PretrainedWeights):
        return weights
    if weights == "imagenet" or not hub.looks_like_tag(weights):
        return None
    return hub.pretrained(model_name, weights)


def local_file(weights):
    """A path for `weights`: a URL is downloaded (cached), a tag's file fetched."""
    if isinstance(weights, hub.PretrainedWeights):
        return hub.fetch(weights)
    path = os.fspath(weights)
    if "://" in path:
        return hub.download(path)
    return path


def load_weights(model, weights, depth=None, preact=False, skip_head="auto"):
    """Loads `weights` into `model` in place and returns `model` (see `load`)."""
    load(model, weights, depth=depth, preact=preact, skip_head=skip_head)
    return model


def load(model, weights, depth=None, preact=False, skip_head="auto"):
    """Loads `weights` into `model` in place.

    Args:
        model: A keras_resnet model.
        weights: `"imagenet"` (keras.applications, for the `_v1`/`_v2`
            layouts), a tag of `model.name` (`"torchvision_v2"`, see
            `keras_resnet.weights.hub`), an http(s) URL, or a local
            `.weights.h5`, `.keras`, `.safetensors` or `.pth` file.
        depth, preact: Which keras.applications model `"imagenet"` means.
        skip_head: For torch checkpoints: `"auto"` keeps the model's own
            classifier when it has none or one of another size (a new head),
            `True` always, `False` never (see `torch_convert.load_state_dict`).

    Returns:
        The names of the layers whose weights were loaded.

    Raises:
        ValueError: for a missing file, an unknown tag or URL scheme, or an
            unsupported value, naming it.
    """
    if weights == "imagenet":
        app_name = KERAS_APPLICATIONS[(depth, bool(preact))]
        include_top = any(layer.name == "predictions" for layer in model.layers)
        app = getattr(keras.applications, app_name)(
            weights="imagenet", include_top=include_top and model.output_shape[-1] == 1000)
        return port_weights(app, model, strict=True)
    if not isinstance(weights, (str, os.PathLike, hub.PretrainedWeights)):
        raise ValueError(f"`weights` must be None, 'imagenet', a tag, a URL or a path. "
                         f"Received: weights={weights!r}")
    entry = resolve_tag(model.name, weights)
    path = local_file(entry or weights)
    if not os.path.exists(path):
        raise ValueError(f"Weights file not found. Received: weights={path!r}")
    if path.endswith(".weights.h5"):
        model.load_weights(path)
        return [layer.name for layer in model.layers if layer.weights]
    if path.endswith(".keras"):
        source = keras.saving.load_model(path, compile=False, safe_mode=True)
        return port_weights(source, model, strict=True)
    if torch_convert.is_torch_checkpoint(path):
        loaded = torch_convert.load_torch_checkpoint(model, path, skip_head=skip_head)
        if entry is not None:
            note_pretrained(model, entry)
        return loaded
    raise ValueError(
        "`weights` must end in '.weights.h5' or '.keras', or be a torch checkpoint "
        f"{torch_convert.SAFETENSORS_SUFFIXES + torch_convert.TORCH_SUFFIXES}, a URL or a tag. "
        f"Received: weights={path!r}")


def note_pretrained(model, entry):
    """Records `entry` as `model.pretrained_weights` (its evaluation geometry is
    what `keras_resnet.export` uses by default) and warns when the model's
    in-model preprocessing differs from the one the weights were trained with."""
    model.pretrained_weights = entry
    want = resolve_stats(entry.preprocessing)
    norm = next((l for l in model.layers if l.name == "preprocessing"), None)
    have = None
    if isinstance(norm, keras.layers.Normalization):
        mean = [float(v) for v in keras.ops.convert_to_numpy(norm.mean).reshape(-1)]
        std = [float(v) ** 0.5 for v in keras.ops.convert_to_numpy(norm.variance).reshape(-1)]
        have = (mean, std)
    close = have is not None and all(abs(a - b) < 1e-3 * max(1.0, abs(b))
                                     for x, y in zip(have, want) for a, b in zip(x, y))
    if not close:
        warnings.warn(
            f"{entry.source} expects pixels normalised with mean={want[0]}, std={want[1]} "
            f"(0-255 scale); {model.name!r} normalises with "
            f"{'nothing' if have is None else 'mean=%s, std=%s' % tuple(map(_round, have))}. Build it "
            f"with preprocessing={entry.preprocessing!r} (create_model does so for a tag) so it "
            "takes 0-255 pixels.", stacklevel=3)


def _round(values):
    return [round(v, 3) for v in values]
