"""tf.data input pipelines from tensorflow-datasets, image folders and numpy arrays.

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
    eval:  shard -> decode -> cache -> map(eval_resize, AUTOTUNE) -> batch -> prefetch

Caching holds decoded uint8 images and is skipped (with a log line) when the
estimate exceeds a share of the free memory. Augmentation is stateless and
seeded by (seed, element index): see `keras_resnet.augment`.
"""

import dataclasses
import hashlib
import logging
import math
import os
import re
import warnings

import numpy as np
import tensorflow as tf

from keras_resnet import augment as aug
from keras_resnet.preprocessing import NORMALIZATION_STATS

log = logging.getLogger(__name__)
AUTOTUNE = tf.data.AUTOTUNE

# Same default as the exported model's request limit (keras_resnet.export).
DEFAULT_MAX_PIXELS = 40_000_000
IMAGENET_CROP_FRACTION = 0.875
SHUFFLE_BUFFER = 20_000      # decoded or encoded examples; file names shuffle in full
CACHE_MEMORY_FRACTION = 0.4  # of the memory available when the pipeline is built
STATS_SAMPLE = 10_000        # images used to compute normalisation of unknown data

# Decoded by tf.io.decode_image (fast, C++); the exported model accepts the same.
TF_FORMATS = ("JPEG", "MPO", "PNG", "GIF", "BMP", "WEBP")
# Decoded by Pillow: TensorFlow cannot read them, or (palette BMP) reads them wrongly.
PIL_FORMATS = ("TIFF", "BMP", "PPM")
PIL_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr",
             "I", "I;16", "I;16L", "I;16B", "I;16N")
# Recognisable image files neither decoder reads: reported as unsupported, not "not an image".
OTHER_IMAGE_EXTENSIONS = (".heic", ".heif", ".avif", ".jxl", ".svg", ".psd", ".raw", ".cr2",
                          ".nef", ".arw", ".dng", ".ico", ".tga", ".pcx", ".eps", ".jp2")


# ---------------------------------------------------------------------------- info
def _plain(value):
    """Tuples to lists, numpy scalars to Python: JSON-ready."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


@dataclasses.dataclass
class DatasetInfo:
    """What the model and the trainer need to know about a pair of pipelines.

    Attributes:
        name: dataset name (tfds name, folder or file base name, "arrays").
        num_classes: number of classes.
        class_names: class names, index = label.
        num_train: training examples (global, before sharding).
        num_eval: evaluation examples.
        image_size: `(height, width)` of the pipeline's images.
        normalization: what to pass as `ResNet(preprocessing=...)`: a preset
            name or `{"mean": (r, g, b), "std": (r, g, b)}` on a 0-255 scale.
        crop_fraction: the eval geometry (`preprocessing.eval_resize`).
    """

    name: str
    num_classes: int
    class_names: list
    num_train: int
    num_eval: int
    image_size: tuple
    normalization: object
    crop_fraction: object = None

    def to_dict(self):
        """A JSON-serialisable dict (tuples become lists)."""
        return _plain(dataclasses.asdict(self))


@dataclasses.dataclass
class SourceInfo:
    """What a single source split holds (returned by the lower-level loaders).

    Attributes:
        name: dataset name.
        num_classes: number of classes.
        class_names: class names, index = label.
        num_examples: examples in the returned dataset.
        image_size: `(height, width)` when all images share it, else None.
        skipped: `(path, reason)` of each skipped bad file (image folders).
    """

    name: str
    num_classes: int
    class_names: list
    num_examples: int
    image_size: object = None
    skipped: tuple = ()

    def to_dict(self):
        return _plain(dataclasses.asdict(self))


@dataclasses.dataclass
class _Split:
    """One split before the pipeline: `(item, label)` examples plus how to decode them.

    `decode(item)` returns a uint8 `[H, W, 3]` image; items are images already
    (arrays, small tfds datasets), encoded bytes or `(path, use_pil)` pairs.
    """

    ds: tf.data.Dataset
    num_examples: int
    decode: object
    image_sizes: object = None   # list of (h, w) when known per example
    fixed_size: object = None    # (h, w) when every image has it
    in_memory: bool = False      # already a tensor in memory: caching buys nothing
    small_items: bool = False    # file names: cheap to shuffle in full
    may_fail: bool = False       # reads files at run time: skip rather than crash


@dataclasses.dataclass
class _Source:
    name: str
    class_names: list
    train: _Split
    eval: _Split
    normalization: object = None  # preset, stats dict, or None (compute from train)


def _identity_rgb(image):
    """uint8 image with 1 or 3 channels -> 3 channels."""
    image = tf.convert_to_tensor(image)
    if image.shape.rank == 3 and image.shape[-1] == 1:
        image = tf.image.grayscale_to_rgb(image)
    return image


# ---------------------------------------------------------------- tensorflow-datasets
def _tfds_data_dir(data_dir):
    """`data_dir`, else `$TFDS_DATA_DIR` (read now, not at tfds import), else tfds's default."""
    return os.fspath(data_dir) if data_dir else os.environ.get("TFDS_DATA_DIR") or None


def _tfds_base_name(name):
    return name.split("/")[0].split(":")[0]


def _tfds_builder(name, data_dir):
    """A prepared tfds builder; never downloads.

    Raises:
        ValueError: unknown name, or not prepared (saying where it looked).
    """
    import tensorflow_datasets as tfds

    root = _tfds_data_dir(data_dir)
    try:
        builder = tfds.builder(name, data_dir=root)
    except Exception as e:  # DatasetNotFoundError, bad config or version
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"Unknown tensorflow-datasets name (and not an existing folder or .npz file). "
                         f"Received: source={name!r}. tfds says: {first_line}") from None
    if not builder.is_prepared():
        raise ValueError(
            f"The tensorflow-datasets dataset {name!r} is not prepared: looked in {builder.data_dir!r} "
            f"(data_dir={data_dir!r}, TFDS_DATA_DIR={os.environ.get('TFDS_DATA_DIR')!r}). keras_resnet "
            "never downloads. Point `data_dir=` (CLI: --data-dir) or TFDS_DATA_DIR at a folder holding "
            f"{_tfds_base_name(name)}/<version>/, or prepare it once "
            f"with network access: tfds.builder({name!r}, data_dir=...).download_and_prepare().")
    return builder


def _tfds_keys(builder):
    keys = builder.info.supervised_keys
    if not keys or len(keys) != 2:
        raise ValueError(f"The tfds dataset has no (image, label) supervised keys. "
                         f"Received: source={builder.name!r}")
    return keys


def _tfds_split(name, builder, split, data_dir, *, argument="split", shuffle_files=False, seed=0,
                keep_encoded=False):
    """A `_Split` of a prepared tfds dataset (`download=False`)."""
    import tensorflow_datasets as tfds

    image_key, _ = _tfds_keys(builder)
    try:
        num = int(builder.info.splits[split].num_examples)
    except (KeyError, ValueError, AssertionError) as e:
        raise ValueError(f"Unknown split for {builder.name!r}. Received: {argument}={split!r}. "
                         f"Available: {list(builder.info.splits.keys())}") from e
    shape = builder.info.features[image_key].shape
    fixed = tuple(int(s) for s in shape[:2]) if None not in shape[:2] else None
    encoded = keep_encoded and fixed is None
    ds = tfds.load(
        name, split=split, data_dir=_tfds_data_dir(data_dir), download=False, try_gcs=False,
        as_supervised=True, shuffle_files=shuffle_files,
        # No tfds autocache: we cache decoded images ourselves; two caches would double memory.
        read_config=tfds.ReadConfig(shuffle_seed=seed, try_autocache=False),
        # Large variable-size images stay encoded until after the shuffle: a
        # shuffle buffer of JPEG bytes is ~10x smaller than of pixels.
        decoders={image_key: tfds.decode.SkipDecoding()} if encoded else None)
    decode = _decode_bytes if encoded else _identity_rgb
    return _Split(ds.map(lambda x, y: (x, tf.cast(y, tf.int32))), num, decode, fixed_size=fixed)


def _tfds_class_names(builder):
    label = builder.info.features[_tfds_keys(builder)[1]]
    names = getattr(label, "names", None)
    return list(names) if names else [str(i) for i in range(label.num_classes)]


def load_tfds(name, split, data_dir=None):
    """One split of a prepared tensorflow-datasets dataset; never downloads.

    Args:
        name: tfds name, e.g. "cifar10" or "imagenette/160px".
        split: split string; slicing such as "train[:90%]" passes through.
        data_dir: tfds data directory; default `$TFDS_DATA_DIR`, then tfds's own.

    Returns:
        `(dataset, SourceInfo)`; examples are `(uint8 [H, W, 3], int32 label)`.

    Raises:
        ValueError: unknown name or split, or the dataset is not prepared.
    """
    builder = _tfds_builder(name, data_dir)
    part = _tfds_split(name, builder, split, data_dir)
    names = _tfds_class_names(builder)
    ds = part.ds.map(lambda x, y: (part.decode(x), y), num_parallel_calls=AUTOTUNE)
    return ds, SourceInfo(name, len(names), names, part.num_examples, part.fixed_size)


def _tfds_source(name, data_dir, train_split, eval_split, validation_split, seed):
    builder = _tfds_builder(name, data_dir)
    splits = list(builder.info.splits.keys())
    train_split = train_split or "train"
    if eval_split is None:
        eval_split = next((s for s in ("test", "validation") if s in splits), None)
        if eval_split is None and validation_split:  # train only (tf_flowers...): hold out its tail
            keep = int(round(100 * (1 - validation_split)))
            train_split, eval_split = f"{train_split}[:{keep}%]", f"{train_split}[{keep}%:]"
    train = _tfds_split(name, builder, train_split, data_dir, argument="train_split", shuffle_files=True,
                        seed=seed, keep_encoded=True)
    if eval_split is None:  # nothing to hold out from: an empty evaluation set
        evals = dataclasses.replace(train, ds=train.ds.take(0), num_examples=0)
    else:
        evals = _tfds_split(name, builder, eval_split, data_dir, argument="eval_split", keep_encoded=True)
    base = _tfds_base_name(name)
    preset = base if base in ("cifar10", "cifar100") else (
        "imagenet" if base.startswith("imagenet") or base in ("imagenette", "imagewang") else None)
    return _Source(name, _tfds_class_names(builder), train, evals, normalization=preset)


# ---------------------------------------------------------------------- image files
class BadImageError(ValueError):
    """A file in an image folder that cannot be used (the message says why)."""


@dataclasses.dataclass(frozen=True)
class ImageFile:
    """A validated image: where it is, its class, its size and which decoder reads it."""

    path: str
    label: int
    height: int
    width: int
    use_pil: bool = False


def _decode_bytes(data):
    """Encoded JPEG/PNG/GIF/BMP/WebP bytes -> uint8 RGB (grey expanded, alpha dropped,
    16-bit PNG scaled, CMYK converted), as the exported model decodes requests."""
    image = tf.io.decode_image(data, channels=3, expand_animations=False, dtype=tf.uint8)
    image.set_shape((None, None, 3))
    return image


def _pil_rgb(path):
    """Decodes a Pillow-only file (TIFF, palette BMP, PPM) to uint8 RGB; alpha dropped
    and 16-bit scaled, like the TensorFlow decoder does for the other formats."""
    from PIL import Image

    path = path.item() if isinstance(path, np.ndarray) else path  # numpy_function passes a 0-d array
    path = path.decode() if isinstance(path, bytes) else path
    with Image.open(path) as im:
        if im.mode.startswith("I"):  # 16/32-bit integer grey: scale 0-65535 to 0-255
            grey = np.asarray(im, dtype=np.float64)
            im = Image.fromarray(np.clip(np.round(grey / 257.0), 0, 255).astype(np.uint8))
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def _decode_file(item):
    """`(path, use_pil)` -> uint8 RGB `[H, W, 3]`."""
    path, use_pil = item

    def with_pil():
        return tf.numpy_function(_pil_rgb, [path], tf.uint8, stateful=False)

    image = tf.cond(use_pil, with_pil, lambda: _decode_bytes(tf.io.read_file(path)))
    image.set_shape((None, None, 3))
    return image


def inspect_image(path, max_pixels=DEFAULT_MAX_PIXELS, label=0):
    """Checks one file from its header only (no pixels are decoded).

    Returns:
        An `ImageFile`.

    Raises:
        BadImageError: empty, not an image, unsupported format or mode, or more
            than `max_pixels` pixels.
    """
    from PIL import Image, UnidentifiedImageError

    if os.path.getsize(path) == 0:
        raise BadImageError("empty file")
    with warnings.catch_warnings():
        # Our own limit applies below; Pillow's bomb *warning* would be a second line.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as im:  # lazy: parses the header, decodes nothing
                fmt, mode, (width, height) = im.format, im.mode, im.size
        except UnidentifiedImageError:
            ext = os.path.splitext(path)[1].lower()
            if ext in OTHER_IMAGE_EXTENSIONS:
                raise BadImageError(f"unsupported image format {ext!r}") from None
            raise BadImageError("not an image (no known image header)") from None
        except Image.DecompressionBombError:
            raise BadImageError(f"header announces more than {2 * Image.MAX_IMAGE_PIXELS:,} pixels, "
                                f"over max_pixels={max_pixels:,}; rejected before decoding") from None
        except (OSError, SyntaxError, ValueError) as e:
            raise BadImageError(f"unreadable image header ({e})") from None
    if width * height > max_pixels:
        raise BadImageError(f"{width}x{height} = {width * height:,} pixels exceeds "
                            f"max_pixels={max_pixels:,}; rejected before decoding")
    if width < 1 or height < 1:
        raise BadImageError(f"empty image ({width}x{height})")
    if fmt in TF_FORMATS and not (fmt == "BMP" and mode not in ("RGB", "RGBA")):
        return ImageFile(path, label, height, width, use_pil=False)
    if fmt in PIL_FORMATS and mode in PIL_MODES:
        return ImageFile(path, label, height, width, use_pil=True)
    raise BadImageError(f"unsupported image format {fmt} (mode {mode}); supported: "
                        "JPEG, PNG, GIF, BMP, WebP, TIFF, PPM")


def _tf_error_text(error):
    """The useful part of a TensorFlow op error ('{{function_node ...}} msg [Op:X]')."""
    text = getattr(error, "message", None) or str(error)
    text = re.sub(r"\{\{[^}]*\}\}\s*", "", text).split("[Op:")[0].strip()
    return text.splitlines()[0] if text else type(error).__name__


def _verify_decodes(files):
    """Fully decodes each file once, in parallel, with the pipeline's own decoder.

    Returns:
        `(good, failures, channel_sums)`: the files that decode, `(file, reason)`
        for those that do not, and per good file `[sum, sum of squares, pixels]`
        per channel (float64 `[n, 2, 3]` plus counts) for normalisation stats.
    """
    if not files:
        return [], [], (np.zeros((0, 2, 3)), np.zeros((0,)))
    paths = [f.path for f in files]
    use_pil = [f.use_pil for f in files]

    def stats(index, path, pil):
        image = tf.cast(_decode_file((path, pil)), tf.float32)
        flat = tf.reshape(image, (-1, 3))
        return index, tf.stack([tf.reduce_sum(flat, 0), tf.reduce_sum(flat * flat, 0)]), tf.shape(flat)[0]

    ds = (tf.data.Dataset.from_tensor_slices((tf.range(len(files)), paths, use_pil))
          .map(stats, num_parallel_calls=AUTOTUNE, deterministic=False)
          .ignore_errors())  # the indices that come out are the files that decode
    sums, counts = np.zeros((len(files), 2, 3)), np.zeros((len(files),))
    decoded = np.zeros(len(files), bool)
    for index, s, count in ds.as_numpy_iterator():
        decoded[index], sums[index], counts[index] = True, s, count
    good = [f for f, ok in zip(files, decoded) if ok]
    failures = [(f, _decode_failure(f)) for f, ok in zip(files, decoded) if not ok]
    return good, failures, (sums[decoded], counts[decoded])


def _decode_failure(file):
    """Why a file failed to decode (re-run eagerly, once, for the message)."""
    try:
        _decode_file((tf.constant(file.path), tf.constant(file.use_pil)))
    except Exception as e:  # InvalidArgumentError, UnknownError from Pillow, ...
        return f"cannot be decoded: {_tf_error_text(e)}"
    return "cannot be decoded"


def _class_folders(path):
    if not os.path.exists(path):
        raise ValueError(f"Image folder not found. Received: source={path!r}")
    if not os.path.isdir(path):
        raise ValueError(f"Expected a folder with one sub-folder per class, a .npz file or a tfds "
                         f"name. Received: source={path!r}")
    names = sorted(d for d in os.listdir(path)
                   if os.path.isdir(os.path.join(path, d)) and not d.startswith("."))
    if not names:
        raise ValueError("The image folder has no class sub-folders (expected "
                         f"<folder>/<class>/<image>). Received: source={path!r}")
    if len(names) < 2:
        raise ValueError(f"The image folder has a single class ({names[0]!r}); classification needs "
                         f"at least two class sub-folders. Received: source={path!r}")
    return names


def _candidate_files(path, class_names):
    """`(path, label)` of every non-hidden file under each class folder (recursive, sorted)."""
    out = []
    for label, name in enumerate(class_names):
        for root, dirs, files in os.walk(os.path.join(path, name)):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            out += [(os.path.join(root, f), label) for f in sorted(files) if not f.startswith(".")]
    return out


def _skip(path, reason, strict, skipped):
    if strict:
        raise ValueError(f"Bad image file {path!r}: {reason}. (strict=True raises instead of skipping.)")
    log.warning("Skipping %s: %s", path, reason)
    skipped.append((path, reason))


def scan_image_folder(path, *, strict=False, max_pixels=DEFAULT_MAX_PIXELS):
    """Lists and validates `path/<class>/<image>`; each bad file is skipped with one warning.

    Every file is checked from its header first (empty, not an image,
    unsupported format, more than `max_pixels` pixels: rejected before any
    decoding), then decoded once, in parallel, by the decoder the pipeline uses.

    Args:
        path: the folder.
        strict: raise on the first bad file instead of skipping it.
        max_pixels: larger images are rejected from their header.

    Returns:
        `(files, class_names, skipped, channel_sums)`; `files` are `ImageFile`s in
        listing order, `skipped` `(path, reason)` pairs, `channel_sums` as in
        `_verify_decodes`.

    Raises:
        ValueError: missing path, not a folder, no or a single class folder, no
            readable image; with `strict=True` the first bad file, named.
    """
    path = os.fspath(path)
    if not isinstance(max_pixels, int) or max_pixels < 1:
        raise ValueError(f"`max_pixels` must be a positive int. Received: max_pixels={max_pixels!r}")
    class_names = _class_folders(path)
    candidates = _candidate_files(path, class_names)
    headers, skipped = [], []
    for fpath, label in candidates:
        try:
            headers.append(inspect_image(fpath, max_pixels, label))
        except BadImageError as e:
            _skip(fpath, str(e), strict, skipped)
    files, failures, sums = _verify_decodes(headers)
    for file, reason in failures:
        _skip(file.path, reason, strict, skipped)
    if skipped:
        log.warning("Skipped %d bad file(s) of %d in %s; %d images remain.",
                    len(skipped), len(candidates), path, len(files))
    if not files:
        raise ValueError(f"No readable images in the class folders. Received: source={path!r}")
    for label, name in enumerate(class_names):
        if not any(f.label == label for f in files):
            log.warning("Class %r has no readable images in %s.", name, path)
    return files, class_names, skipped, sums


def _split_files(files, validation_split):
    """Stratified hold-out: per class, the files whose path hash is lowest.

    The split depends on the class folder and file names only (not on where
    the dataset lives, on `seed`, nor on listing order), so evaluation and resumed runs see the same held-out set, and
    adding files moves few others.
    """
    is_eval = np.zeros(len(files), bool)
    if validation_split:
        by_class = {}
        for i, f in enumerate(files):
            by_class.setdefault(f.label, []).append(i)
        for members in by_class.values():
            count = int(round(len(members) * validation_split))
            if len(members) > 1:
                count = min(max(count, 1), len(members) - 1)  # >= 1 held out, >= 1 trained on
            else:
                count = 0
            # Hash the class folder and file name, not the absolute path: moving
            # or copying the dataset must not change which files are held out.
            order = sorted(members, key=lambda i: hashlib.sha1(
                "/".join(files[i].path.replace(os.sep, "/").split("/")[-2:]).encode()).hexdigest())
            is_eval[order[:count]] = True
    return is_eval


def _files_split(files, *, seed=None):
    """A `_Split` of `ImageFile`s (decoded at run time); permuted by `seed` when given."""
    if seed is not None:
        files = [files[i] for i in np.random.default_rng(seed).permutation(len(files))]
    sizes = [(f.height, f.width) for f in files]
    common = sizes[0] if sizes and all(s == sizes[0] for s in sizes) else None
    ds = tf.data.Dataset.from_tensor_slices((
        (np.array([f.path for f in files], np.str_), np.array([f.use_pil for f in files], bool)),
        np.array([f.label for f in files], np.int32)))
    return _Split(ds, len(files), _decode_file, image_sizes=sizes, fixed_size=common,
                  small_items=True, may_fail=True)


def _channel_stats(sums, counts):
    """`{"mean", "std"}` (0-255 scale, 3 decimals) from per-image channel sums."""
    total = counts.sum()
    mean = sums[:, 0].sum(0) / total
    std = np.sqrt(np.maximum(sums[:, 1].sum(0) / total - mean ** 2, 0.0))
    # A std under one grey level means near-constant data; dividing by it would blow up.
    return {"mean": tuple(round(float(m), 3) for m in mean),
            "std": tuple(round(float(max(s, 1.0)), 3) for s in std)}


def from_directory(path, validation_split=0.0, seed=0, *, subset=None, strict=False,
                   max_pixels=DEFAULT_MAX_PIXELS):
    """Images from a folder with one sub-folder per class (Keras's layout).

    Args:
        path: the folder; class names are the sorted sub-folder names.
        validation_split: fraction held out per class (chosen from file-name
            hashes: independent of `seed`).
        seed: permutes the training files (None: listing order).
        subset: None (every file), "training", "validation" or "both".
        strict: raise on the first bad file instead of skipping it.
        max_pixels: images with more pixels are rejected from their header.

    Returns:
        `(dataset, SourceInfo)` with `(uint8 [H, W, 3], int32 label)` examples;
        for `subset="both"`, `[(train_ds, train_info), (val_ds, val_info)]`.

    Raises:
        ValueError: see `scan_image_folder`; a bad `subset`/`validation_split` pair.
    """
    if subset not in (None, "training", "validation", "both"):
        raise ValueError(f"Invalid subset. Received: subset={subset!r}. "
                         "Expected None, 'training', 'validation' or 'both'.")
    if not 0 <= validation_split < 1 or (subset in ("validation", "both") and not validation_split):
        raise ValueError(f"`validation_split` must be in (0, 1) with subset={subset!r} (0 allowed "
                         f"without a validation subset). Received: validation_split={validation_split!r}")
    files, names, skipped, _ = scan_image_folder(path, strict=strict, max_pixels=max_pixels)
    is_eval = _split_files(files, validation_split if subset else 0.0)
    name = os.path.basename(os.path.normpath(os.fspath(path)))

    def build(chosen, order_seed):
        part = _files_split(chosen, seed=order_seed)
        ds = part.ds.map(lambda item, y: (part.decode(item), y), num_parallel_calls=AUTOTUNE)
        return ds.ignore_errors(log_warning=True), SourceInfo(
            name, len(names), names, part.num_examples, part.fixed_size, tuple(skipped))

    train = build([f for f, e in zip(files, is_eval) if not e], seed)
    val = build([f for f, e in zip(files, is_eval) if e], None)
    return {None: train, "training": train, "validation": val, "both": [train, val]}[subset]


def _folder_source(path, validation_split, seed, strict, max_pixels):
    files, names, _, (sums, counts) = scan_image_folder(path, strict=strict, max_pixels=max_pixels)
    is_eval = _split_files(files, validation_split)
    train = _files_split([f for f, e in zip(files, is_eval) if not e], seed=seed)
    evals = _files_split([f for f, e in zip(files, is_eval) if e])
    stats = _channel_stats(sums[~is_eval], counts[~is_eval])  # computed by the decode check
    return _Source(os.path.basename(os.path.normpath(path)), names, train, evals, normalization=stats)


# -------------------------------------------------------------------------- arrays
def _check_arrays(x, y, where="source"):
    """Validated `(uint8 [N, H, W, 3], int64 [N])` from user arrays.

    Accepts uint8 or float images (floats in [0, 1] are scaled to 0-255),
    `[N, H, W]` or 1/3/4 channels, and integer or one-hot labels. The label
    range is checked separately (`_check_labels`), once the class count is known.
    """
    x, y = np.asarray(x), np.asarray(y)
    if y.ndim == 2 and y.shape[1] > 1:  # one-hot / soft labels
        y = np.argmax(y, -1)
    y = y.reshape(-1) if y.ndim == 2 and y.shape[1] == 1 else y
    if len(x) != len(y):
        raise ValueError(f"Images and labels differ in length. Received: {where} with "
                         f"len(x)={len(x)}, len(y)={len(y)}")
    if len(x) == 0:
        raise ValueError(f"No examples. Received: {where} with len(x)=0")
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3, 4):
        raise ValueError(f"Images must be [N, H, W] or [N, H, W, C] with C in (1, 3, 4). "
                         f"Received: {where} with x.shape={x.shape}")
    if y.ndim != 1 or not (np.issubdtype(y.dtype, np.integer)
                           or (np.issubdtype(y.dtype, np.floating) and np.all(np.mod(y, 1) == 0))):
        raise ValueError(f"Labels must be integers (or one-hot rows). Received: {where} with "
                         f"y.dtype={y.dtype}, y.shape={y.shape}")
    if x.dtype != np.uint8:
        x = _to_uint8(x, where)
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, -1)
    elif x.shape[-1] == 4:
        x = x[..., :3]  # drop alpha, as the image decoders do
    return np.ascontiguousarray(x), y.astype(np.int64)


def _check_labels(y, num_classes, where="source"):
    """int32 labels, all in `[0, num_classes)`."""
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(f"Labels must lie in [0, num_classes={num_classes}). Received: {where} with "
                         f"labels from {int(y.min())} to {int(y.max())}")
    return y.astype(np.int32)


def _to_uint8(x, where):
    x = x.astype(np.float32)
    low, high = float(x.min()), float(x.max())
    if low < 0 or high > 255:
        raise ValueError(f"Pixel values must be in [0, 1] or [0, 255]. Received: {where} with "
                         f"x in [{low}, {high}]")
    if high <= 1.0:
        x = x * 255.0  # [0, 1] floats: the pipelines and models work on 0-255
    return np.round(x).astype(np.uint8)


def _arrays_split(x, y):
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    return _Split(ds, len(x), _identity_rgb, fixed_size=tuple(x.shape[1:3]), in_memory=True)


def _array_stats(x):
    """Normalisation stats from up to `STATS_SAMPLE` images, one vectorised pass."""
    if len(x) > STATS_SAMPLE:
        x = x[np.sort(np.random.default_rng(0).choice(len(x), STATS_SAMPLE, replace=False))]
    flat = x.reshape(-1, 3).astype(np.float64)
    sums = np.stack([flat.sum(0), (flat * flat).sum(0)])[None]
    return _channel_stats(sums, np.array([len(flat)], np.float64))


def from_arrays(x, y, num_classes=None, class_names=None, name="arrays"):
    """Examples from numpy arrays.

    Args:
        x: images `[N, H, W(, C)]`, uint8 or float (floats in [0, 1] are scaled).
        y: integer labels `[N]` (or one-hot rows).
        num_classes: default `len(class_names)`, else `max(y) + 1`.
        class_names: optional names.

    Returns:
        `(dataset, SourceInfo)` with `(uint8 [H, W, 3], int32 label)` examples.

    Raises:
        ValueError: lengths differ, labels outside `[0, num_classes)`, bad shapes or values.
    """
    if num_classes is None and class_names is not None:
        num_classes = len(class_names)
    x, y = _check_arrays(x, y)
    num_classes = num_classes or int(y.max()) + 1
    y = _check_labels(y, num_classes)
    names = [str(c) for c in class_names] if class_names is not None else [str(i) for i in range(num_classes)]
    split = _arrays_split(x, y)
    return split.ds, SourceInfo(name, num_classes, names, len(x), tuple(x.shape[1:3]))


def load_npz(path):
    """Reads an `.npz` into `{"train": (x, y)[, "test": (x, y)][, "class_names": [...]]}`.

    Accepted keys: `x_train, y_train[, x_test, y_test]` or `x, y`; optional `class_names`.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"File not found. Received: source={path!r}")
    try:
        f = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"Not a readable .npz file ({e}). Received: source={path!r}") from None
    with f:
        keys = set(f.files)
        out = {}
        if {"x_train", "y_train"} <= keys:
            out["train"] = (f["x_train"], f["y_train"])
            if {"x_test", "y_test"} <= keys:
                out["test"] = (f["x_test"], f["y_test"])
        elif {"x", "y"} <= keys:
            out["train"] = (f["x"], f["y"])
        else:
            raise ValueError("The .npz file must hold x_train and y_train (optionally x_test, y_test) or "
                             f"x and y. Received: source={path!r} with keys {sorted(keys)}")
        if "class_names" in keys:
            out["class_names"] = [str(c) for c in f["class_names"]]
    return out


def from_npz(path, split="train"):
    """One split (`"train"` or `"test"`) of an `.npz` file, like `from_arrays`."""
    arrays = load_npz(path)
    if split not in arrays or split == "class_names":
        raise ValueError(f"Unknown split for {path!r}. Received: split={split!r}. "
                         f"Available: {[k for k in arrays if k != 'class_names']}")
    names = arrays.get("class_names")
    return from_arrays(*arrays[split], class_names=names,
                       name=os.path.splitext(os.path.basename(os.fspath(path)))[0])


def _arrays_source(arrays, name, validation_split):
    """`{"train": (x, y)[, "test": (x, y)][, "class_names": ...]}` -> `_Source`."""
    if not isinstance(arrays, dict) or "train" not in arrays:
        raise ValueError("An arrays dict needs a 'train' entry (and optionally 'test', "
                         f"'class_names'). Received: source keys {sorted(arrays) if isinstance(arrays, dict) else arrays!r}")
    for key in ("train", "test"):
        if key in arrays and not (isinstance(arrays[key], (tuple, list)) and len(arrays[key]) == 2):
            raise ValueError(f"source[{key!r}] must be an (x, y) pair. Received: {type(arrays[key]).__name__}")
    names = arrays.get("class_names")
    parts = {k: _check_arrays(*arrays[k], where=f"source[{k!r}]") for k in ("train", "test") if k in arrays}
    # Default: the union of both splits (a class absent from train is still a class).
    num_classes = len(names) if names is not None else 1 + max(int(y.max()) for _, y in parts.values())
    x, y = parts["train"][0], _check_labels(parts["train"][1], num_classes, "source['train']")
    if "test" in parts:
        x_eval, y_eval = parts["test"][0], _check_labels(parts["test"][1], num_classes, "source['test']")
    else:
        is_eval = _stratified_holdout(y, validation_split)
        x, y, x_eval, y_eval = x[~is_eval], y[~is_eval], x[is_eval], y[is_eval]
    names = list(names) if names is not None else [str(i) for i in range(num_classes)]
    return _Source(name, names, _arrays_split(x, y), _arrays_split(x_eval, y_eval),
                   normalization=_array_stats(x))


def _stratified_holdout(y, fraction):
    """Per class, a fixed pseudo-random `fraction` of the indices (seed-independent,
    so evaluation sees the same held-out set whatever the training seed)."""
    rng = np.random.default_rng(0)
    is_eval = np.zeros(len(y), bool)
    if not fraction:
        return is_eval
    for label in np.unique(y):
        members = np.flatnonzero(y == label)
        count = min(max(int(round(len(members) * fraction)), 1), len(members) - 1) if len(members) > 1 else 0
        is_eval[rng.permutation(members)[:count]] = True
    return is_eval


# ---------------------------------------------------------------------- the sources
def _open_source(source, *, data_dir, train_split, eval_split, validation_split, seed, strict, max_pixels):
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
    if os.path.exists(path) or os.path.isabs(path) or os.fspath(source).startswith((".", "~")):
        return _folder_source(path, validation_split, seed, strict, max_pixels)
    # Anything else is a tfds name ("imagenette/160px" has a slash too); its
    # error says that no such folder exists either.
    return _tfds_source(source, data_dir, train_split, eval_split, validation_split, seed)


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
def _available_memory():
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not POSIX: assume a modest machine
        return 8 << 30


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
    if nbytes is None or nbytes > budget:
        log.info("Not caching the %s images: %s exceeds the cache budget of %.1f GB.", what,
                 "their unknown size" if nbytes is None else f"~{nbytes / 2**30:.1f} GB", budget / 2**30)
        return False
    return True


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
        ds = ds.map(lambda item, y: (prepare(decode(item)), y), num_parallel_calls=AUTOTUNE)
        if split.may_fail:
            ds = ds.ignore_errors(log_warning=True)
        ds = ds.cache()
    # Shuffle the endless stream with a fixed seed and no per-iterator
    # reshuffle: the order is a pure function of the seed however many
    # iterators Keras or tf.distribute open (a reshuffling dataset advances
    # its seed with each new iterator); the buffer still reorders every epoch.
    buffer = num if (split.small_items and not cached) else min(num, SHUFFLE_BUFFER)
    ds = ds.repeat().shuffle(max(buffer, 1), seed=plan.seed, reshuffle_each_iteration=False)
    transform = aug.train_transform(
        plan.augment, plan.image_size, crop_fraction=plan.crop_fraction,
        random_erasing_prob=plan.random_erasing, randaugment=plan.randaugment)
    labels = _labels(plan.num_classes, plan.one_hot)
    base_seed = _seed_for(plan.seed, 0)

    def train_map(index, example):
        item, y = example
        image = item if cached else prepare(decode(item))
        seed = tf.random.experimental.stateless_fold_in(base_seed, index)
        return transform(image, seed), labels(y)

    # The counter is assigned before the parallel map: each example's
    # randomness is fixed even when the map's output order is not.
    ds = ds.enumerate().map(train_map, num_parallel_calls=AUTOTUNE)
    if split.may_fail and not cached:
        ds = ds.ignore_errors(log_warning=True)  # a file changed since it was checked
    ds = ds.batch(plan.per_replica_batch, drop_remainder=True)
    if plan.mixup_alpha or plan.cutmix_alpha:
        mix_seed = _seed_for(plan.seed, 1)
        ds = ds.enumerate().map(
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
        ds = ds.ignore_errors(log_warning=True)
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
                   max_examples=None, strict=False, max_pixels=DEFAULT_MAX_PIXELS):
    """Training and evaluation `tf.data` pipelines for `model.fit`.

    Args:
        source: a tfds name ("cifar10", "imagenette/160px"); an image folder
            (one sub-folder per class); an `.npz` path; `(x, y)` arrays; or
            `{"train": (x, y), "test": (x, y), "class_names": [...]}`.
        batch_size: the global batch size; per replica with `input_context`.
        image_size: `(h, w)` or an int; default: the images' own size when they
            all share one, else 224.
        augment: "cifar", "imagenet", None, or "auto" ("cifar" up to 64 px).
        data_dir: tfds data directory (default `$TFDS_DATA_DIR`).
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
    if seed is None:
        seed = 0 if deterministic else int.from_bytes(os.urandom(4), "little") >> 1
    source_obj = _open_source(source, data_dir=data_dir, train_split=train_split, eval_split=eval_split,
                              validation_split=validation_split, seed=seed, strict=strict,
                              max_pixels=max_pixels)
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
        input_context=input_context, max_examples=max_examples,
        per_replica_batch=(input_context.get_per_replica_batch_size(batch_size)
                           if input_context is not None else int(batch_size)))
    budget = CACHE_MEMORY_FRACTION * _available_memory()
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
    num_train = source_obj.train.num_examples
    if max_examples:
        num_train = min(num_train, int(max_examples))
    info = DatasetInfo(
        name=source_obj.name, num_classes=num_classes, class_names=list(source_obj.class_names),
        num_train=int(num_train), num_eval=int(source_obj.eval.num_examples), image_size=size,
        normalization=_normalization(source_obj), crop_fraction=crop_fraction)
    log.info("Dataset %s: %d train / %d eval examples, %d classes, %s px, augment=%s",
             info.name, info.num_train, info.num_eval, num_classes, size, augment)
    return train_ds, eval_ds, info
