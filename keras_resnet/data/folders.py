"""Image-folder sources (one sub-folder per class): scanning, checking and decoding files.

Every file is checked before training starts (format, mode, the pixel limit
shared with the exported model's request guard), so a bad file is named in a
clear error (strict) or skipped and listed (lenient), never a crash mid-epoch.
"""

import dataclasses
import hashlib
import logging
import os
import re
import warnings

import numpy as np
import tensorflow as tf

from keras_resnet.data.source import (
    AUTOTUNE, SourceInfo, _Source, _Split, _channel_stats, _decode_bytes, _drop_unreadable)
from keras_resnet.image_guard import DEFAULT_MAX_PIXELS, header_pixels, refused_bmp

log = logging.getLogger("keras_resnet.data")

# Decoded by tf.io.decode_image (fast, C++); the exported model accepts the same.
TF_FORMATS = ("JPEG", "MPO", "PNG", "GIF", "BMP", "WEBP")
# Decoded by Pillow: TensorFlow cannot read them, or (palette BMP, bitfield BMP with
# RGBA/ABGR masks) reads them wrongly.
PIL_FORMATS = ("TIFF", "BMP", "PPM")
PIL_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr",
             "I", "I;16", "I;16L", "I;16B", "I;16N")
# Recognisable image files neither decoder reads: reported as unsupported, not "not an image".
OTHER_IMAGE_EXTENSIONS = (".heic", ".heif", ".avif", ".jxl", ".svg", ".psd", ".raw", ".cr2",
                          ".nef", ".arw", ".dng", ".ico", ".tga", ".pcx", ".eps", ".jp2")


# ---------------------------------------------------------------------------- info


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


def _pil_rgb(path):
    """Decodes a Pillow-only file (TIFF, palette BMP, PPM) to uint8 RGB; alpha dropped
    and 16-bit scaled, like the TensorFlow decoder does for the other formats."""
    from PIL import Image

    with Image.open(_as_str(path)) as im:  # numpy_function passes a 0-d bytes array
        if im.mode.startswith("I"):  # 16/32-bit integer grey: scale 0-65535 to 0-255
            grey = np.asarray(im, dtype=np.float64)
            im = Image.fromarray(np.clip(np.round(grey / 257.0), 0, 255).astype(np.uint8))
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


# Files named as unreadable at run time, so that each is logged once, not every epoch.
_UNREADABLE = set()
_EMPTY = np.zeros((0, 0, 3), np.uint8)


def _gone(path, error):
    """Whether `error` means the file itself cannot be read any more (deleted,
    an unmounted share, permissions): OS errors carry an errno, a decoder's do not."""
    if not isinstance(error, OSError) or error.errno is None:
        return False
    if path not in _UNREADABLE:
        _UNREADABLE.add(path)
        log.warning("Skipping %s: it cannot be read any more (%s).", path, error.strerror or error)
    return True


def _as_str(path):
    path = path.item() if isinstance(path, np.ndarray) else path
    return path.decode() if isinstance(path, bytes) else path


def _note_unreadable(path):
    """Names a file that could not be read at run time (once); runs only on failure."""
    path = _as_str(path)
    if path not in _UNREADABLE:
        _UNREADABLE.add(path)
        reason = "gone" if not os.path.exists(path) else "unreadable or changed since the check"
        log.warning("Skipping %s: it cannot be read any more (%s).", path, reason)
    return True


def _read_or_nothing(path):
    """A file's bytes, or b"" when reading fails (the file is then named once in the log).

    Not a bare `tf.io.read_file`: its NotFound error could only be dropped by
    `ignore_errors` on the whole stream, which drops every element forever when
    a whole share disappears. A one-element dataset's own `ignore_errors`
    turns the failure into an empty result that `pipeline._drop_unreadable`
    counts and bounds; all in TensorFlow, no Python on the normal path.
    """
    data = (tf.data.Dataset.from_tensors(path).map(tf.io.read_file).ignore_errors()
            .concatenate(tf.data.Dataset.from_tensors(tf.constant(b""))).take(1).get_single_element())
    noted = tf.cond(tf.strings.length(data) > 0, lambda: tf.constant(True),
                    lambda: tf.numpy_function(_note_unreadable, [path], tf.bool, stateful=True))
    with tf.control_dependencies([noted]):
        return tf.identity(data)


def _pil_rgb_or_nothing(path):
    """`_pil_rgb`, or an empty image (logged once) when the file cannot be read any more."""
    try:
        return _pil_rgb(path)
    except OSError as e:
        if _gone(_as_str(path), e):
            return _EMPTY
        raise


def _decode_file(item):
    """`(path, use_pil)` -> uint8 RGB `[H, W, 3]`; `[0, 0, 3]` when the file
    cannot be read any more (a valid image has at least one pixel)."""
    path, use_pil = item

    def with_pil():
        return tf.numpy_function(_pil_rgb_or_nothing, [path], tf.uint8, stateful=False)

    def with_tf():
        data = _read_or_nothing(path)
        return tf.cond(tf.strings.length(data) > 0, lambda: _decode_bytes(data),
                       lambda: tf.constant(_EMPTY))

    image = tf.cond(use_pil, with_pil, with_tf)
    image.set_shape((None, None, 3))
    return image


def _gif_pixels(path):
    """Pixels a GIF's frames announce (every frame, as the serving guard counts them)."""
    with open(path, "rb") as f:
        data = f.read()
    return float(header_pixels(tf.constant(data)).numpy())


def _tf_misreads_bmp(path):
    """Whether TensorFlow would decode this BMP wrongly (RGBA/ABGR bitfield masks,
    16-bit, ...): the serving guard's own header check, so that training and
    serving draw the line in the same place; those files go to Pillow."""
    with open(path, "rb") as f:
        head = f.read(4096)  # the header, the masks and a palette
    return refused_bmp(head)


def load_image(path, max_pixels=DEFAULT_MAX_PIXELS):
    """One image file as uint8 RGB `[H, W, 3]`, checked from its header first.

    Raises:
        BadImageError: what `inspect_image` refuses (not an image, unsupported,
            over `max_pixels`), or data the decoder rejects.
    """
    info = inspect_image(path, max_pixels=max_pixels)
    try:
        if info.use_pil:
            return _pil_rgb(path)
        return _decode_bytes(tf.io.read_file(path)).numpy()
    except (tf.errors.InvalidArgumentError, OSError, ValueError) as e:
        raise BadImageError(f"the decoder rejected it ({_tf_error_text(e)})") from None


def inspect_image(path, max_pixels=DEFAULT_MAX_PIXELS, label=0):
    """Checks one file from its header only (no pixels are decoded).

    Returns:
        An `ImageFile`.

    Raises:
        BadImageError: empty, not an image, unsupported format or mode, or more
            than `max_pixels` pixels.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        size = os.path.getsize(path)
    except OSError as e:  # a broken symlink, or deleted since the listing
        raise BadImageError(f"cannot be read ({e.strerror or e})") from None
    if size == 0:
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
    if fmt == "GIF":
        # Pillow reports the first frame; TensorFlow's decoder allocates every frame at
        # the largest frame's size. The serving guard's header walk counts them all.
        pixels = _gif_pixels(path)
        if pixels < 0 or pixels > max_pixels:
            raise BadImageError(
                f"GIF frames announce {pixels:,.0f} pixels in all, over max_pixels={max_pixels:,}; "
                "rejected before decoding" if pixels >= 0 else "unreadable GIF header")
    if width < 1 or height < 1:
        raise BadImageError(f"empty image ({width}x{height})")
    if fmt in TF_FORMATS and not (fmt == "BMP" and (mode not in ("RGB", "RGBA") or _tf_misreads_bmp(path))):
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
        decoded[index], sums[index], counts[index] = count > 0, s, count  # 0: unreadable since listed
    good = [f for f, ok in zip(files, decoded) if ok]
    failures = [(f, _decode_failure(f)) for f, ok in zip(files, decoded) if not ok]
    return good, failures, (sums[decoded], counts[decoded])


def _decode_failure(file):
    """Why a file failed to decode (re-run eagerly, once, for the message)."""
    try:
        image = _decode_file((tf.constant(file.path), tf.constant(file.use_pil)))
    except Exception as e:  # InvalidArgumentError, UnknownError from Pillow, ...
        return f"cannot be decoded: {_tf_error_text(e)}"
    return "cannot be read (vanished since the listing?)" if tf.size(image) == 0 else "cannot be decoded"


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
            fpath.encode("utf-8")
        except UnicodeEncodeError:  # TensorFlow's file ops take UTF-8 names only
            _skip(fpath.encode("utf-8", "surrogateescape").decode("utf-8", "replace"),
                  "its name is not valid UTF-8: rename it", strict, skipped)
            continue
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
        ds = _drop_unreadable(ds.ignore_errors(log_warning=True), "image folder", lambda e: e[0],
                              finite=True)
        return ds, SourceInfo(
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
