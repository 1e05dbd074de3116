"""A bounded, seeded fuzz pass over the image-header guards shared by the
serving graph and the folder loader (`keras_resnet.image_guard`).

Mutated JPEG/PNG/GIF/BMP/WebP bytes, most mutations in the header: the guard
raises nothing but InvalidArgumentError, and whenever it accepts an image
(known format, at most `LIMIT` pixels announced) the decoder never produces
more pixels than the header announced, so no accepted request allocates past
the limit. The folder loader's check on the same bytes raises nothing but
BadImageError and never accepts more than the limit. Each pass stops after
`BUDGET_SECONDS` (tier 1).
"""

import io
import time

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_resnet import image_guard
from keras_resnet.data import folders

LIMIT = 5000          # pixels; the base images have 768
BUDGET_SECONDS = 4.0  # per pass
MIN_CASES = 150


def _bases():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (24, 32, 3)).astype("uint8")

    def enc(fmt, mode="RGB", **kw):
        out = io.BytesIO()
        Image.fromarray(x).convert(mode).save(out, fmt, **kw)
        return out.getvalue()

    frames = [Image.fromarray(rng.integers(0, 255, (24, 32, 3)).astype("uint8")) for _ in range(3)]
    anim = io.BytesIO()
    frames[0].save(anim, "GIF", save_all=True, append_images=frames[1:])
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
    import hostile_images as h

    return [enc("JPEG"), enc("JPEG", progressive=True), enc("PNG"), enc("PNG", "P"), enc("GIF"), anim.getvalue(),
            enc("BMP"), h.bmp32(x, h.BGRA_MASKS), h.bmp32(x, h.BGRA_MASKS, header_size=124), enc("WEBP"),
            enc("WEBP", lossless=True)]


def _mutate(base, rng):
    """1-3 edits; three in four land in the first 64 bytes (the headers)."""
    b = bytearray(base)
    for _ in range(int(rng.integers(1, 4))):
        if not b:
            break
        head = rng.random() < 0.75
        pos = int(rng.integers(0, min(len(b), 64) if head else len(b)))
        op = int(rng.integers(0, 4))
        if op == 0:
            b[pos] = int(rng.integers(0, 256))
        elif op == 1:
            b[pos] = 0xFF if rng.random() < 0.5 else 0x00
        elif op == 2:
            del b[pos:]
        else:
            b[pos:pos] = bytes(rng.integers(0, 256, int(rng.integers(1, 5))).astype("uint8"))
    return bytes(b)


@tf.function(input_signature=[tf.TensorSpec([], tf.string)], autograph=False)
def _header(data):
    return image_guard.image_header(data)


@tf.function(input_signature=[tf.TensorSpec([], tf.string)], autograph=False)
def _decoded_shape(data):
    return tf.shape(tf.io.decode_image(data, channels=3, expand_animations=False))


@tf.function(input_signature=[tf.TensorSpec([], tf.string)], autograph=False)
def _serve_decode(data):
    return image_guard.decode_image(data, (16, 16), max_pixels=LIMIT, index=tf.constant(0))


def _cases(seed):
    rng = np.random.default_rng(seed)
    bases = _bases()
    start, n = time.perf_counter(), 0
    while n < MIN_CASES or time.perf_counter() - start < BUDGET_SECONDS:
        if time.perf_counter() - start > 3 * BUDGET_SECONDS:
            break
        yield _mutate(bases[n % len(bases)], rng)
        n += 1


def test_fuzzed_headers_never_accept_more_than_they_announce():
    accepted = refused = 0
    for data in _cases(seed=25):
        try:
            code, pixels = (float(v) for v in _header(data))
        except tf.errors.InvalidArgumentError:  # extract_jpeg_shape on a corrupt JPEG header
            refused += 1
            continue
        try:
            _serve_decode(data)
        except tf.errors.InvalidArgumentError:
            pass
        if code <= 0 or pixels > LIMIT:
            refused += 1
            continue
        accepted += 1
        try:
            h, w, _ = (int(v) for v in _decoded_shape(data))
        except tf.errors.InvalidArgumentError:
            continue
        assert h * w <= pixels, (data[:32], h, w, pixels)
    assert accepted > 20 and refused > 20, (accepted, refused)


def test_fuzzed_files_in_the_folder_loader_fail_only_as_bad_images(tmp_path):
    path = tmp_path / "f.img"
    accepted = rejected = 0
    for data in _cases(seed=26):
        path.write_bytes(data)
        try:
            info = folders.inspect_image(str(path), max_pixels=LIMIT)
        except folders.BadImageError:
            rejected += 1
            continue
        accepted += 1
        assert info.height * info.width <= LIMIT
    assert accepted > 20 and rejected > 20, (accepted, rejected)


@pytest.mark.parametrize("data", [b"", b"GIF89a", b"BM" + b"\xff" * 60, b"\x89PNG\r\n\x1a\n" + b"\xff" * 30,
                                  b"RIFF\0\0\0\0WEBPVP8X" + b"\xff" * 20])
def test_degenerate_headers(data):
    """Too short or all-0xFF headers: parsed without a crash, refused by serving."""
    _header(data)
    with pytest.raises(tf.errors.InvalidArgumentError):
        _serve_decode(data)
