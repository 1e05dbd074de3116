"""Normalization constants and the in-model preprocessing layer.

Models built with `preprocessing=...` take raw pixels on a 0-255 scale (uint8 or
float) and normalise inside the graph. The data pipelines therefore only decode,
resize, crop and augment, and the exported SavedModel reuses exactly the same
normalisation: there is one place where the constants live, here.
"""

import keras

# Per-channel mean and std on a 0-255 scale.
NORMALIZATION_STATS = {
    # Computed on the 50,000 CIFAR-10 training images.
    "cifar10": ((125.307, 122.950, 113.865), (62.993, 62.089, 66.705)),
    "cifar100": ((129.304, 124.070, 112.434), (68.170, 65.392, 70.418)),
    # The torchvision/timm ImageNet constants.
    "imagenet": ((123.675, 116.28, 103.53), (58.395, 57.12, 57.375)),
    # Plain [0, 1] scaling, for unknown data.
    "unit": ((0.0, 0.0, 0.0), (255.0, 255.0, 255.0)),
}


def resolve_stats(spec):
    """Returns `(mean, std)` for a preset name or a `{"mean":, "std":}` dict."""
    if isinstance(spec, str):
        if spec not in NORMALIZATION_STATS:
            raise ValueError(
                f"Unknown preprocessing preset. Received: preprocessing={spec!r}. "
                f"Valid presets are {sorted(NORMALIZATION_STATS)}, or a dict "
                "{'mean': (r, g, b), 'std': (r, g, b)} on a 0-255 scale.")
        return NORMALIZATION_STATS[spec]
    if isinstance(spec, dict) and set(spec) == {"mean", "std"}:
        mean, std = tuple(float(m) for m in spec["mean"]), tuple(float(s) for s in spec["std"])
        if any(s <= 0 for s in std):
            raise ValueError(f"`preprocessing['std']` must be positive. Received: std={std}")
        return mean, std
    raise ValueError(
        f"Invalid `preprocessing`. Received: preprocessing={spec!r}. Expected None, "
        f"one of {sorted(NORMALIZATION_STATS)}, or a dict with keys 'mean' and 'std'.")


def normalization_layer(spec, name="preprocessing"):
    """A `keras.layers.Normalization` that maps 0-255 pixels to zero mean, unit std."""
    mean, std = resolve_stats(spec)
    channels = len(mean)
    return keras.layers.Normalization(
        axis=-1, mean=list(mean), variance=[s * s for s in std], name=name,
        # Keep normalisation in float32 even under mixed precision: bf16 has
        # only 8 bits of mantissa, too few for raw 0-255 pixels minus a mean.
        dtype="float32") if channels else None


def eval_resize(images, image_size, crop_fraction=None):
    """The eval-time geometry shared by the data pipelines and the exported model.

    Args:
        images: uint8 or float images on a 0-255 scale, `[H, W, C]` or
            `[N, H, W, C]`, any size.
        image_size: `(height, width)` the model expects.
        crop_fraction: `None` or 1.0: resize straight to `image_size` (CIFAR).
            Otherwise resize the shorter side to `size / crop_fraction` and take
            the central `image_size` crop (the ImageNet protocol, 0.875).

    Returns:
        float32 images on a 0-255 scale with spatial size `image_size`.
    """
    import tensorflow as tf

    height, width = int(image_size[0]), int(image_size[1])
    # No cast before the resize: the antialiased resize (ScaleAndTranslate) reads
    # uint8 and writes float32 at the output size, so a large decoded image is
    # never copied to float32 at full size (4x its bytes). Same values: uint8 ->
    # float32 is exact either way.
    images = tf.convert_to_tensor(images)
    if images.dtype not in (tf.uint8, tf.float32):
        images = tf.cast(images, tf.float32)
    if crop_fraction is None or crop_fraction >= 1.0:
        if images.shape[-3] == height and images.shape[-2] == width:
            return tf.cast(images, tf.float32)  # already the right size: no resampling, bit-exact
        return tf.cast(tf.image.resize(images, (height, width), method="bilinear", antialias=True), tf.float32)
    shape = tf.shape(images)
    h = tf.cast(shape[-3], tf.float32)
    w = tf.cast(shape[-2], tf.float32)
    target_short = tf.cast(max(height, width), tf.float32) / crop_fraction
    scale = target_short / tf.minimum(h, w)
    new_h = tf.cast(tf.math.ceil(h * scale), tf.int32)
    new_w = tf.cast(tf.math.ceil(w * scale), tf.int32)
    images = tf.cast(tf.image.resize(images, tf.stack([new_h, new_w]), method="bilinear", antialias=True),
                     tf.float32)
    top = (new_h - height) // 2
    left = (new_w - width) // 2
    return images[..., top:top + height, left:left + width, :]
