"""Training augmentation: the `cifar` and `imagenet` presets, RandAugment, random
erasing, mixup and cutmix.

Every random decision is drawn from *stateless* ops seeded by a `[2]` int64
tensor that the pipeline derives from `(seed, element index)`. Hence:

* the same seed gives the same stream, whatever the map parallelism (a shared
  stateful generator would hand out numbers in thread-scheduling order);
* every epoch differs, because the element index keeps counting;
* nothing depends on how many iterators Keras or `tf.distribute` open.

Keras preprocessing layers are used where Keras has the op (`RandAugment`,
`RandomErasing`). They normally draw from a stateful `SeedGenerator`;
`StatelessLayer` binds them to the per-element seed instead. Crops and flips
use the equivalent `tf.image.stateless_*` ops directly.

All functions take and return float32 images on a 0-255 scale (the models
normalise inside), `[H, W, 3]` per image or `[N, H, W, 3]` per batch.
"""

import keras
import tensorflow as tf

from keras_resnet import compat
from keras_resnet.preprocessing import eval_resize

PRESETS = ("cifar", "imagenet")
# Images up to this side get the CIFAR recipe under augment="auto".
AUTO_CIFAR_MAX_SIZE = 64
IMAGENET_SCALE = (0.08, 1.0)
IMAGENET_RATIO = (3 / 4, 4 / 3)


def resolve_augment(augment, image_size):
    """Maps `"auto"` to `"cifar"` (<= 64 px) or `"imagenet"`; validates the rest.

    Raises:
        ValueError: an unknown preset name.
    """
    if augment == "auto":
        return "cifar" if max(image_size) <= AUTO_CIFAR_MAX_SIZE else "imagenet"
    if augment is None or augment in PRESETS:
        return augment
    raise ValueError(f"Unknown augmentation preset. Received: augment={augment!r}. "
                     f"Expected 'auto', None or one of {PRESETS}.")


def split_seed(seed, num):
    """`num` independent `[2]` seeds from one (stateless_split)."""
    return tf.unstack(tf.random.experimental.stateless_split(seed, num))


# ----------------------------------------------------------------------- presets
def random_flip(image, seed):
    """Horizontal flip with probability 1/2."""
    return tf.image.stateless_random_flip_left_right(image, seed=seed)


PAD_MODES = ("constant", "reflect")


def cifar_augment(image, seed, pad=4, pad_mode="constant", flip=None):
    """He et al. 2015: zero-pad `pad` pixels, random crop back to size, random flip.

    Args:
        image: float32 `[H, W, 3]`, already at the training size.
        seed: `[2]` int seed.
        pad: pixels of padding on each side (0: no crop).
        pad_mode: `"constant"` (zeros, the paper) or `"reflect"` (airbench's
            translation, which shows no black border).
        flip: `None` for a random flip, or a boolean tensor: flip exactly when
            true (see `alternating_flip`).
    """
    crop_seed, flip_seed = split_seed(seed, 2)
    if pad:
        shape = tf.shape(image)
        padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]], mode=pad_mode.upper())
        image = tf.image.stateless_random_crop(padded, shape, seed=crop_seed)
    if flip is None:
        return random_flip(image, flip_seed)
    return tf.cond(flip, lambda: tf.image.flip_left_right(image), lambda: image)


def alternating_flip(example_id, epoch, seed):
    """Whether to flip an example in an epoch, airbench's alternating flip:
    a random choice per example in epoch 0, then the opposite of the previous
    epoch's. Every image is seen both ways in every pair of epochs, where
    independent coin flips repeat one side half of the time (K. Jordan 2024:
    about 10% fewer epochs to the same accuracy).

    Args:
        example_id: int64 index of the example in the dataset.
        epoch: int64 epoch number (0-based).
        seed: `[2]` int64 seed.
    """
    first = tf.random.stateless_uniform(
        [], seed=tf.random.experimental.stateless_fold_in(seed, example_id)) < 0.5
    return tf.math.logical_xor(first, tf.math.floormod(epoch, 2) == 1)


def random_resized_crop(image, seed, image_size, scale=IMAGENET_SCALE, ratio=IMAGENET_RATIO):
    """Inception-style crop (Szegedy et al. 2015): random area and aspect, resized.

    Falls back to the whole image when 10 attempts find no valid box, as in
    the reference TPU/flax pipelines.

    Returns:
        float32 `[image_size[0], image_size[1], 3]`.
    """
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image), bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=seed,
        min_object_covered=0.0, aspect_ratio_range=ratio, area_range=scale,
        max_attempts=10, use_image_if_no_bounding_boxes=True)
    crop = tf.slice(image, begin, size)
    return tf.image.resize(tf.cast(crop, tf.float32), image_size, method="bilinear")


def imagenet_augment(image, seed, image_size, scale=IMAGENET_SCALE, ratio=IMAGENET_RATIO, flip=None):
    """Random-resized crop + horizontal flip (the standard ImageNet training recipe);
    `flip` as in `cifar_augment`."""
    crop_seed, flip_seed = split_seed(seed, 2)
    image = random_resized_crop(image, crop_seed, image_size, scale, ratio)
    if flip is None:
        return random_flip(image, flip_seed)
    return tf.cond(flip, lambda: tf.image.flip_left_right(image), lambda: image)


# ------------------------------------------------------- Keras layers, stateless
class _PerCallSeed(keras.random.SeedGenerator):
    """Stands in for a layer's `SeedGenerator`: each draw folds a counter into
    the seed of the current call, so draws are distinct within a call and a
    pure function of that seed."""

    def __init__(self):  # pylint: disable=super-init-not-called
        # Deliberately no super().__init__(): that would create the state
        # variable this class exists to avoid. Keras's `draw_seed` only needs
        # an instance whose `next()` returns a seed tensor.
        self.seed = None
        self.count = 0

    def next(self, ordered=True):
        del ordered
        self.count += 1
        return tf.random.experimental.stateless_fold_in(self.seed, self.count)


class StatelessLayer:
    """Applies a Keras image preprocessing layer with an explicit per-image seed.

    Example:
        erase = StatelessLayer(keras.layers.RandomErasing(factor=(0.5, 0.5), value_range=(0, 255)))
        image = erase(image, seed)   # same seed -> same output
    """

    def __init__(self, layer):
        self.layer = layer
        self.generator = _PerCallSeed()
        compat.set_seed_generator(layer, self.generator)

    def __call__(self, image, seed):
        self.generator.seed = tf.cast(seed, tf.int64)
        self.generator.count = 0
        return tf.cast(self._apply(image), tf.float32)

    def _apply(self, image):
        return self.layer(image, training=True)


class _RandAugment(StatelessLayer):
    """`keras.layers.RandAugment` with the ops drawn per image and only the chosen
    op computed.

    Keras's layer draws its ops once per batch and evaluates *every* candidate op
    before selecting one (`where`), about 10x the work: 330 img/s at 32 px on
    one core against 1,000 img/s here. Same sub-layers, same magnitudes.
    """

    def _apply(self, image):
        ops = [getattr(self.layer, name) for name in getattr(self.layer, "_AUGMENT_LAYERS", ())]
        if not ops:  # a Keras version without the attribute: use the layer as is
            return self.layer(image, training=True)
        batch = tf.cast(image[None], tf.float32)  # the sub-layers expect a batch
        for _ in range(self.layer.num_ops):
            index = tf.random.stateless_uniform((), self.generator.next(), 0, len(ops), dtype=tf.int32)
            batch = tf.switch_case(index, [self._branch(op, batch) for op in ops])
        return batch[0]

    def _branch(self, op, batch):
        def apply():
            transform = op.get_random_transformation(batch, training=True, seed=self.generator)
            out = tf.cast(op.transform_images(batch, transform, training=True), tf.float32)
            return tf.ensure_shape(out, batch.shape)
        return apply


def rand_augment(num_ops=2, factor=0.5):
    """RandAugment (Cubuk et al. 2020) built on `keras.layers.RandAugment`.

    Returns:
        A callable `(image, seed) -> image`.
    """
    # float32 whatever the global policy: bf16 cannot hold 0-255 pixels exactly.
    return _RandAugment(keras.layers.RandAugment(value_range=(0, 255), num_ops=num_ops, factor=factor,
                                                 dtype="float32"))


def random_erasing(probability, scale=(0.02, 0.33)):
    """Random erasing (Zhong et al. 2020) via `keras.layers.RandomErasing`.

    The erased rectangle is filled with random values. Keras draws the
    probability uniformly from `factor`; `(p, p)` makes it exactly `p`.
    """
    return StatelessLayer(keras.layers.RandomErasing(
        factor=(probability, probability), scale=scale, value_range=(0, 255), dtype="float32"))


def parse_randaugment(spec):
    """`None`/`False`, `True` (2 ops, factor 0.5), `(num_ops, factor)` or a dict."""
    if spec is None or spec is False:
        return None
    if spec is True:
        return 2, 0.5
    if isinstance(spec, dict) and set(spec) <= {"num_ops", "factor"}:
        return int(spec.get("num_ops", 2)), float(spec.get("factor", 0.5))
    if isinstance(spec, (tuple, list)) and len(spec) == 2:
        num_ops, factor = spec
        if isinstance(num_ops, int) and num_ops >= 1 and 0 < float(factor) <= 1:
            return num_ops, float(factor)
    raise ValueError(f"Invalid `randaugment`. Received: randaugment={spec!r}. Expected None, True, "
                     "(num_ops, factor) with num_ops >= 1 and 0 < factor <= 1, or a dict of those.")


# --------------------------------------------------------------------- transforms
def train_transform(augment, image_size, *, crop_fraction=None, random_erasing_prob=0.0,
                    randaugment=None, crop_padding=4, crop_pad_mode="constant"):
    """The per-image training transform: `(uint8 or float image, seed) -> float32`.

    Args:
        augment: `"cifar"`, `"imagenet"` or None (eval geometry, no randomness).
        image_size: `(height, width)` of the output.
        crop_fraction: eval geometry used when `augment` is None.
        random_erasing_prob: probability of erasing one rectangle (0 disables).
        randaugment: see `parse_randaugment`.
        crop_padding, crop_pad_mode: the `cifar` preset's `pad` and `pad_mode`.

    Returns:
        A function `(image, seed, flip=None) -> float32 [H, W, 3]` on a 0-255
        scale; `flip` (a boolean tensor) fixes the `cifar` preset's flip.
    """
    if isinstance(crop_padding, bool) or not isinstance(crop_padding, int) or crop_padding < 0:
        raise ValueError(f"`crop_padding` must be an int >= 0. Received: crop_padding={crop_padding!r}")
    if crop_pad_mode not in PAD_MODES:
        raise ValueError(f"Unknown padding mode. Received: crop_pad_mode={crop_pad_mode!r}. "
                         f"Expected one of {PAD_MODES}.")
    image_size = tuple(int(s) for s in image_size)
    randaugment = parse_randaugment(randaugment)
    extras = []
    if randaugment:
        extras.append(rand_augment(*randaugment))
    if random_erasing_prob:
        extras.append(random_erasing(random_erasing_prob))

    def transform(image, seed, flip=None):
        preset_seed, *extra_seeds = split_seed(seed, 1 + len(extras))
        if augment == "cifar":
            # Variable-size sources are first brought to the training size.
            image = cifar_augment(eval_resize(image, image_size), preset_seed, crop_padding,
                                  crop_pad_mode, flip)
        elif augment == "imagenet":
            image = imagenet_augment(image, preset_seed, image_size, flip=flip)
        else:
            image = eval_resize(image, image_size, crop_fraction)
        image = tf.ensure_shape(tf.cast(image, tf.float32), image_size + (3,))
        for extra, extra_seed in zip(extras, extra_seeds):
            image = tf.ensure_shape(extra(image, extra_seed), image_size + (3,))
        return image

    return transform


def eval_transform(image_size, crop_fraction=None):
    """The evaluation transform, `preprocessing.eval_resize` (shared with export)."""
    image_size = tuple(int(s) for s in image_size)

    def transform(image):
        return tf.ensure_shape(eval_resize(image, image_size, crop_fraction), image_size + (3,))

    return transform


# -------------------------------------------------------------------- batch mixing
def _beta(alpha, seed):
    """One Beta(alpha, alpha) sample from two stateless gammas."""
    seed_a, seed_b = split_seed(seed, 2)
    a = tf.random.stateless_gamma((), seed_a, alpha=alpha)
    b = tf.random.stateless_gamma((), seed_b, alpha=alpha)
    return a / (a + b)


def mixup(images, labels, seed, alpha):
    """Mixup (Zhang et al. 2018), one mixing weight per batch as in the paper."""
    perm_seed, lam_seed = split_seed(seed, 2)
    perm = tf.argsort(tf.random.stateless_uniform((tf.shape(images)[0],), perm_seed))
    lam = _beta(alpha, lam_seed)
    return (lam * images + (1 - lam) * tf.gather(images, perm),
            lam * labels + (1 - lam) * tf.gather(labels, perm))


def cutmix(images, labels, seed, alpha):
    """CutMix (Yun et al. 2019): paste one box from a shuffled partner per batch.

    The label weight is the exact fraction of pasted pixels (after clipping the
    box at the border), not the sampled lambda.
    """
    perm_seed, lam_seed, y_seed, x_seed = split_seed(seed, 4)
    perm = tf.argsort(tf.random.stateless_uniform((tf.shape(images)[0],), perm_seed))
    h, w = tf.shape(images)[1], tf.shape(images)[2]
    cut = tf.sqrt(1.0 - _beta(alpha, lam_seed))
    cut_h = tf.cast(tf.cast(h, tf.float32) * cut, tf.int32)
    cut_w = tf.cast(tf.cast(w, tf.float32) * cut, tf.int32)
    cy = tf.random.stateless_uniform((), y_seed, 0, h, dtype=tf.int32)
    cx = tf.random.stateless_uniform((), x_seed, 0, w, dtype=tf.int32)
    y0, y1 = tf.clip_by_value(cy - cut_h // 2, 0, h), tf.clip_by_value(cy + cut_h // 2, 0, h)
    x0, x1 = tf.clip_by_value(cx - cut_w // 2, 0, w), tf.clip_by_value(cx + cut_w // 2, 0, w)
    rows, cols = tf.range(h)[:, None], tf.range(w)[None, :]
    box = (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)
    box = tf.cast(box, images.dtype)[None, :, :, None]
    area = tf.cast((y1 - y0) * (x1 - x0), tf.float32) / tf.cast(h * w, tf.float32)
    return (images * (1 - box) + tf.gather(images, perm) * box,
            (1 - area) * labels + area * tf.gather(labels, perm))


def mix_batch(images, labels, seed, mixup_alpha=0.0, cutmix_alpha=0.0):
    """Mixup and/or CutMix on a batch with one-hot labels; the labels stay soft and sum to 1.

    With both enabled, each batch uses one of the two, picked at random (as timm
    does). Keras 3 has MixUp/CutMix layers, but its CutMix weights labels by the
    continuous box area rather than the pixels actually pasted and draws alpha
    uniformly instead of using Beta(alpha, alpha), so these are written out.
    """
    pick_seed, mix_seed = split_seed(seed, 2)
    if mixup_alpha > 0 and cutmix_alpha > 0:
        use_mixup = tf.random.stateless_uniform((), pick_seed) < 0.5
        return tf.cond(use_mixup, lambda: mixup(images, labels, mix_seed, mixup_alpha),
                       lambda: cutmix(images, labels, mix_seed, cutmix_alpha))
    if mixup_alpha > 0:
        return mixup(images, labels, mix_seed, mixup_alpha)
    if cutmix_alpha > 0:
        return cutmix(images, labels, mix_seed, cutmix_alpha)
    return images, labels

