"""Data pipelines: tfds (mocked offline and real CIFAR-10), image folders with bad
files, numpy arrays and .npz, augmentation, mixing, sharding, bad-input errors."""

import io
import json
import logging
import os
import shutil
import struct
import time
import zlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_resnet import augment as aug
from keras_resnet import data
from keras_resnet.data import folders, pipeline
from keras_resnet.preprocessing import eval_resize

SHARED_TFDS = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "tensorflow_datasets")


def _shared_metadata_dir():
    """tfds metadata for mock_data: the shared CIFAR-10 dataset_info.json."""
    if not os.path.isfile(os.path.join(SHARED_TFDS, "cifar10", "3.0.2", "dataset_info.json")):
        pytest.skip("../shared/tensorflow_datasets/cifar10 missing: its dataset_info.json is the "
                    "metadata tfds.testing.mock_data needs offline")
    return SHARED_TFDS


def _first_batches(ds, n=1):
    return [tuple(t.numpy() for t in batch) for batch in ds.take(n)]


# ------------------------------------------------------------------ generated files
def _pattern(h, w, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _save(path, image, fmt, **kwargs):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image.save(path, fmt, **kwargs)
    return path


def _chunk(kind, payload):
    body = kind + payload
    return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)


def _png_header_only(path, width, height):
    """A 200-byte PNG whose header announces width x height (its pixel data is a stub):
    decoding it would need width * height * 3 bytes."""
    blob = (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + _chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _chunk(b"IEND", b""))
    with open(path, "wb") as f:
        f.write(blob)
    return path


def _encoded(image, fmt, **kwargs):
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


GOOD_COUNT = 26  # 2 classes x 8 plain images + 10 special ones, see make_folder
BAD_FILES = {  # file -> what its warning says
    "cats/empty.jpg": "empty file",
    "cats/truncated.jpg": "cannot be decoded",
    "cats/corrupt.png": "cannot be decoded",
    "cats/notes.txt": "not an image",
    "dogs/fake.png": "not an image",
    "dogs/photo.heic": "unsupported image format '.heic'",
    "dogs/icon.pcx": "unsupported image format PCX",
    "dogs/huge.png": "exceeds max_pixels=10,000,000; rejected before decoding",
}


def make_folder(root, size=24):
    """A two-class folder: plain RGB JPEG/PNG images plus every special and bad kind.

    Good: RGB JPEG, grayscale PNG, RGBA PNG, CMYK JPEG, 16-bit PNG, palette
    BMP, TIFF, GIF, WebP, grayscale JPEG. Bad: see BAD_FILES.
    """
    paths = {}
    for c, cls in enumerate(("cats", "dogs")):
        for i in range(4):
            paths[f"{cls}/rgb{i}.jpg"] = _save(os.path.join(root, cls, f"rgb{i}.jpg"),
                                               Image.fromarray(_pattern(size, size, 10 * c + i)), "JPEG", quality=95)
            paths[f"{cls}/rgb{i}.png"] = _save(os.path.join(root, cls, f"rgb{i}.png"),
                                               Image.fromarray(_pattern(size, size, 100 + 10 * c + i)), "PNG")
    base = _pattern(size, size, 7)
    special = {
        "cats/grey.png": (Image.fromarray(base[..., 0]), "PNG", {}),
        "cats/rgba.png": (Image.fromarray(np.dstack([base, np.full((size, size), 100, np.uint8)])), "PNG", {}),
        "cats/cmyk.jpg": (Image.fromarray(np.full((size, size, 3), (200, 40, 40), np.uint8)).convert("CMYK"),
                          "JPEG", {"quality": 95}),
        "cats/deep16.png": (Image.fromarray(np.full((size, size), 32896, np.uint16)), "PNG", {}),
        "cats/palette.bmp": (Image.fromarray(base).convert("P"), "BMP", {}),
        "dogs/scan.tiff": (Image.fromarray(base), "TIFF", {}),
        "dogs/anim.gif": (Image.fromarray(base).convert("P"), "GIF", {}),
        "dogs/web.webp": (Image.fromarray(base), "WEBP", {"lossless": True}),
        "dogs/greyjpeg.jpg": (Image.fromarray(base[..., 1]), "JPEG", {"quality": 95}),
        "dogs/nested/deep.png": (Image.fromarray(base), "PNG", {}),
    }
    for rel, (image, fmt, kwargs) in special.items():
        paths[rel] = _save(os.path.join(root, rel), image, fmt, **kwargs)
    # Bad files.
    jpeg = _encoded(Image.fromarray(_pattern(64, 64, 3)), "JPEG")  # big enough to cut inside the scan
    png = _encoded(Image.fromarray(_pattern(size, size, 4)), "PNG")
    contents = {
        "cats/empty.jpg": b"",
        "cats/truncated.jpg": jpeg[: len(jpeg) // 2],
        "cats/corrupt.png": png[:60] + bytes(range(256)) + png[316:],
        "cats/notes.txt": b"not an image at all\n",
        "dogs/fake.png": b"<html>this is not a png</html>",
        "dogs/photo.heic": b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00" + b"\x00" * 64,
    }
    for rel, blob in contents.items():
        with open(os.path.join(root, rel), "wb") as f:
            f.write(blob)
    _save(os.path.join(root, "dogs/icon.pcx"), Image.fromarray(base), "PCX")
    _png_header_only(os.path.join(root, "dogs/huge.png"), 9000, 9000)  # 81 Mpx announced
    # Hidden files are ignored silently (no warning): .DS_Store and friends.
    with open(os.path.join(root, "cats", ".DS_Store"), "wb") as f:
        f.write(b"\x00junk")
    return paths


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("images"))
    make_folder(root)
    return root


# --------------------------------------------------------------------- image folders
def test_folder_skips_each_bad_file_with_one_warning(folder, caplog):
    with caplog.at_level(logging.WARNING, logger="keras_resnet.data"):
        files, names, skipped, _ = data.scan_image_folder(folder, max_pixels=10_000_000)
    assert names == ["cats", "dogs"]
    assert len(files) == GOOD_COUNT
    skipped_rel = {os.path.relpath(p, folder): reason for p, reason in skipped}
    assert set(skipped_rel) == set(BAD_FILES)
    for rel, reason in BAD_FILES.items():
        assert reason in skipped_rel[rel], (rel, skipped_rel[rel])
        lines = [r.getMessage() for r in caplog.records if os.path.join(folder, rel) in r.getMessage()]
        assert len(lines) == 1, (rel, lines)  # exactly one warning line naming the file
    summary = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Skipped")]
    assert summary == [f"Skipped {len(BAD_FILES)} bad file(s) of {GOOD_COUNT + len(BAD_FILES)} in {folder}; "
                       f"{GOOD_COUNT} images remain."]
    assert not any(".DS_Store" in r.getMessage() for r in caplog.records)
    # TIFF and the palette BMP go to Pillow (TensorFlow cannot, or misreads them).
    by_name = {os.path.basename(f.path): f for f in files}
    assert by_name["scan.tiff"].use_pil and by_name["palette.bmp"].use_pil
    assert not by_name["cmyk.jpg"].use_pil and not by_name["deep16.png"].use_pil


def test_folder_images_decode_as_rgb(folder):
    (train, info), (val, val_info) = data.from_directory(folder, 0.25, seed=0, subset="both")
    assert info.class_names == ["cats", "dogs"] and info.num_classes == 2
    assert info.num_examples + val_info.num_examples == GOOD_COUNT
    assert len(info.skipped) == len(BAD_FILES)
    examples = list(train.concatenate(val).as_numpy_iterator())
    assert len(examples) == GOOD_COUNT
    for image, label in examples:
        assert image.dtype == np.uint8 and image.shape == (24, 24, 3) and label in (0, 1)
    # Decode specific kinds and compare with their source pixels.
    decode = lambda rel: folders._decode_file(  # noqa: E731
        (tf.constant(os.path.join(folder, rel)), tf.constant(rel.endswith((".tiff", ".bmp"))))).numpy()
    base = _pattern(24, 24, 7)
    np.testing.assert_array_equal(decode("cats/grey.png"), np.repeat(base[..., :1], 3, -1))
    np.testing.assert_array_equal(decode("cats/rgba.png"), base)         # alpha dropped
    np.testing.assert_array_equal(decode("dogs/scan.tiff"), base)        # via Pillow
    palette = np.asarray(Image.fromarray(base).convert("P").convert("RGB"))
    np.testing.assert_array_equal(decode("cats/palette.bmp"), palette)   # via Pillow, not garbage
    assert np.abs(decode("cats/cmyk.jpg").astype(int) - (200, 40, 40)).max() <= 3
    np.testing.assert_array_equal(decode("cats/deep16.png"), np.full((24, 24, 3), 128))  # 32896/257


def test_from_directory_subsets(folder):
    ds, info = data.from_directory(folder)  # every file, listing order
    assert info.num_examples == GOOD_COUNT and info.image_size == (24, 24)
    train, tinfo = data.from_directory(folder, 0.25, subset="training")
    val, vinfo = data.from_directory(folder, 0.25, subset="validation")
    assert (tinfo.num_examples, vinfo.num_examples) == (20, 6)
    with pytest.raises(ValueError, match="subset='train'"):
        data.from_directory(folder, 0.25, subset="train")
    with pytest.raises(ValueError, match="validation_split=0"):
        data.from_directory(folder, 0, subset="validation")


def test_folder_strict_raises_naming_the_file(folder):
    with pytest.raises(ValueError, match=r"Bad image file .*cats[/\\]empty\.jpg.*empty file"):
        data.scan_image_folder(folder, strict=True)
    with pytest.raises(ValueError, match=r"strict=True"):
        data.make_pipelines(folder, 4, strict=True)


def test_pixel_limit_rejects_from_the_header_without_decoding(tmp_path, monkeypatch, caplog):
    for cls in ("a", "b"):
        _save(str(tmp_path / cls / "ok.png"), Image.fromarray(_pattern(16, 16, 1)), "PNG")
    big = _save(str(tmp_path / "a" / "big.png"), Image.fromarray(_pattern(64, 64, 2)), "PNG")  # 4096 px
    bomb = _png_header_only(str(tmp_path / "b" / "bomb.png"), 30000, 30000)  # 900 Mpx, no pixel data
    seen = []
    real_verify = folders._verify_decodes
    monkeypatch.setattr(folders, "_verify_decodes", lambda files: seen.extend(f.path for f in files)
                        or real_verify(files))
    with caplog.at_level(logging.WARNING, logger="keras_resnet.data"):
        files, _, skipped, _ = data.scan_image_folder(str(tmp_path), max_pixels=1000)
    reasons = dict(skipped)
    assert "64x64 = 4,096 pixels exceeds max_pixels=1,000" in reasons[big]
    assert "max_pixels" in reasons[bomb] and "rejected before decoding" in reasons[bomb]
    assert big not in seen and bomb not in seen  # never handed to a decoder
    assert len(files) == 2
    # A larger limit lets the 64x64 image through.
    files, _, skipped, _ = data.scan_image_folder(str(tmp_path), max_pixels=5000)
    assert len(files) == 3 and [p for p, _ in skipped] == [bomb]


@pytest.mark.parametrize("layout, message", [
    (None, "Image folder not found"),
    ({}, "no class sub-folders"),
    ({"only": 2}, "single class"),
    ({"a": 0, "b": 0}, "No readable images"),
])
def test_folder_errors(tmp_path, layout, message):
    root = tmp_path / "photos"
    if layout is not None:
        root.mkdir()
        for cls, count in layout.items():
            (root / cls).mkdir()
            for i in range(count):
                _save(str(root / cls / f"{i}.png"), Image.fromarray(_pattern(8, 8, i)), "PNG")
        if layout == {"a": 0, "b": 0}:
            (root / "a" / "junk.txt").write_text("x")
    with pytest.raises(ValueError, match=message) as err:
        data.make_pipelines(str(root), 4)
    assert f"source={str(root)!r}" in str(err.value)


def test_folder_pipeline(folder):
    train, evals, info = data.make_pipelines(folder, 4, validation_split=0.25, seed=3, deterministic=True)
    assert (info.num_train, info.num_eval) == (20, 6)  # 13 per class, round(13 * 0.25) = 3 held out each
    assert info.image_size == (24, 24) and info.class_names == ["cats", "dogs"]
    assert info.crop_fraction is None  # 24 px: the cifar preset
    # Normalisation computed from the training images (during the decode check).
    assert set(info.normalization) == {"mean", "std"}
    pixels = np.concatenate([
        folders._decode_file((tf.constant(f.path), tf.constant(f.use_pil))).numpy().reshape(-1, 3)
        for f, e in zip(*_folder_files_and_split(folder)) if not e]).astype(np.float64)
    np.testing.assert_allclose(info.normalization["mean"], pixels.mean(0), atol=0.01)
    np.testing.assert_allclose(info.normalization["std"], pixels.std(0), atol=0.01)
    x, y = next(iter(train))
    assert x.shape == (4, 24, 24, 3) and x.dtype == tf.float32 and y.shape == (4, 2)
    assert sum(int(b[0].shape[0]) for b in evals) == 6


def _folder_files_and_split(folder):
    files, _, _, _ = data.scan_image_folder(folder)
    return files, folders._split_files(files, 0.25)


def test_folder_hold_out_survives_moving_the_dataset(folder, tmp_path):
    """The held-out files depend on class folder and file name, not on where the data lives."""
    moved = str(tmp_path / "elsewhere" / "copy")
    shutil.copytree(folder, moved)

    def held_out(root):
        files, is_eval = _folder_files_and_split(root)
        return sorted(os.path.relpath(f.path, root) for f, e in zip(files, is_eval) if e)

    assert held_out(folder) and held_out(folder) == held_out(moved)


def test_folder_validation_split_is_stratified_and_seed_independent(folder):
    def eval_paths(seed):
        (_, _), (val, _) = data.from_directory(folder, 0.25, seed=seed, subset="both")
        return sorted(val.map(lambda x, y: y).as_numpy_iterator())
    labels = eval_paths(0)
    assert labels.count(0) == 3 and labels.count(1) == 3  # round(13 * 0.25) per class
    # The training permutation follows the seed; the held-out set does not.
    (t0, _), (v0, _) = data.from_directory(folder, 0.25, seed=0, subset="both")
    (t1, _), (v1, _) = data.from_directory(folder, 0.25, seed=1, subset="both")
    images = lambda ds: [x for x, _ in ds.as_numpy_iterator()]  # noqa: E731
    assert all(np.array_equal(a, b) for a, b in zip(images(v0), images(v1)))
    assert not all(np.array_equal(a, b) for a, b in zip(images(t0), images(t1)))


def test_cached_and_uncached_pipelines_agree(folder, monkeypatch, caplog):
    kwargs = dict(validation_split=0.25, seed=5, deterministic=True, image_size=20, augment="cifar")
    with caplog.at_level(logging.INFO, logger="keras_resnet.data"):
        cached = _first_batches(data.make_pipelines(folder, 4, **kwargs)[0], 3)
    assert "Not caching" not in caplog.text
    monkeypatch.setattr(pipeline, "_available_memory", lambda: 0)  # nothing fits: no cache
    with caplog.at_level(logging.INFO, logger="keras_resnet.data"):
        uncached = _first_batches(data.make_pipelines(folder, 4, **kwargs)[0], 3)
    assert "Not caching the training images" in caplog.text
    for (xa, ya), (xb, yb) in zip(cached, uncached):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    # The imagenet preset crops from full-resolution images when not caching.
    x, y = next(iter(data.make_pipelines(folder, 4, image_size=16, augment="imagenet")[0]))
    assert x.shape == (4, 16, 16, 3) and y.shape == (4, 2)


def test_file_removed_after_the_check_is_dropped_not_fatal(tmp_path):
    root = tmp_path / "photos"
    for c, cls in enumerate(("a", "b")):
        for i in range(4):
            _save(str(root / cls / f"{i}.png"), Image.fromarray(_pattern(8, 8, 10 * c + i)), "PNG")
    train, evals, info = data.make_pipelines(str(root), 2, validation_split=0.25, cache=False, one_hot=False)
    files, is_eval = _folder_files_and_split(str(root))
    in_a = [(f.path, e) for f, e in zip(files, is_eval) if f.label == 0]
    os.remove(next(p for p, e in in_a if e))      # the held-out file of class a
    os.remove(next(p for p, e in in_a if not e))  # and one it trains on
    batches = _first_batches(train, 8)
    assert all(b[0].shape == (2, 8, 8, 3) for b in batches)
    assert sum(int(b[0].shape[0]) for b in evals) == info.num_eval - 1


def test_eval_images_use_the_shared_eval_resize(folder):
    _, evals, info = data.make_pipelines(folder, 32, image_size=16, augment="imagenet", validation_split=0.25)
    assert info.crop_fraction == 0.875
    files, is_eval = _folder_files_and_split(folder)
    held_out = [f for f, e in zip(files, is_eval) if e]  # eval keeps the listing order
    images = next(iter(evals))[0].numpy()
    assert len(images) == len(held_out) == 6
    for f, got in zip(held_out, images):
        original = folders._decode_file((tf.constant(f.path), tf.constant(f.use_pil)))
        np.testing.assert_array_equal(got, eval_resize(original, (16, 16), 0.875).numpy())


# ------------------------------------------------------------------- arrays and npz
def _arrays(n=60, size=8, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), np.arange(n) % classes


def test_arrays_tuple_dict_and_npz(tmp_path):
    x, y = _arrays()
    train, evals, info = data.make_pipelines((x, y), 8, validation_split=0.2, seed=0)
    assert (info.num_train, info.num_eval, info.num_classes) == (48, 12, 3)
    assert info.image_size == (8, 8) and info.name == "arrays"
    flat = x.reshape(-1, 3).astype(np.float64)
    assert np.allclose(info.normalization["mean"], flat.mean(0), atol=2.0)  # train part only
    eval_labels = np.concatenate([b[1].numpy().argmax(-1) for b in evals])
    assert np.bincount(eval_labels).tolist() == [4, 4, 4]  # stratified
    # A dict with a test part; class names.
    x2, y2 = _arrays(n=9, seed=1)
    _, evals, info = data.make_pipelines({"train": (x, y), "test": (x2, y2), "class_names": ["a", "b", "c"]}, 4)
    assert info.num_eval == 9 and info.class_names == ["a", "b", "c"]
    assert [int(b[0].shape[0]) for b in evals] == [4, 4, 1]  # last partial batch kept
    # Unshuffled eval: images in order, unchanged (augment never touches eval).
    got = np.concatenate([b[0].numpy() for b in evals])
    np.testing.assert_array_equal(got, x2.astype(np.float32))
    # .npz with x_train/y_train/x_test/y_test, and with x/y.
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y, x_test=x2, y_test=y2)
    _, _, info = data.make_pipelines(str(tmp_path / "d.npz"), 4)
    assert (info.num_train, info.num_eval, info.name) == (60, 9, "d")
    np.savez(tmp_path / "xy.npz", x=x, y=y)
    ds, sinfo = data.from_npz(str(tmp_path / "xy.npz"))
    assert sinfo.num_examples == 60 and len(list(ds)) == 60
    ds, sinfo = data.from_arrays(x, y)
    image, label = next(iter(ds))
    assert image.dtype == tf.uint8 and label.dtype == tf.int32 and sinfo.num_classes == 3


def test_arrays_conversions():
    x, y = _arrays(n=12)
    floats = x.astype(np.float32) / 255.0
    grey = x[..., 0]
    onehot = np.eye(3)[y]
    for xs, ys in ((floats, y), (grey, y), (x, onehot), (np.concatenate([x, x[..., :1]], -1), y)):
        ds, info = data.from_arrays(xs, ys)
        images = np.stack([i for i, _ in ds.as_numpy_iterator()])
        assert images.shape == (12, 8, 8, 3) and images.dtype == np.uint8
        assert info.num_classes == 3
    np.testing.assert_array_equal(np.stack([i for i, _ in data.from_arrays(floats, y)[0].as_numpy_iterator()]), x)


X8 = np.random.default_rng(0).integers(0, 256, (60, 8, 8, 3), dtype=np.uint8)
Y2, Y3 = np.arange(60) % 2, np.arange(60) % 3


@pytest.mark.parametrize("make_source, kwargs, message", [
    (lambda p: (X8, Y2[:-1]), {}, r"differ in length.*len\(x\)=60, len\(y\)=59"),
    (lambda p: (X8, Y2 - 1), {}, r"\[0, num_classes=1\).*from -1 to 0"),
    (lambda p: {"train": (X8, Y3), "class_names": ["a", "b"]}, {}, r"num_classes=2\).*from 0 to 2"),
    (lambda p: {"train": (X8, Y3), "test": (X8[:5], Y3[:5] + 7), "class_names": list("abc")}, {},
     r"num_classes=3\).*source\['test'\].*from 7 to 9"),
    (lambda p: (X8[..., :2], Y2), {}, r"x.shape=\(60, 8, 8, 2\)"),
    (lambda p: (X8.astype(np.float32) * 2, Y2), {}, r"\[0, 1\] or \[0, 255\]"),
    (lambda p: (X8, Y2 + 0.5), {}, r"Labels must be integers"),
    (lambda p: str(p / "missing.npz"), {}, r"File not found. Received: source="),
    (lambda p: str(p / "nowhere"), {}, r"Image folder not found. Received: source="),
    (lambda p: 42, {}, r"Received: source=42"),
    (lambda p: {"test": (X8, Y2)}, {}, r"'train' entry"),
    (lambda p: (X8, Y2), {"batch_size": 0}, r"batch_size=0"),
    (lambda p: (X8, Y2), {"augment": "heavy"}, r"augment='heavy'"),
    (lambda p: (X8, Y2), {"validation_split": 1.0}, r"validation_split=1.0"),
    (lambda p: (X8, Y2), {"mixup_alpha": 0.2, "one_hot": False}, r"one_hot=False"),
    (lambda p: (X8, Y2), {"cutmix_alpha": -1}, r"cutmix_alpha=-1"),
    (lambda p: (X8, Y2), {"random_erasing": 2}, r"random_erasing=2"),
    (lambda p: (X8, Y2), {"randaugment": (0, 0.5)}, r"randaugment=\(0, 0.5\)"),
    (lambda p: (X8, Y2), {"image_size": (32,)}, r"image_size=\(32,\)"),
    (lambda p: (X8, Y2), {"crop_fraction": 1.5}, r"crop_fraction=1.5"),
    (lambda p: (X8, Y2), {"max_examples": 0}, r"max_examples=0"),
    (lambda p: (X8, Y2), {"max_pixels": 0}, r"max_pixels=0"),
])
def test_bad_input_errors(tmp_path, make_source, kwargs, message):
    kwargs = {"batch_size": 4, **kwargs}
    with pytest.raises(ValueError, match=message):
        data.make_pipelines(make_source(tmp_path), kwargs.pop("batch_size"), **kwargs)


def test_validation_split_zero_trains_on_everything(caplog):
    with caplog.at_level(logging.WARNING, logger="keras_resnet.data"):
        _, evals, info = data.make_pipelines((X8, Y2), 4, validation_split=0.0)
    assert (info.num_train, info.num_eval) == (60, 0)
    assert list(evals) == [] and "eval_ds is empty" in caplog.text


def test_npz_errors(tmp_path):
    np.savez(tmp_path / "bad.npz", images=np.zeros((2, 4, 4, 3)))
    with pytest.raises(ValueError, match=r"x_train and y_train.*keys \['images'\]"):
        data.load_npz(str(tmp_path / "bad.npz"))
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(ValueError, match=r"Not a readable .npz"):
        data.load_npz(str(tmp_path / "text.npz"))
    np.savez(tmp_path / "xy.npz", x=np.zeros((2, 4, 4, 3), np.uint8), y=[0, 1])
    with pytest.raises(ValueError, match=r"split='test'"):
        data.from_npz(str(tmp_path / "xy.npz"), split="test")


# ----------------------------------------------------------------------------- tfds
def test_tfds_mock_cifar10_offline():
    import tensorflow_datasets as tfds

    shared = _shared_metadata_dir()
    with tfds.testing.mock_data(num_examples=24, data_dir=shared):
        train, evals, info = data.make_pipelines("cifar10", 8, data_dir=shared, train_split="train[:10%]",
                                                 deterministic=True)
        ds, sinfo = data.load_tfds("cifar10", "test", data_dir=shared)
        image, label = next(iter(ds))
    assert info.num_train == 5000 and info.num_eval == 10000  # from the metadata; slicing passes through
    assert info.class_names[:3] == ["airplane", "automobile", "bird"] and info.num_classes == 10
    assert info.normalization == "cifar10" and info.image_size == (32, 32) and info.crop_fraction is None
    x, y = next(iter(train))
    assert x.shape == (8, 32, 32, 3) and x.dtype == tf.float32 and y.shape == (8, 10)
    assert float(tf.reduce_min(x)) >= 0 and float(tf.reduce_max(x)) <= 255
    assert sinfo.num_examples == 10000 and image.dtype == tf.uint8 and label.dtype == tf.int32
    json.dumps(info.to_dict())  # JSON-serialisable for the run's config


def test_tfds_mock_train_only_dataset_carves_validation(tmp_path):
    """tf_flowers has only a train split: the tail of train becomes the eval split."""
    import tensorflow_datasets as tfds

    shared = _shared_metadata_dir()
    meta = json.load(open(os.path.join(shared, "cifar10", "3.0.2", "dataset_info.json")))
    meta.update(name="tf_flowers", version="3.0.1", splits=[{
        "name": "train", "shardLengths": ["40"], "numBytes": "1000",
        "filepathTemplate": "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"}])
    os.makedirs(tmp_path / "tf_flowers" / "3.0.1")
    (tmp_path / "tf_flowers" / "3.0.1" / "dataset_info.json").write_text(json.dumps(meta))
    with tfds.testing.mock_data(num_examples=12, data_dir=str(tmp_path)):
        train, evals, info = data.make_pipelines("tf_flowers", 4, data_dir=str(tmp_path), validation_split=0.25,
                                                 image_size=48, augment="imagenet")
        x, y = next(iter(train))
        ex, _ = next(iter(evals))
    assert (info.num_train, info.num_eval) == (30, 10)  # train[:75%] / train[75%:]
    assert info.class_names[0] == "dandelion" and info.num_classes == 5
    assert isinstance(info.normalization, dict)  # not a known preset: computed from a sample
    assert info.crop_fraction == 0.875
    assert x.shape == (4, 48, 48, 3) and ex.shape[1:] == (48, 48, 3)


def test_tfds_errors_offline(tmp_path, monkeypatch):
    empty = str(tmp_path / "empty_tfds")
    os.makedirs(empty)
    start = time.monotonic()
    with pytest.raises(ValueError) as err:
        data.make_pipelines("cifar10", 8, data_dir=empty, offline=True)
    message = str(err.value)
    assert "not prepared" in message and empty in message and "data_dir" in message
    assert "TFDS_DATA_DIR" in message and "nothing is downloaded" in message and "--offline" in message
    assert "../shared" not in message  # no folder of this repository's surroundings (only what the user set)
    # TFDS_DATA_DIR is honoured when data_dir is not given.
    monkeypatch.setenv("TFDS_DATA_DIR", empty)
    with pytest.raises(ValueError, match="not prepared.*" + empty.replace("\\", "\\\\")):
        data.load_tfds("cifar10", "train", offline=True)
    assert time.monotonic() - start < 30  # fails fast: no download attempt, no network wait
    with pytest.raises(ValueError, match=r"Unknown tensorflow-datasets name.*source='no_such_dataset_xyz'"):
        data.make_pipelines("no_such_dataset_xyz", 8)


def test_tfds_unknown_split():
    shared = _shared_metadata_dir()
    with pytest.raises(ValueError, match=r"eval_split='validation'.*Available: \['train', 'test'\]"):
        data.make_pipelines("cifar10", 8, data_dir=shared, eval_split="validation")


def test_real_cifar10(cifar10_dir, monkeypatch):
    """The prepared CIFAR-10: sizes, balance and the per-channel mean, read offline."""
    monkeypatch.setenv("TFDS_DATA_DIR", cifar10_dir)  # found through the variable alone
    train, info = data.load_tfds("cifar10", "train")
    test, test_info = data.load_tfds("cifar10", "test")
    assert (info.num_examples, test_info.num_examples) == (50000, 10000)
    assert info.image_size == (32, 32) and info.num_classes == 10
    sums, count, counts = np.zeros(3), 0, np.zeros(10, np.int64)
    for images, labels in train.batch(10000).as_numpy_iterator():  # vectorised per 10k batch
        sums += images.reshape(-1, 3).sum(0, dtype=np.float64)
        count += images.shape[0] * 32 * 32
        counts += np.bincount(labels, minlength=10)
    assert counts.sum() == 50000 and counts.tolist() == [5000] * 10
    np.testing.assert_allclose(sums / count, (125.3, 123.0, 113.9), atol=0.1)
    test_counts = np.bincount(np.concatenate([y for _, y in test.batch(10000).as_numpy_iterator()]), minlength=10)
    assert test_counts.tolist() == [1000] * 10
    _, _, pinfo = data.make_pipelines("cifar10", 128)
    assert (pinfo.num_train, pinfo.num_eval, pinfo.normalization) == (50000, 10000, "cifar10")


# --------------------------------------------------------------------- augmentation
def _shifts_and_flips(original, pad=4):
    """Every output the CIFAR preset can make from `original`."""
    h, w, _ = original.shape
    padded = np.pad(original, ((pad, pad), (pad, pad), (0, 0)))
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            crop = padded[dy:dy + h, dx:dx + w]
            yield crop
            yield crop[:, ::-1]


def test_cifar_preset_is_pad_crop_flip():
    image = _pattern(32, 32, 0).astype(np.float32)
    outputs = [aug.cifar_augment(tf.constant(image), tf.constant([0, i], tf.int64)).numpy() for i in range(40)]
    candidates = list(_shifts_and_flips(image))
    for out in outputs:
        assert out.shape == (32, 32, 3) and out.dtype == np.float32
        assert any(np.array_equal(out, c) for c in candidates)
    flipped = sum(any(np.array_equal(out, c[:, ::-1]) for c in list(_shifts_and_flips(image))[::2])
                  for out in outputs)
    assert 5 < flipped < 35  # about half are flipped
    assert len({o.tobytes() for o in outputs}) > 30  # many different crops


def test_transforms_keep_shapes_dtypes_and_are_seeded():
    image = tf.constant(_pattern(40, 56, 1))
    seed_a, seed_b = tf.constant([1, 2], tf.int64), tf.constant([1, 3], tf.int64)
    for preset, size in (("cifar", (32, 32)), ("imagenet", (24, 24)), (None, (24, 24))):
        transform = aug.train_transform(preset, size, crop_fraction=0.875 if preset != "cifar" else None,
                                        random_erasing_prob=0.5, randaugment=(2, 0.5))
        a, a2, b = transform(image, seed_a), transform(image, seed_a), transform(image, seed_b)
        assert a.shape == size + (3,) and a.dtype == tf.float32
        assert 0 <= float(tf.reduce_min(a)) and float(tf.reduce_max(a)) <= 255
        np.testing.assert_array_equal(a.numpy(), a2.numpy())  # same seed, same output
        if preset is not None:
            assert not np.array_equal(a.numpy(), b.numpy())
    eval_image = aug.eval_transform((24, 24), 0.875)(image)
    np.testing.assert_array_equal(eval_image.numpy(), eval_resize(image, (24, 24), 0.875).numpy())


def test_random_resized_crop_covers_scale_range():
    image = tf.constant(np.tile(np.arange(64, dtype=np.uint8)[None, :, None], (64, 1, 3)))  # column index
    widths = []
    for i in range(40):
        out = aug.random_resized_crop(image, tf.constant([3, i], tf.int64), (16, 16)).numpy()
        assert out.shape == (16, 16, 3)
        widths.append(out[0, -1, 0] - out[0, 0, 0])  # span of source columns in the crop
    assert min(widths) < 25 and max(widths) > 40  # small and large crops both occur


def _distinct_arrays(n=16, size=12):
    """n images, each labelled with its own class, so examples can be followed."""
    x = np.stack([np.full((size, size, 3), (7 * i) % 220, np.uint8) + _pattern(size, size, i) // 8
                  for i in range(n)])
    return x, np.arange(n)


def test_pipeline_seeded_and_differs_between_epochs():
    x, y = _distinct_arrays()
    source = {"train": (x, y), "test": (x[:4], y[:4])}
    kwargs = dict(augment="cifar", deterministic=True, one_hot=False, random_erasing=0.3)

    def epochs(seed, n=4):
        train, _, _ = data.make_pipelines(source, 16, seed=seed, **kwargs)
        return _first_batches(train, n)

    a, a2, b = epochs(0), epochs(0), epochs(1)
    for (xa, ya), (xa2, ya2) in zip(a, a2):
        np.testing.assert_array_equal(xa, xa2)
        np.testing.assert_array_equal(ya, ya2)
    assert not np.array_equal(a[0][0], b[0][0])
    for xb, yb in a:
        assert xb.shape == (16, 12, 12, 3) and xb.dtype == np.float32 and yb.dtype == np.int32
    # The same example in two different "epochs" (16 examples, 16 per batch) is augmented differently.
    first = {int(label): image for image, label in zip(*a[0])}
    later = {int(label): image for image, label in zip(*a[3])}
    common = set(first) & set(later)
    assert len(common) >= 8
    assert sum(not np.array_equal(first[k], later[k]) for k in common) >= len(common) - 1
    # Shuffled: the first batch is not in source order.
    assert not np.array_equal(a[0][1], np.arange(16))


def test_mixup_and_cutmix_labels_sum_to_one_and_match_pixels():
    images = tf.constant(np.stack([np.zeros((16, 16, 3)), np.full((16, 16, 3), 255.0)] * 4), tf.float32)
    labels = tf.one_hot([0, 1] * 4, 2)
    for kind in ("mixup", "cutmix"):
        for i in range(10):
            mixed, soft = aug.mix_batch(images, labels, tf.constant([i, 7], tf.int64),
                                        mixup_alpha=0.4 if kind == "mixup" else 0.0,
                                        cutmix_alpha=1.0 if kind == "cutmix" else 0.0)
            soft = soft.numpy()
            np.testing.assert_allclose(soft.sum(-1), 1.0, atol=1e-6)
            # Class 1 is the white image: its label weight equals the mean whiteness.
            np.testing.assert_allclose(soft[:, 1], mixed.numpy().mean(axis=(1, 2, 3)) / 255.0, atol=1e-5)
    train, _, _ = data.make_pipelines(_distinct_arrays(), 8, validation_split=0.25, mixup_alpha=0.2,
                                      cutmix_alpha=1.0, seed=0)
    for xb, yb in train.take(4):
        assert xb.shape == (8, 12, 12, 3)
        np.testing.assert_allclose(yb.numpy().sum(-1), 1.0, atol=1e-5)
        assert (yb.numpy().max(-1) < 1.0).any()  # soft labels present


def test_keras_layers_stay_float32_under_mixed_precision():
    import keras

    keras.mixed_precision.set_global_policy("mixed_bfloat16")  # the trainer sets it before the data
    layer = aug.rand_augment().layer
    assert layer.compute_dtype == "float32"
    assert all(sub.compute_dtype == "float32" for sub in layer._flatten_layers())
    assert aug.random_erasing(0.5).layer.compute_dtype == "float32"


def test_randaugment_pipeline_is_seeded():
    x, y = _arrays(n=40, size=16)
    kwargs = dict(randaugment=True, random_erasing=0.5, seed=4, deterministic=True, validation_split=0.25)
    a = _first_batches(data.make_pipelines((x, y), 8, **kwargs)[0], 2)
    b = _first_batches(data.make_pipelines((x, y), 8, **kwargs)[0], 2)
    for (xa, _), (xb, _) in zip(a, b):
        np.testing.assert_array_equal(xa, xb)
        assert xa.shape == (8, 16, 16, 3) and xa.min() >= 0 and xa.max() <= 255


# ----------------------------------------------------------- sharding, options, info
def test_sharding_with_input_context():
    x, y = _distinct_arrays(n=24, size=8)
    source = {"train": (x, y), "test": (x, y)}
    shards, batch_shapes = [], []
    for pipeline_id in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline_id,
                                             num_replicas_in_sync=4)
        train, evals, info = data.make_pipelines(source, 16, input_context=context, one_hot=False,
                                                 augment=None, seed=0)
        xb, yb = next(iter(train))
        batch_shapes.append(xb.shape[0])
        seen = set(np.concatenate([b[1] for b in _first_batches(train, 6)]).tolist())
        eval_ids = np.concatenate([b[1].numpy() for b in evals]).tolist()
        shards.append((seen, eval_ids))
        assert info.num_train == 24  # global count
    assert batch_shapes == [4, 4]  # 16 global / 4 replicas
    (train0, eval0), (train1, eval1) = shards
    assert not train0 & train1 and len(train0 | train1) == 24
    assert not set(eval0) & set(eval1) and sorted(eval0 + eval1) == list(range(24))


def test_options_max_examples_and_info():
    x, y = _distinct_arrays(n=32, size=8)
    train, evals, info = data.make_pipelines({"train": (x, y), "test": (x[:3], y[:3])}, 4, deterministic=True,
                                             max_examples=8, one_hot=False)
    assert train.options().deterministic is True
    assert data.make_pipelines((x, y), 4)[0].options().deterministic is False
    assert train.element_spec[0].shape.as_list() == [4, 8, 8, 3]  # drop_remainder: static batch
    assert evals.element_spec[0].shape.as_list() == [None, 8, 8, 3]  # last partial batch kept
    assert info.num_train == 8
    seen = set(np.concatenate([b[1] for b in _first_batches(train, 20)]).tolist())
    assert len(seen) == 8  # only the first 8 examples ever appear
    d = info.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["image_size"] == [8, 8] and isinstance(d["normalization"]["mean"], list)
    assert set(d) == {"name", "num_classes", "class_names", "num_train", "num_eval", "image_size",
                      "normalization", "crop_fraction"}
    # Evaluation: int labels in order, one pass.
    assert np.concatenate([b[1].numpy() for b in evals]).tolist() == [0, 1, 2]


def test_auto_augment_choice():
    assert aug.resolve_augment("auto", (32, 32)) == "cifar"
    assert aug.resolve_augment("auto", (64, 64)) == "cifar"
    assert aug.resolve_augment("auto", (96, 96)) == "imagenet"
    x, y = _arrays(n=20, size=8)
    _, _, info = data.make_pipelines((x, y), 4, image_size=96)
    assert info.crop_fraction == 0.875 and info.image_size == (96, 96)
