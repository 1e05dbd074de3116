"""The tf.data pipelines built from any source: `make_pipelines`.

Pipelines yield float32 images on a 0-255 scale, decoded, resized and
augmented but *not* normalised: models carry their normalisation
(`ResNet(..., preprocessing=info.normalization)`), so the exported model
reuses it. `DatasetInfo.normalization` says which statistics to put there.

    train_ds, eval_ds, info = make_pipelines("cifar10", 128)
    train_ds, eval_ds, info = make_pipelines("path/to/photos", 32)     # one folder per class
    train_ds, eval_ds, info = make_pipelines((x, y), 64)               # numpy arrays
    model.fit(train_ds, steps_per_epoch=info.num_train // 128, validation_data=eval_ds, ...)

The training stream is endless (`repeat()` before `shuffle()`), so `fit` needs
`steps_per_epoch`. Order, per input pipeline:

    train: [take(max_examples)] -> shard -> decode (+ resize/shrink) -> cache -> repeat ->
           shuffle(seed) -> enumerate -> map(augment, AUTOTUNE) -> batch(drop_remainder) ->
           [mixup/cutmix] -> prefetch
           (uncached files: ... enumerate -> map(decode) -> drop unreadable -> map(augment) ...)
    eval:  shard -> decode -> cache -> map(eval_resize, AUTOTUNE) -> batch -> prefetch

Caching holds decoded uint8 images and is skipped (with a log line) when the
estimate exceeds a share of the free memory. Augmentation is stateless and
seeded by (seed, element index): see `keras_resnet.augment`.
"""

import dataclasses
import logging
import math
import os

import numpy as np
import tensorflow as tf

from keras_resnet import augment as aug
from keras_resnet.data.arrays import _arrays_source, load_npz
from keras_resnet.data.folders import _folder_source
from keras_resnet.data.source import AUTOTUNE, IMAGENET_CROP_FRACTION, DatasetInfo, _channel_stats, _drop_unreadable
from keras_resnet.data.tfds_source import _tfds_source
from keras_resnet.image_guard import DEFAULT_MAX_PIXELS

log = logging.getLogger("keras_resnet.data")
FLIPS = ("random", "alternating")
SHUFFLE_BUFFER = 20_000      # decoded or encoded examples; file names shuffle in full
CACHE_MEMORY_FRACTION = 0.4  # of the memory available when the pipeline is built


def _open_source(source, *, data_dir, train_split, eval_split, validation_split, seed, strict, max_pixels,
                 offline=False):
    if isinstance(source, dict):
        return _arrays_source(source, "arrays", validation_split)
    if isinstance(source, (tuple, list)) and len(source) == 2 and not isinstance(source[0], (str, os.PathLike)):
        return _arrays_source({"train": tuple(source)}, "arrays", validation_split)
    if not isinstance(source, (str, os.PathLike)) or not os.fspath(source):
        raise ValueError("`source` must be a tfds name, an image folder, an .npz path, (x, y) arrays or "
                         f"a dict {{'train': (x, y), 'test': (x, y)}}. Received: source={source!r}")
    path = os.path.expanduser(os.fspath(source))
    if path.lower().endswith(".npz"):
        name = os.path.splitext(os.path.basename(path))[0]
        return _arrays_source(load_npz(path), name, validation_split)
    bare = os.sep not in os.fspath(source) and not os.fspath(source).startswith((".", "~"))
    if os.path.exists(os.path.join(path, "config.json")) and os.path.isdir(path):
        # A keras_resnet run directory (`--output cifar10`) is never a dataset: a bare
        # name means the tfds dataset; a path is a mistake worth naming.
        if not bare:
            raise ValueError(f"{path!r} is a keras_resnet run directory (it holds config.json), not an "
                             f"image folder. Received: source={source!r}")
    elif os.path.exists(path) or os.path.isabs(path) or not bare:
        return _folder_source(path, validation_split, seed, strict, max_pixels)
    # Anything else is a tfds name ("imagenette/160px" has a slash too); its
    # error says that no such folder exists either.
    return _tfds_source(source, data_dir, train_split, eval_split, validation_split, seed, offline)


def _normalization(source):
    """The source's preset or computed stats; else stats from a sample of tfds train data."""
    if source.normalization is not None:
        return source.normalization
    def sums(item, _):
        flat = tf.reshape(tf.cast(source.train.decode(item), tf.float64), (-1, 3))
        return tf.stack([tf.reduce_sum(flat, 0), tf.reduce_sum(flat * flat, 0)]), tf.shape(flat)[0]

    sample = source.train.ds.take(1000).map(sums, num_parallel_calls=AUTOTUNE)
    rows = list(sample.as_numpy_iterator())
    if not rows:
        return "unit"
    return _channel_stats(np.stack([r[0] for r in rows]), np.array([r[1] for r in rows], np.float64))


# ---------------------------------------------------------------------- pipelines
def _cgroup_memory_left(root="/sys/fs/cgroup"):
    """Bytes the container's memory limit leaves (cgroup v2, else v1), or None when unlimited."""
    def read(*parts):
        try:
            with open(os.path.join(root, *parts)) as f:
                return f.read().strip()
        except OSError:
            return None

    for limit_file, usage_file in (("memory.max", "memory.current"),
                                   (os.path.join("memory", "memory.limit_in_bytes"),
                                    os.path.join("memory", "memory.usage_in_bytes"))):
        limit, usage = read(limit_file), read(usage_file)
        if limit is None or not limit.isdigit():
            continue  # "max" (v2) or absent
        if int(limit) >= 1 << 60:  # v1's "unlimited"
            return None
        return max(0, int(limit) - int(usage or 0))
    return None


def _available_memory():
    """Free memory for caches: the host's available memory, capped by a container's limit."""
    try:
        host = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not POSIX: assume a modest machine
        host = 8 << 30
    container = _cgroup_memory_left()
    return host if container is None else min(host, container)


class _CacheBudget:
    """What the pipelines may cache in memory, shared: what the training split
    takes, the evaluation split no longer has."""

    def __init__(self, nbytes):
        self.left = nbytes

    def take(self, nbytes):
        if nbytes is None or nbytes > self.left:
            return False
        self.left -= nbytes
        return True


def _decoded_bytes(split, short_side=None, image_size=None):
    """Estimated bytes of the split's decoded (and shrunk/resized) images, or None."""
    if image_size is not None:
        return split.num_examples * image_size[0] * image_size[1] * 3
    sizes = split.image_sizes or ([split.fixed_size] * split.num_examples if split.fixed_size else None)
    if sizes is None:
        if short_side is None:
            return None
        return split.num_examples * short_side * short_side * 4 // 3 * 3  # ~4:3 images
    total = 0
    for h, w in sizes:
        scale = min(1.0, short_side / min(h, w)) if short_side else 1.0
        total += int(h * scale + 0.5) * int(w * scale + 0.5) * 3
    return total


def _should_cache(cache, split, nbytes, budget, what):
    if not cache or split.in_memory:
        return False
    left = budget.left
    if not budget.take(nbytes):
        log.info("Not caching the %s images: %s exceeds the cache budget left (%.2f GB).", what,
                 "their unknown size" if nbytes is None else f"~{nbytes / 2**30:.2f} GB", left / 2**30)
        return False
    return True


def _decode_files(ds, what, image_of, finite=False):
    """After a map that decodes files: drops a file that changed since it was
    checked (now corrupt) or vanished (unreadable), failing when too many vanish."""
    return _drop_unreadable(ds.ignore_errors(log_warning=True), what, image_of, finite)


def _shrink(image, short_side):
    """Resizes so the shorter side is at most `short_side` (uint8 kept)."""
    shape = tf.shape(image)
    h, w = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    scale = tf.minimum(1.0, short_side / tf.minimum(h, w))

    def resize():
        size = tf.cast(tf.round(tf.stack([h, w]) * scale), tf.int32)
        small = tf.image.resize(image, tf.maximum(size, 1), method="bilinear", antialias=True)
        return tf.cast(tf.clip_by_value(tf.round(small), 0, 255), tf.uint8)

    return tf.cond(scale < 1.0, resize, lambda: image)


def _train_preparation(augment, image_size, split):
    """The per-image step before caching: what every epoch would otherwise redo.

    `cifar` resizes variable-size images to the training size once. `imagenet`
    shrinks the shorter side to size / 0.875 (256 for 224) so that a cache of
    photos fits in memory; random-resized crops then come from that copy, as
    in fast ImageNet pipelines. Returns `(prepare, short_side, resized_to)`.
    """
    if augment == "cifar" and split.fixed_size != tuple(image_size):
        def prepare(image):
            resized = tf.image.resize(image, image_size, method="bilinear", antialias=True)
            return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)
        return prepare, None, tuple(image_size)
    if augment == "imagenet":
        short_side = int(math.ceil(max(image_size) / IMAGENET_CROP_FRACTION))
        return (lambda image: _shrink(image, short_side)), short_side, None
    return (lambda image: image), None, None


@dataclasses.dataclass(frozen=True)
class _Plan:
    """The resolved pipeline settings shared by the train and eval builders."""

    augment: object
    image_size: tuple
    crop_fraction: object
    seed: int
    cache: bool
    one_hot: bool
    mixup_alpha: float
    cutmix_alpha: float
    random_erasing: float
    randaugment: object
    num_classes: int
    input_context: object
    max_examples: object
    per_replica_batch: int
    flip: str = "random"
    crop_padding: int = 4
    crop_pad_mode: str = "constant"
    initial_step: int = 0  # batches a resumed run has consumed already


def _seed_for(seed, stream):
    """A `[2]` base seed per random stream (augmentation, mixing)."""
    return tf.constant([seed, stream], tf.int64)


def _labels(num_classes, one_hot):
    def convert(y):
        y = tf.cast(y, tf.int32)
        return tf.one_hot(y, num_classes, dtype=tf.float32) if one_hot else y
    return convert


def _shard(ds, input_context):
    if input_context is not None and input_context.num_input_pipelines > 1:
        # Before caching: each input pipeline reads, decodes and caches only its share.
        ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    return ds


def _local_count(n, input_context):
    if input_context is None or input_context.num_input_pipelines <= 1:
        return n
    return int(math.ceil(n / input_context.num_input_pipelines))


def _train_pipeline(split, plan, budget):
    ds = split.ds
    num = split.num_examples
    if plan.max_examples:
        ds, num = ds.take(plan.max_examples), min(num, plan.max_examples)
    ds = _shard(ds, plan.input_context)
    num = _local_count(num, plan.input_context)
    alternating = plan.flip == "alternating" and plan.augment is not None
    if alternating:
        # Each example carries its index, so its flip can alternate between passes.
        ds = ds.enumerate().map(lambda i, example: (example[0], example[1], i))
    prepare, short_side, resized_to = _train_preparation(plan.augment, plan.image_size, split)
    decode = split.decode
    estimate = _decoded_bytes(dataclasses.replace(split, num_examples=num, image_sizes=(
        split.image_sizes[:num] if split.image_sizes else None)), short_side, resized_to)
    cached = _should_cache(plan.cache, split, estimate, budget, "training")
    if short_side and not cached:
        # Uncached, the shrink would only cost time (an antialiased resize per
        # image, 3x the JPEG decode): crop from the full-resolution image.
        prepare = lambda image: image  # noqa: E731
    if cached:
        if split.may_fail:
            ds = _decode_files(ds.map(lambda item, y, *ids: (decode(item), y, *ids), num_parallel_calls=AUTOTUNE),
                               "training", lambda e: e[0], finite=True)  # one pass, then the cache
            ds = ds.map(lambda image, y, *ids: (prepare(image), y, *ids), num_parallel_calls=AUTOTUNE)
        else:
            ds = ds.map(lambda item, y, *ids: (prepare(decode(item)), y, *ids), num_parallel_calls=AUTOTUNE)
        ds = ds.cache()
    # Shuffle the endless stream with a fixed seed and no per-iterator
    # reshuffle: the order is a pure function of the seed however many
    # iterators Keras or tf.distribute open (a reshuffling dataset advances
    # its seed with each new iterator); the buffer still reorders every epoch.
    buffer = num if (split.small_items and not cached) else min(num, SHUFFLE_BUFFER)
    ds = ds.repeat()
    if alternating:
        # Number the passes before the shuffle: its buffer mixes neighbouring
        # passes, so a position in the shuffled stream does not tell the pass.
        ds = ds.enumerate().map(lambda j, example: (*example, j // max(num, 1)))
    ds = ds.shuffle(max(buffer, 1), seed=plan.seed, reshuffle_each_iteration=False)
    transform = aug.train_transform(
        plan.augment, plan.image_size, crop_fraction=plan.crop_fraction,
        random_erasing_prob=plan.random_erasing, randaugment=plan.randaugment,
        crop_padding=plan.crop_padding, crop_pad_mode=plan.crop_pad_mode)
    labels = _labels(plan.num_classes, plan.one_hot)
    base_seed = _seed_for(plan.seed, 0)
    flip_seed = _seed_for(plan.seed, 2)

    # Files read every epoch: decoded in a stage of their own, so that files
    # vanishing mid-run are counted and bounded (`_drop_unreadable`).
    decoded = split.may_fail and not cached

    def train_map(index, example):
        item, y, *ids = example
        image = item if cached else prepare(item if decoded else decode(item))
        seed = tf.random.experimental.stateless_fold_in(base_seed, index)
        # ids = (example index, pass over the data) with alternating flips.
        flip = aug.alternating_flip(ids[0], ids[1], flip_seed) if alternating else None
        return transform(image, seed, flip), labels(y)

    # The counter is assigned before the parallel map: each example's
    # randomness is fixed even when the map's output order is not.
    ds = ds.enumerate()
    if plan.initial_step:
        # A resumed run continues the stream where the interrupted one stopped:
        # the same order and the same per-element seeds, skipped before the
        # (costly) decode and augmentation.
        ds = ds.skip(plan.initial_step * plan.per_replica_batch)
    if decoded:
        ds = _decode_files(ds.map(lambda index, example: (index, (decode(example[0]), *example[1:])),
                                  num_parallel_calls=AUTOTUNE), "training", lambda e: e[1][0])
    ds = ds.map(train_map, num_parallel_calls=AUTOTUNE)
    ds = ds.batch(plan.per_replica_batch, drop_remainder=True)
    if plan.mixup_alpha or plan.cutmix_alpha:
        mix_seed = _seed_for(plan.seed, 1)
        ds = ds.enumerate(start=plan.initial_step).map(
            lambda i, batch: aug.mix_batch(batch[0], batch[1], tf.random.experimental.stateless_fold_in(mix_seed, i),
                                           plan.mixup_alpha, plan.cutmix_alpha),
            num_parallel_calls=AUTOTUNE)
    return ds.prefetch(AUTOTUNE)


def _eval_pipeline(split, plan, budget):
    ds = _shard(split.ds, plan.input_context)
    num = _local_count(split.num_examples, plan.input_context)
    decode = split.decode
    ds = ds.map(lambda item, y: (decode(item), y), num_parallel_calls=AUTOTUNE)
    if split.may_fail:
        ds = _decode_files(ds, "evaluation", lambda e: e[0], finite=True)
    local = dataclasses.replace(split, num_examples=num)
    # Cache the decoded originals, not resized floats: eval_resize must run on
    # the original image to match the exported model bit for bit.
    if _should_cache(plan.cache, split, _decoded_bytes(local), budget, "evaluation"):
        ds = ds.cache()
    transform = aug.eval_transform(plan.image_size, plan.crop_fraction)
    labels = _labels(plan.num_classes, plan.one_hot)
    ds = ds.map(lambda image, y: (transform(image), labels(y)), num_parallel_calls=AUTOTUNE)
    return ds.batch(plan.per_replica_batch).prefetch(AUTOTUNE)


def _check_arguments(batch_size, image_size, validation_split, mixup_alpha, cutmix_alpha, random_erasing,
                     crop_fraction, max_examples, one_hot, randaugment, max_pixels):
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive int. Received: batch_size={batch_size!r}")
    if image_size is not None:
        sizes = (image_size, image_size) if np.isscalar(image_size) else tuple(image_size)
        if len(sizes) != 2 or not all(isinstance(s, (int, np.integer)) and s >= 8 for s in sizes):
            raise ValueError(f"`image_size` must be an int >= 8 or (height, width). "
                             f"Received: image_size={image_size!r}")
        image_size = tuple(int(s) for s in sizes)
    if not 0 <= validation_split < 1:
        raise ValueError(f"`validation_split` must be in [0, 1). Received: validation_split={validation_split!r}")
    for argument, value in (("mixup_alpha", mixup_alpha), ("cutmix_alpha", cutmix_alpha)):
        if not value >= 0:
            raise ValueError(f"`{argument}` must be >= 0. Received: {argument}={value!r}")
    if (mixup_alpha or cutmix_alpha) and not one_hot:
        raise ValueError("mixup and cutmix make soft labels and need one_hot=True. "
                         f"Received: one_hot={one_hot!r}, mixup_alpha={mixup_alpha}, cutmix_alpha={cutmix_alpha}")
    if not 0 <= random_erasing <= 1:
        raise ValueError(f"`random_erasing` must be in [0, 1]. Received: random_erasing={random_erasing!r}")
    if crop_fraction is not None and not 0 < crop_fraction <= 1:
        raise ValueError(f"`crop_fraction` must be in (0, 1]. Received: crop_fraction={crop_fraction!r}")
    if max_examples is not None and (not isinstance(max_examples, (int, np.integer)) or max_examples < 1):
        raise ValueError(f"`max_examples` must be a positive int. Received: max_examples={max_examples!r}")
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, (int, np.integer)) or max_pixels < 1:
        raise ValueError(f"`max_pixels` must be a positive int. Received: max_pixels={max_pixels!r}")
    aug.parse_randaugment(randaugment)
    return image_size


def make_pipelines(source, batch_size, *, image_size=None, augment="auto", data_dir=None,
                   train_split=None, eval_split=None, validation_split=0.1, seed=0, cache=True,
                   one_hot=True, mixup_alpha=0.0, cutmix_alpha=0.0, random_erasing=0.0,
                   randaugment=None, crop_fraction=None, deterministic=False, input_context=None,
                   max_examples=None, strict=False, max_pixels=DEFAULT_MAX_PIXELS, offline=False,
                   resume_epoch=0, steps_per_epoch=None, flip="random", crop_padding=4,
                   crop_pad_mode="constant"):
    """Training and evaluation `tf.data` pipelines for `model.fit`.

    Args:
        source: a tfds name ("cifar10", "imagenette/160px"); an image folder
            (one sub-folder per class); an `.npz` path; `(x, y)` arrays; or
            `{"train": (x, y), "test": (x, y), "class_names": [...]}`.
        batch_size: the global batch size; per replica with `input_context`.
        image_size: `(h, w)` or an int; default: the images' own size when they
            all share one, else 224.
        augment: "cifar", "imagenet", None, or "auto" ("cifar" up to 64 px).
        data_dir: tfds data directory (default `$TFDS_DATA_DIR`, then tfds's own).
            A tfds dataset that is not there is downloaded and prepared into it
            on first use, unless `offline`.
        offline: never download: a tfds dataset that is not prepared is an
            error saying where it looked (what tests and CI use).
        resume_epoch, steps_per_epoch: a run resumed at `resume_epoch` (epochs
            of `steps_per_epoch` batches; default `num_train // batch_size`)
            gets the training stream from where it left off: the same batches
            an uninterrupted run sees from then on.
        train_split, eval_split: tfds split strings ("train[:90%]" passes through).
        validation_split: held-out fraction when the source has no eval split.
        seed: shuffling and augmentation seed (None: random, 0 if deterministic).
        cache: cache decoded uint8 images in memory when they fit.
        one_hot: float32 one-hot labels (needed for label smoothing and mixing)
            instead of int32.
        mixup_alpha, cutmix_alpha: Beta(alpha, alpha) parameters; 0 disables.
        random_erasing: probability of erasing a random rectangle.
        randaugment: None, True, `(num_ops, factor)` or a dict (Keras RandAugment).
        crop_fraction: eval centre-crop fraction; default 0.875 with the
            imagenet preset, else None (resize straight).
        deterministic: deterministic element order (and seed 0 when None).
        input_context: a `tf.distribute.InputContext`: shard by input pipeline
            and batch `input_context.get_per_replica_batch_size(batch_size)`.
        max_examples: use only the first N training examples (smoke runs).
        strict: image folders: raise on the first bad file instead of skipping.
        max_pixels: image folders: reject larger images before decoding.
        flip: `"random"` (a coin per image and pass) or `"alternating"`
            (`keras_resnet.augment.alternating_flip`: a coin in the first pass,
            then the other side each pass).
        crop_padding, crop_pad_mode: the `cifar` preset's padding before its
            random crop (pixels; `"constant"` zeros or `"reflect"`).

    Returns:
        `(train_ds, eval_ds, DatasetInfo)`: `train_ds` is endless (pass
        `steps_per_epoch`), shuffled, batched with `drop_remainder=True`;
        `eval_ds` is one pass in order, last batch kept. Both yield float32
        images on a 0-255 scale and one-hot float32 (or int32) labels.

    Raises:
        ValueError: bad arguments or data, each naming the argument and value.
    """
    image_size = _check_arguments(batch_size, image_size, validation_split, mixup_alpha, cutmix_alpha,
                                  random_erasing, crop_fraction, max_examples, one_hot, randaugment,
                                  max_pixels)
    if augment != "auto":
        aug.resolve_augment(augment, (0, 0))  # fail before touching the data
    if flip not in FLIPS:
        raise ValueError(f"Unknown flip mode. Received: flip={flip!r}. Expected one of {FLIPS}.")
    aug.train_transform(None, (1, 1), crop_padding=crop_padding, crop_pad_mode=crop_pad_mode)  # validates
    if seed is None:
        seed = 0 if deterministic else int.from_bytes(os.urandom(4), "little") >> 1
    source_obj = _open_source(source, data_dir=data_dir, train_split=train_split, eval_split=eval_split,
                              validation_split=validation_split, seed=seed, strict=strict,
                              max_pixels=max_pixels, offline=offline)
    size = image_size or source_obj.train.fixed_size or (224, 224)
    size = tuple(int(s) for s in size)
    augment = aug.resolve_augment(augment, size)
    if crop_fraction is None and augment == "imagenet":
        crop_fraction = IMAGENET_CROP_FRACTION
    num_classes = len(source_obj.class_names)
    plan = _Plan(
        augment=augment, image_size=size, crop_fraction=crop_fraction, seed=int(seed), cache=bool(cache),
        one_hot=bool(one_hot), mixup_alpha=float(mixup_alpha), cutmix_alpha=float(cutmix_alpha),
        random_erasing=float(random_erasing), randaugment=randaugment, num_classes=num_classes,
        input_context=input_context, max_examples=max_examples, flip=flip,
        crop_padding=crop_padding, crop_pad_mode=crop_pad_mode,
        per_replica_batch=(input_context.get_per_replica_batch_size(batch_size)
                           if input_context is not None else int(batch_size)))
    num_train = source_obj.train.num_examples
    if max_examples:
        num_train = min(num_train, int(max_examples))
    for name, value in (("resume_epoch", resume_epoch), ("steps_per_epoch", steps_per_epoch)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer))
                                  or value < (0 if name == "resume_epoch" else 1)):
            raise ValueError(f"`{name}` must be a {'non-negative' if name == 'resume_epoch' else 'positive'} "
                             f"int. Received: {name}={value!r}")
    plan = dataclasses.replace(plan, initial_step=int(resume_epoch or 0) * int(
        steps_per_epoch or max(1, num_train // int(batch_size))))
    budget = _CacheBudget(CACHE_MEMORY_FRACTION * _available_memory())
    options = tf.data.Options()
    options.deterministic = bool(deterministic)
    # With an input context we shard ourselves; otherwise tf.distribute shards
    # by element across workers (DATA: right for in-memory and tfds sources alike).
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.OFF if input_context is not None
        else tf.data.experimental.AutoShardPolicy.DATA)
    train_ds = _train_pipeline(source_obj.train, plan, budget).with_options(options)
    # Evaluation is always in order (the docstring's promise; predictions line up
    # with the files); it costs nothing worth saving.
    eval_options = tf.data.Options()
    eval_options.deterministic = True
    eval_options.experimental_distribute.auto_shard_policy = options.experimental_distribute.auto_shard_policy
    eval_ds = _eval_pipeline(source_obj.eval, plan, budget).with_options(eval_options)
    if not source_obj.eval.num_examples:
        log.warning("No evaluation examples for %s (validation_split=%s): eval_ds is empty.",
                    source_obj.name, validation_split)
    info = DatasetInfo(
        name=source_obj.name, num_classes=num_classes, class_names=list(source_obj.class_names),
        num_train=int(num_train), num_eval=int(source_obj.eval.num_examples), image_size=size,
        normalization=_normalization(source_obj), crop_fraction=crop_fraction)
    log.info("Dataset %s: %d train / %d eval examples, %d classes, %s px, augment=%s",
             info.name, info.num_train, info.num_eval, num_classes, size, augment)
    return train_ds, eval_ds, info
