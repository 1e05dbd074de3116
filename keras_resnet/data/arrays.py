"""In-memory sources: numpy arrays and `.npz` files."""

import logging
import os

import numpy as np
import tensorflow as tf

from keras_resnet.data.source import STATS_SAMPLE, SourceInfo, _Source, _Split, _channel_stats, _identity_rgb

log = logging.getLogger("keras_resnet.data")
# Labels inferred to mean more classes than this must also be dense (see _inferred_num_classes).
MAX_INFERRED_CLASSES = 1000


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


def _inferred_num_classes(labels, where="source"):
    """`max(label) + 1` over every label array, refusing a count the labels cannot
    mean: a stray huge label would otherwise build a classifier head of that size."""
    top = max(int(y.max()) for y in labels)
    distinct = len(np.unique(np.concatenate([np.unique(y) for y in labels])))
    if top + 1 > max(2 * distinct, MAX_INFERRED_CLASSES):
        raise ValueError(
            f"The largest label is {top} but only {distinct} distinct labels appear, so the class "
            f"count would be {top + 1}: pass num_classes= (or class_names=) to mean it, or remap "
            f"the labels to 0..K-1. Received: {where} with max(y)={top}")
    return top + 1


def _check_labels(y, num_classes, where="source"):
    """int32 labels, all in `[0, num_classes)`."""
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(f"Labels must lie in [0, num_classes={num_classes}). Received: {where} with "
                         f"labels from {int(y.min())} to {int(y.max())}")
    return y.astype(np.int32)


def _to_uint8(x, where):
    x = x.astype(np.float32)
    finite = np.isfinite(x)
    if not finite.all():
        first = tuple(int(i) for i in np.argwhere(~finite)[0])
        raise ValueError(f"Pixel values must be finite: {int((~finite).sum())} are NaN or infinite "
                         f"(the first at x[{', '.join(map(str, first))}]). Received: {where} with "
                         f"x[{', '.join(map(str, first))}]={x[first]}")
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
    num_classes = num_classes or _inferred_num_classes([y], "x, y")
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
    num_classes = len(names) if names is not None else _inferred_num_classes(
        [y for _, y in parts.values()], "source")
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
