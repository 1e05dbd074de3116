"""Loading weights: files from earlier runs, and the keras.applications port.

keras_resnet names its sub-layers exactly as keras.applications does
(`conv2_block1_1_conv`, `post_bn`, `predictions`), so porting is a walk over
the reference model's layers with a name lookup and a shape check.
"""

import os

import keras

from keras_resnet import layers as blocks
from keras_resnet.layers import walk_layers
from keras_resnet.models import KERAS_APPLICATIONS, ResNet, imagenet_layout



def _weighted_sublayers(model):
    """Maps every weighted leaf layer name to the layer, looking inside blocks."""
    return {layer.name: layer for layer in blocks.walk_layers(model)
            if layer.weights and not isinstance(layer, blocks.ResidualBlock)}


def port_weights(source, target, skip_mismatched_head=True, strict=False, exclude=()):
    """Copies weights layer by layer from `source` into `target` by name.

    Args:
        source: A keras.applications ResNet/ResNetV2 (or any model with the
            same layer names).
        target: A keras_resnet model with the matching layout.
        skip_mismatched_head: Leave `predictions` alone when the number of
            classes differs (fine-tuning to new classes).
        strict: Also fail when a weighted layer of `target` (other than the
            classifier) receives no weights, e.g. squeeze-and-excitation
            layers the source does not have; otherwise they keep their
            initial values.
        exclude: Names of layers to leave at their current values (e.g.
            `("predictions",)` for a fresh classifier when fine-tuning).

    Returns:
        The list of ported layer names.

    Raises:
        ValueError: when a weighted source layer has no counterpart or a shape
            differs, naming the layer.
    """
    targets = _weighted_sublayers(target)
    ported = []
    for layer in _weighted_sublayers(source).values():
        if layer.name in exclude:
            continue
        if layer.name not in targets:
            raise ValueError(
                f"Cannot port weights: layer {layer.name!r} of {source.name!r} has no "
                f"counterpart in {target.name!r}. Build the target with the matching "
                "layout (see keras_resnet.weights.imagenet_layout).")
        dest = targets[layer.name]
        values = layer.get_weights()
        shapes = [tuple(w.shape) for w in dest.weights]
        if shapes != [tuple(v.shape) for v in values]:
            if layer.name == "predictions" and skip_mismatched_head:
                continue
            raise ValueError(
                f"Cannot port weights of layer {layer.name!r}: shapes "
                f"{[tuple(v.shape) for v in values]} vs {shapes} in the target.")
        dest.set_weights(values)
        ported.append(layer.name)
    if strict:
        # Containers (an SE layer) count as filled when all their leaves are.
        filled = set(ported)
        for name, layer in targets.items():
            leaves = [l.name for l in vars(layer).values()
                      if isinstance(l, keras.layers.Layer) and l.weights]
            if leaves and all(leaf in filled for leaf in leaves):
                filled.add(name)
        missing = [name for name in targets
                   if name not in filled and name != "predictions" and name not in exclude]
        if missing:
            raise ValueError(
                f"Cannot port weights: {len(missing)} weighted layers of {target.name!r} have no "
                f"counterpart in {source.name!r}, e.g. {missing[:5]}. Build the target with "
                "the matching layout (see keras_resnet.weights.imagenet_layout).")
    return ported


def from_keras_applications(app_model, input_shape=None, num_classes=None, **options):
    """Returns a keras_resnet model carrying the weights of a keras.applications ResNet.

    Args:
        app_model: `keras.applications.ResNet50/101/152` or `ResNet50V2/101V2/152V2`.
        input_shape: Defaults to the application's input shape.
        num_classes: Defaults to the application's classes (a new, freshly
            initialised head when different).
        **options: Extra `keras_resnet.ResNet` options (e.g. `preprocessing`).
    """
    by_name = {v.lower(): k for k, v in KERAS_APPLICATIONS.items()}
    key = by_name.get(app_model.name.lower())
    if key is None:
        raise ValueError(
            f"Unsupported model. Received: app_model.name={app_model.name!r}. Supported: "
            f"{sorted(KERAS_APPLICATIONS.values())} from keras.applications.")
    depth, preact = key
    has_top = any(layer.name == "predictions" for layer in app_model.layers)
    if num_classes is None:
        num_classes = app_model.get_layer("predictions").units if has_top else 1000
    if input_shape is None:
        input_shape = tuple(app_model.input_shape[1:])
    stages, layout = imagenet_layout(depth, preact)
    options.setdefault("include_top", has_top)
    if not has_top:
        # A headless application: keep its pooling (include_top=False, pooling=...).
        pools = {"avg_pool": "avg", "max_pool": "max"}
        options.setdefault("pooling", next(
            (pools[l.name] for l in app_model.layers if l.name in pools), None))
    act = None
    if has_top:
        act = app_model.get_layer("predictions").activation
        options.setdefault("classifier_activation",
                           getattr(act, "__name__", "softmax") if act is not None else None)
    model = ResNet(input_shape, num_classes, depth, stages=stages, stem="imagenet",
                   block="bottleneck", preact=preact, name=f"{'preact_' if preact else ''}resnet{depth}",
                   **layout, **options)
    port_weights(app_model, model, strict=True)
    return model


def keras_applications_name(model):
    """The keras.applications model whose ImageNet weights fit `model`'s layout
    (`"ResNet50"`, `"ResNet101V2"`, ...), or a ValueError saying why none does.

    The depth is the first number in the model's name (`resnet50_v1` -> 50,
    `preact_resnet101` -> 101); pre-activation models have a `post_bn` layer.
    keras.applications' V1 weights need conv biases, which the v1.5 layout
    (`resnet50`, torchvision's) does not have.
    """
    import re

    match = re.search(r"(\d+)", model.name)
    depth = int(match.group(1)) if match else None
    layers = {layer.name: layer for layer in walk_layers(model)}
    preact = "post_bn" in layers
    app_name = KERAS_APPLICATIONS.get((depth, preact))
    if app_name is None:
        raise ValueError(
            f"No keras.applications ImageNet weights for a {'pre-activation ' if preact else ''}"
            f"ResNet of depth {depth}: they exist for resnet50_v1, resnet101_v1, resnet152_v1 and "
            f"their _v2 forms. Received: model.name={model.name!r}")
    stem = layers.get("conv1_conv")
    if stem is not None and not getattr(stem, "use_bias", True):
        raise ValueError(
            f"keras.applications' {app_name} weights need the keras.applications layout (conv "
            f"biases, stride on the 1x1): build {'resnet%d_v2' % depth if preact else 'resnet%d_v1' % depth}"
            f" instead. Received: model.name={model.name!r}, whose convolutions have no biases "
            "(the v1.5 layout of torchvision and timm)")
    return app_name


def load_weights(model, weights, depth=None, preact=False):
    """Loads `weights` (a path or `"imagenet"`) into `model` in place.

    Raises:
        ValueError: for a missing file or an unsupported value, naming it.
    """
    if weights == "imagenet":
        app_name = KERAS_APPLICATIONS[(depth, bool(preact))]
        include_top = any(layer.name == "predictions" for layer in model.layers)
        app = getattr(keras.applications, app_name)(
            weights="imagenet", include_top=include_top and model.output_shape[-1] == 1000)
        port_weights(app, model, strict=True)
        return model
    if not isinstance(weights, (str, os.PathLike)):
        raise ValueError(f"`weights` must be None, 'imagenet' or a path. Received: weights={weights!r}")
    path = os.fspath(weights)
    if not os.path.exists(path):
        raise ValueError(f"Weights file not found. Received: weights={path!r}")
    if path.endswith(".weights.h5"):
        model.load_weights(path)
    elif path.endswith(".keras"):
        source = keras.saving.load_model(path, compile=False, safe_mode=True)
        port_weights(source, model, strict=True)
    else:
        raise ValueError(
            f"`weights` must end in '.weights.h5' or '.keras'. Received: weights={path!r}")
    return model
