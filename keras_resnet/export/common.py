"""Shared steps of every export format: argument checks and the model as exported
(float32 copy, folded BatchNorm, normalisation and softmax added in front/behind)."""

import logging

import numpy as np

from keras_resnet.deploy import fold_batchnorm as fold_batchnorm_model
from keras_resnet.deploy import is_foldable_model
from keras_resnet.layers import walk_layers
from keras_resnet.preprocessing import normalization_layer

log = logging.getLogger("keras_resnet.export")


def _has_input_normalization(model):
    import keras

    return any(isinstance(layer, (keras.layers.Normalization, keras.layers.Rescaling))
               for layer in walk_layers(model))


def _outputs_probabilities(model):
    """True when the model already ends in softmax/sigmoid, False for logits."""
    last = model.layers[-1]
    import keras

    if isinstance(last, keras.layers.Softmax):
        return True
    name = getattr(getattr(last, "activation", None), "__name__", None)
    if name in ("softmax", "sigmoid"):
        return True
    if name == "linear":
        return False
    log.warning("Cannot tell whether %s outputs probabilities (last layer %r); exporting its "
                "outputs as they are. Pass apply_softmax=True if they are logits.", model.name, last.name)
    return True


def _with_normalization(model, normalization):
    """`model` with a float32 Normalization in front (for models trained on
    normalised inputs without one inside), or `model` itself."""
    import keras

    if normalization is None:
        return model
    if _has_input_normalization(model):
        raise ValueError(
            "The model already normalises its inputs (it has a Normalization or Rescaling layer), "
            f"so exporting with another would normalise twice. Received: normalization={normalization!r}")
    norm = normalization_layer(normalization, name="export_normalization")
    inputs = keras.Input(model.input_shape[1:], name="image")
    return keras.Model(inputs, model(norm(inputs)), name=model.name)


def _float32_copy(model):
    """The same model computing in float32 (TFLite cannot convert mixed-precision graphs)."""
    import keras

    if all(layer.dtype_policy.compute_dtype == "float32" for layer in walk_layers(model)
           if hasattr(layer, "dtype_policy")):
        return model
    config = model.get_config()
    for layer in config.get("layers", []):  # drop the per-layer mixed policies
        layer.get("config", {}).pop("dtype", None)
    previous = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        copy = model.__class__.from_config(config)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    copy.set_weights(model.get_weights())
    return copy


def _folded_if_possible(model):
    """`keras_resnet.deploy.fold_batchnorm(model)` where it applies (functional models), else `model`."""
    return fold_batchnorm_model(model) if is_foldable_model(model) else model


def _resolve_fold(fold_batchnorm, model):
    """`"auto"` folds every model that has BatchNorm (`keras_resnet.deploy.fold_batchnorm`)."""
    import keras

    if fold_batchnorm == "auto":
        return is_foldable_model(model) and any(
            isinstance(layer, keras.layers.BatchNormalization) for layer in walk_layers(model))
    if not isinstance(fold_batchnorm, bool):
        raise ValueError("`fold_batchnorm` must be True, False or 'auto'. "
                         f"Received: fold_batchnorm={fold_batchnorm!r}")
    return fold_batchnorm


def _with_softmax(model, softmax):
    import keras

    if not softmax:
        return model
    return keras.Model(model.inputs, keras.layers.Softmax(dtype="float32")(model.outputs[0]), name=model.name)


def _check_image_size(image_size, model):
    size = image_size if image_size is not None else tuple(model.input_shape[1:3])
    try:
        size = tuple(size)
    except TypeError:
        size = (size,)
    if len(size) != 2 or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0
                                 for s in size):
        raise ValueError("`image_size` must be (height, width) with positive ints; the model input "
                         f"{model.input_shape} does not fix it. Received: image_size={image_size!r}")
    return tuple(int(s) for s in size)


def _check_args(model, class_names, top_k, max_pixels, crop_fraction, max_batch_size=1,
                max_request_pixels=1):
    if len(model.output_shape) != 2:
        raise ValueError("The model must output class scores [batch, num_classes] (include_top=True). "
                         f"Received: model.output_shape={model.output_shape}")
    if class_names is not None and len(class_names) != model.output_shape[-1]:
        raise ValueError(f"`class_names` has {len(class_names)} entries but the model has "
                         f"{model.output_shape[-1]} outputs. Received: class_names={list(class_names)[:5]}...")
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
        raise ValueError(f"`top_k` must be a positive int. Received: top_k={top_k!r}")
    for name, value in (("max_pixels", max_pixels), ("max_batch_size", max_batch_size),
                        ("max_request_pixels", max_request_pixels)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"`{name}` must be a positive int. Received: {name}={value!r}")
    if crop_fraction is not None and not (isinstance(crop_fraction, (int, float)) and 0 < crop_fraction <= 1):
        raise ValueError(f"`crop_fraction` must be None or in (0, 1]. Received: crop_fraction={crop_fraction!r}")
