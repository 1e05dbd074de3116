"""What every data source hands the pipeline: the splits, class names and statistics."""

import dataclasses

import numpy as np
import tensorflow as tf

AUTOTUNE = tf.data.AUTOTUNE
IMAGENET_CROP_FRACTION = 0.875
STATS_SAMPLE = 10_000        # images used to compute normalisation of unknown data


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


def _decode_bytes(data):
    """Encoded JPEG/PNG/GIF/BMP/WebP bytes -> uint8 RGB (grey expanded, alpha dropped,
    16-bit PNG scaled, CMYK converted), as the exported model decodes requests."""
    image = tf.io.decode_image(data, channels=3, expand_animations=False, dtype=tf.uint8)
    image.set_shape((None, None, 3))
    return image


# Files that vanish mid-run (deleted, or a whole share unmounted) are skipped, each
# named once in the log, up to UNREADABLE_FLOOR + UNREADABLE_FRACTION x (images
# read) and UNREADABLE_FLOOR in a row; past that the pipeline fails with
# UNREADABLE_MESSAGE instead of dropping every element of an endless stream forever.
UNREADABLE_FLOOR = 32
UNREADABLE_FRACTION = 0.1
UNREADABLE_MESSAGE = "image files could not be read any more"


def _drop_unreadable(ds, what, image_of, finite=False):
    """Drops the elements whose decoded image is empty (a file unreadable at run
    time, see `folders._decode_file`), failing past the bounds above.

    Args:
        ds: decoded elements, any structure.
        what: "training" or "evaluation", for the message.
        image_of: element -> its uint8 image.
        finite: `ds` ends (one pass): it also fails at its end when every
            file was unreadable, however few (a small evaluation split whose
            share is gone must not evaluate on nothing).
    """
    def check(state, tagged):
        seen, missing, run = state
        element, end = tagged
        gone = tf.equal(tf.size(image_of(element)), 0) | end
        counted = tf.cast(tf.logical_not(end), tf.int64)
        seen, missing = seen + counted, missing + tf.cast(gone, tf.int64) * counted
        run = tf.where(gone, run + counted, tf.constant(0, tf.int64))
        within = ((tf.cast(missing, tf.float64) <= UNREADABLE_FLOOR + UNREADABLE_FRACTION * tf.cast(seen, tf.float64))
                  & (run <= UNREADABLE_FLOOR) & tf.logical_not(end & (seen > 0) & tf.equal(missing, seen)))
        def fail():  # the message is built only when it is raised
            message = tf.strings.join([
                f"{what}: ", tf.strings.as_string(missing), " of ", tf.strings.as_string(seen),
                f" {UNREADABLE_MESSAGE} (", tf.strings.as_string(run), " in a row: deleted, or their share "
                f"unmounted?), more than the {UNREADABLE_FLOOR} + {UNREADABLE_FRACTION:.0%} allowed, or all of "
                "them: stopping. The skipped files are named in the log"])
            with tf.control_dependencies([tf.debugging.Assert(False, [message])]):
                return tf.identity(gone)

        gone = tf.cond(within, lambda: tf.identity(gone), fail)
        return (seen, missing, run), (element, gone)

    tagged = ds.map(lambda *element: (element[0] if len(element) == 1 else element, tf.constant(False)))
    if finite:  # an end marker: an empty image, flagged
        spec = tagged.element_spec[0]
        end = tf.nest.map_structure(
            lambda s: tf.zeros([0 if d is None else d for d in s.shape], s.dtype), spec)
        tagged = tagged.concatenate(tf.data.Dataset.from_tensors((end, tf.constant(True))))
    zero = tf.constant(0, tf.int64)
    return (tagged.scan((zero, zero, zero), check)
            .filter(lambda element, gone: tf.logical_not(gone))
            .map(lambda element, gone: element))


def _channel_stats(sums, counts):
    """`{"mean", "std"}` (0-255 scale, 3 decimals) from per-image channel sums."""
    total = counts.sum()
    mean = sums[:, 0].sum(0) / total
    std = np.sqrt(np.maximum(sums[:, 1].sum(0) / total - mean ** 2, 0.0))
    # A std under one grey level means near-constant data; dividing by it would blow up.
    return {"mean": tuple(round(float(m), 3) for m in mean),
            "std": tuple(round(float(max(s, 1.0)), 3) for s in std)}
