"""tensorflow-datasets sources: `make_pipelines("cifar10", ...)`, `load_tfds`."""

import dataclasses
import logging
import os

import tensorflow as tf

from keras_resnet.data.source import AUTOTUNE, SourceInfo, _Source, _Split, _decode_bytes, _identity_rgb

log = logging.getLogger("keras_resnet.data")


def _tfds_data_dir(data_dir):
    """`data_dir`, else `$TFDS_DATA_DIR` (read now, not at tfds import), else tfds's default."""
    return os.fspath(data_dir) if data_dir else os.environ.get("TFDS_DATA_DIR") or None


def _tfds_base_name(name):
    return name.split("/")[0].split(":")[0]


def _tfds_builder(name, data_dir, offline=False):
    """A prepared tfds builder: downloaded and prepared on first use (tfds's own
    progress bars), unless `offline`.

    Raises:
        ValueError: unknown name; not prepared and `offline` (saying where it
            looked); or the download failed (saying why and how to go offline).
    """
    import tensorflow_datasets as tfds

    root = _tfds_data_dir(data_dir)
    try:
        builder = tfds.builder(name, data_dir=root)
    except Exception as e:  # DatasetNotFoundError, bad config or version
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"Unknown tensorflow-datasets name (and not an existing folder or .npz file). "
                         f"Received: source={name!r}. tfds says: {first_line}") from None
    if builder.is_prepared():
        return builder
    where = (f"looked in {builder.data_dir!r} (data_dir={data_dir!r}, "
             f"TFDS_DATA_DIR={os.environ.get('TFDS_DATA_DIR')!r})")
    if offline:
        raise ValueError(
            f"The tensorflow-datasets dataset {name!r} is not prepared: {where}. Offline "
            "(offline=True / --offline), so nothing is downloaded. Point `data_dir=` (CLI: --data-dir) "
            f"or TFDS_DATA_DIR at a folder holding {_tfds_base_name(name)}/<version>/, or run once "
            "without --offline to download and prepare it.")
    log.info("Downloading and preparing %r into %s (once; later runs read it from there).",
             name, builder.data_dir)
    try:
        builder.download_and_prepare()
    except Exception as e:  # network, disk, checksum
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"Could not download and prepare the tensorflow-datasets dataset {name!r} into "
            f"{builder.data_dir!r}: {first_line}. Without network access, prepare it on another "
            "machine and point data_dir= / TFDS_DATA_DIR at it (and pass --offline to fail fast). "
            f"Received: source={name!r}") from None
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


def load_tfds(name, split, data_dir=None, offline=False):
    """One split of a tensorflow-datasets dataset, downloaded and prepared on
    first use unless `offline`.

    Args:
        name: tfds name, e.g. "cifar10" or "imagenette/160px".
        split: split string; slicing such as "train[:90%]" passes through.
        data_dir: tfds data directory; default `$TFDS_DATA_DIR`, then tfds's own.
        offline: never download; a dataset that is not prepared is an error.

    Returns:
        `(dataset, SourceInfo)`; examples are `(uint8 [H, W, 3], int32 label)`.

    Raises:
        ValueError: unknown name or split, or the dataset is not prepared
            (offline) or could not be downloaded.
    """
    builder = _tfds_builder(name, data_dir, offline)
    part = _tfds_split(name, builder, split, data_dir)
    names = _tfds_class_names(builder)
    ds = part.ds.map(lambda x, y: (part.decode(x), y), num_parallel_calls=AUTOTUNE)
    return ds, SourceInfo(name, len(names), names, part.num_examples, part.fixed_size)


def _tfds_source(name, data_dir, train_split, eval_split, validation_split, seed, offline=False):
    builder = _tfds_builder(name, data_dir, offline)
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
