"""Image request guards: format and pixel count from the header, before decoding.

One owner for the limits every entry point that decodes untrusted images
applies: the exported SavedModel's `serving_default` signature (in-graph, so TF
Serving enforces them with no Python) and the folder loader
(`keras_resnet.data`), which share `DEFAULT_MAX_PIXELS`.

Bad requests fail with InvalidArgument: bytes that are not one of the accepted
formats, variants TensorFlow decodes wrongly or unsafely (palette/RLE BMP,
animated WebP), and images whose headers announce more than `max_pixels`
pixels are rejected from the header, before any pixel is decoded; corrupt data
is rejected by the decoder.
"""

import numpy as np
import tensorflow as tf

from keras_resnet.preprocessing import eval_resize

# The largest image (width x height, all frames of a GIF) decoded by default.
DEFAULT_MAX_PIXELS = 40_000_000
# One serving request: at most this many images, and this many pixels in all
# (bounds the decode work and the float32 batch a request can make the server hold).
DEFAULT_MAX_BATCH_SIZE = 64
DEFAULT_MAX_REQUEST_PIXELS = 100_000_000
# What `serving_default` accepts. JPEG XL, which tf.io.decode_image also
# reads in TF 2.21, is refused: its header is not parsed, so the pixel limit
# could not be enforced before decoding.
IMAGE_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WebP")

# Header codes returned by `image_header`.
_UNKNOWN, _JPEG, _PNG, _GIF, _BMP, _WEBP = 0, 1, 2, 3, 4, 5
_UNSUPPORTED = -1  # a known container whose variant is refused (see `image_header`)
# A GIF is a chain of blocks (extensions, frames, data sub-blocks) that must be
# walked to find every frame (see `_gif_pixels`): at most this many steps
# (about 2,000 animation frames), each checking up to _GIF_RUN sub-blocks.
_GIF_MAX_STEPS = 1 << 14
_GIF_RUN = 1024
_PAD = b"\0" * 64


def _bytes(data, start, length):
    """Bytes [start, start + length) of a scalar string as an int64 vector."""
    return tf.cast(tf.io.decode_raw(tf.strings.substr(data, start, length), tf.uint8), tf.int64)


def _le(data, start, length):
    """Little-endian unsigned int at `start`, as int64 (length <= 4, so no overflow)."""
    weights = tf.constant([256 ** i for i in range(length)], tf.int64)
    return tf.reduce_sum(_bytes(data, start, length) * weights)


def _be(data, start, length):
    weights = tf.constant([256 ** (length - 1 - i) for i in range(length)], tf.int64)
    return tf.reduce_sum(_bytes(data, start, length) * weights)


def _area(width, height):
    # float64: two 32-bit header fields can overflow int64 and wrap negative,
    # which would slip under the limit.
    return tf.cast(width, tf.float64) * tf.cast(height, tf.float64)


def _gif_pixels(data, length):
    """Pixels giflib allocates for a GIF: it decodes every frame (`DGifSlurp`)
    before TensorFlow keeps the first, and TF sizes its output by the largest
    frame, not by the logical screen. So walk the block chain and take the max
    of the screen, the largest-frame canvas and the sum of all frame areas.

    Each loop step reads one block header (extension or frame descriptor) or
    advances through a chain of data sub-blocks. Encoders write runs of
    equal-size sub-blocks (255 bytes but the last), so one step checks up to
    `_GIF_RUN` sub-blocks of the current size at once: a 3 MB frame takes a
    few steps. A walk over `_GIF_MAX_STEPS` steps (thousands of frames, or
    crafted tiny sub-blocks) stops and counts as too big (inf).
    """
    raw = tf.cast(tf.io.decode_raw(data, tf.uint8), tf.int32)  # data is padded: header reads stay inside
    n = tf.shape(raw)[0]
    length = tf.cast(length, tf.int32)
    runs = tf.range(1, _GIF_RUN + 1)

    def table_size(packed):  # a colour table follows when bit 7 is set: 3 * 2^(size + 1) bytes
        return tf.where(packed >= 128, 3 * tf.bitwise.left_shift(2, packed % 8), 0)

    def cond(pos, in_chain, total, max_w, max_h, done, steps):
        return tf.logical_not(done) & (pos < length) & (steps < _GIF_MAX_STEPS)

    def body(pos, in_chain, total, max_w, max_h, done, steps):
        b = raw[pos:pos + 10]
        # In a chain: b[0] is a sub-block size, 0 ends the chain. Skip the run
        # of following sub-blocks of the same size in one go.
        size = b[0] + 1
        ahead = pos + size * runs
        same = tf.equal(tf.gather(raw, tf.minimum(ahead, n - 1)), b[0]) & (ahead < length)
        run = tf.where(tf.reduce_all(same), _GIF_RUN, tf.cast(tf.argmin(tf.cast(same, tf.int32)), tf.int32) + 1)
        chain_pos = tf.where(tf.equal(b[0], 0), pos + 1, pos + size * run)
        # Between blocks: 0x21 extension (label byte, then a chain); 0x2C frame
        # (10-byte descriptor, local colour table, LZW code size byte, chain);
        # anything else ends the walk (0x3B trailer, or garbage the decoder rejects).
        is_ext, is_img = tf.equal(b[0], 0x21), tf.equal(b[0], 0x2C)
        frame = tf.logical_not(in_chain) & is_img
        w, h = b[5] + 256 * b[6], b[7] + 256 * b[8]
        block_pos = tf.where(is_ext, pos + 2, pos + 11 + table_size(b[9]))
        return (tf.where(in_chain, chain_pos, block_pos),
                tf.where(in_chain, tf.not_equal(b[0], 0), is_ext | is_img),
                total + tf.where(frame, _area(w, h), tf.constant(0.0, tf.float64)),
                tf.where(frame, tf.maximum(max_w, w), max_w),
                tf.where(frame, tf.maximum(max_h, h), max_h),
                tf.logical_not(in_chain) & tf.logical_not(is_ext | is_img),
                steps + 1)

    zero = tf.constant(0)
    pos, _, total, max_w, max_h, done, _ = tf.while_loop(
        cond, body, (13 + table_size(raw[10]), tf.constant(False), tf.constant(0.0, tf.float64),
                     zero, zero, tf.constant(False), zero))
    screen = _area(raw[6] + 256 * raw[7], raw[8] + 256 * raw[9])
    pixels = tf.reduce_max(tf.stack([screen, _area(max_w, max_h), total]))
    return tf.where(done | (pos >= length), pixels, tf.constant(np.inf, tf.float64))


# The channel masks TensorFlow's BMP decoder assumes for 32-bit pixels: bytes
# B, G, R(, A) in memory. It never reads the masks a BI_BITFIELDS (3) or
# BI_ALPHABITFIELDS (6) file declares.
_BMP_BGR_MASKS = (0x00FF0000, 0x0000FF00, 0x000000FF)


def _bmp_header(data, length):
    """(code, pixels) of a BMP. TensorFlow's decoder reads the 40-byte
    BITMAPINFOHEADER layout, 24/32-bit pixels and 8-bit pixels as grey levels
    (ignoring the palette): other variants decode wrongly or not at all, so
    they are refused unless the 8-bit palette is the identity grey ramp.

    It also ignores the red/green/blue masks of a 32-bit BI_BITFIELDS or
    BI_ALPHABITFIELDS file and always reads B, G, R: a file with RGBA or ABGR
    masks would come out with swapped channels, so only the B, G, R masks are
    accepted. The masks sit at byte 54 whatever the header size (after a
    40-byte header, inside a V2-V5 one)."""
    header_size = _le(data, 14, 4)
    width = _le(data, 18, 4)
    height = _le(data, 22, 4)
    height = tf.where(height >= 2 ** 31, 2 ** 32 - height, height)  # top-down rows: -height
    bpp = _le(data, 28, 2)
    compression = _le(data, 30, 4)
    colors = _le(data, 46, 4)
    palette_at = 14 + header_size

    def grey_palette():
        palette = tf.reshape(_bytes(data, palette_at, 1024), (256, 4))[:, :3]
        return tf.reduce_all(tf.equal(palette, tf.range(256, dtype=tf.int64)[:, None]))

    is_grey = tf.cond((header_size >= 40) & (palette_at + 1024 <= length) & tf.equal(bpp, 8)
                      & (tf.equal(colors, 0) | tf.equal(colors, 256)),
                      grey_palette, lambda: tf.constant(False))
    bgr_masks = (tf.equal(_le(data, 54, 4), _BMP_BGR_MASKS[0]) & tf.equal(_le(data, 58, 4), _BMP_BGR_MASKS[1])
                 & tf.equal(_le(data, 62, 4), _BMP_BGR_MASKS[2]))
    bitfields = (tf.equal(compression, 3) | tf.equal(compression, 6)) & tf.equal(bpp, 32) & bgr_masks
    true_colour = (tf.equal(bpp, 24) | tf.equal(bpp, 32)) & tf.equal(compression, 0) | bitfields
    ok = (header_size >= 40) & (true_colour | (is_grey & tf.equal(compression, 0)))
    return tf.where(ok, _BMP, _UNSUPPORTED), _area(width, height)


def _webp_header(data):
    """(code, pixels) of a WebP: VP8 (lossy), VP8L (lossless) or VP8X (extended:
    canvas size). Animated WebP is refused: TF 2.21 cannot decode it to RGB and
    with `channels=0` corrupts its heap on it."""
    chunk = tf.strings.substr(data, 12, 4)
    vp8x = _area(_le(data, 24, 3) + 1, _le(data, 27, 3) + 1)
    bits = _le(data, 21, 4)
    vp8l = _area(bits % 16384 + 1, (bits // 16384) % 16384 + 1)
    vp8 = _area(_le(data, 26, 2) % 16384, _le(data, 28, 2) % 16384)
    animated = tf.equal(chunk, "VP8X") & tf.equal(tf.bitwise.bitwise_and(_le(data, 20, 1), 2), 2)
    known = tf.equal(chunk, "VP8X") | tf.equal(chunk, "VP8L") | tf.equal(chunk, "VP8 ")
    code = tf.where(known & tf.logical_not(animated), _WEBP, tf.where(known, _UNSUPPORTED, _UNKNOWN))
    pixels = tf.where(tf.equal(chunk, "VP8X"), vp8x, tf.where(tf.equal(chunk, "VP8L"), vp8l, vp8))
    return code, pixels


def image_header(data):
    """Format and pixel count of one encoded image, from its header alone.

    JPEG via `tf.image.extract_jpeg_shape` (raises InvalidArgument on a corrupt
    header); PNG (IHDR), GIF (every frame, see `_gif_pixels`), BMP and WebP
    parsed from their bytes. Nothing is decoded.

    Args:
        data: scalar `tf.string`.

    Returns:
        `(code, pixels)`: int32 code (`_JPEG`..`_WEBP`; `_UNKNOWN` = 0 for bytes
        that are none of `IMAGE_FORMATS`, `_UNSUPPORTED` = -1 for refused
        variants) and float64 pixel count (0 when unknown).
    """
    length = tf.cast(tf.strings.length(data), tf.int64)
    raw = data
    # Pad so that parsing a header from a too-short string reads zeros instead
    # of failing in tf.strings.substr (the decoder then rejects the request).
    data = tf.strings.join([data, tf.constant(_PAD)])
    magic = tf.strings.substr(data, 0, 4)
    none = (tf.constant(_UNKNOWN), tf.constant(0.0, tf.float64))

    def jpeg():
        shape = tf.image.extract_jpeg_shape(raw)
        return tf.constant(_JPEG), _area(shape[0], shape[1])

    def png():
        return tf.constant(_PNG), _area(_be(data, 16, 4), _be(data, 20, 4))

    def gif():
        return tf.constant(_GIF), _gif_pixels(data, length)

    def bmp():
        code, pixels = _bmp_header(data, length)
        return tf.cast(code, tf.int32), pixels

    def webp():
        code, pixels = _webp_header(data)
        return tf.cast(code, tf.int32), pixels

    # The same signatures tf.io.decode_image dispatches on.
    is_jpeg = tf.equal(tf.strings.substr(data, 0, 3), b"\xff\xd8\xff")
    is_png = tf.equal(tf.strings.substr(data, 0, 8), b"\x89PNG\r\n\x1a\n") & (length >= 24)
    is_gif = tf.equal(tf.strings.substr(data, 0, 3), b"GIF") & (length >= 13)
    is_bmp = tf.equal(tf.strings.substr(data, 0, 2), b"BM") & (length >= 54)
    is_webp = tf.equal(magic, b"RIFF") & tf.equal(tf.strings.substr(data, 8, 4), b"WEBP") & (length >= 30)
    return tf.case([(is_jpeg, jpeg), (is_png, png), (is_gif, gif), (is_bmp, bmp), (is_webp, webp)],
                   default=lambda: none)


def header_pixels(data):
    """Pixel count announced by an image header (float64), without decoding; -1
    for bytes that are not an accepted format or a refused variant."""
    code, pixels = image_header(data)
    return tf.where(code > 0, pixels, tf.constant(-1.0, tf.float64))


def refused_bmp(data):
    """Whether TensorFlow would misread this BMP (see `_bmp_header`): True for
    the variants `serving_default` refuses, False for those it decodes.

    For the folder loader, which hands the refused ones to Pillow (it reads
    palettes and channel masks) instead of TensorFlow.

    Args:
        data: the file's bytes (its first few KB suffice: the header, the
            masks and an 8-bit palette).
    """
    code, _ = image_header(tf.constant(data))
    return int(code) == _UNSUPPORTED


def _resize(images, image_size, crop_fraction):
    """`eval_resize`, skipping the resample at run time when a plain resize would
    be the identity (eval_resize only knows static shapes; requests have none)."""
    if crop_fraction is not None and crop_fraction < 1.0:
        return eval_resize(images, image_size, crop_fraction)
    height, width = image_size
    shape = tf.shape(images)
    same = tf.equal(shape[-3], height) & tf.equal(shape[-2], width)
    out = tf.cond(same, lambda: tf.cast(images, tf.float32),
                  lambda: eval_resize(images, image_size, crop_fraction))
    out.set_shape(images.shape[:-3].concatenate([height, width, images.shape[-1]]))
    return out


def decode_image(data, image_size, crop_fraction=None, max_pixels=DEFAULT_MAX_PIXELS, index=0):
    """Encoded bytes -> float32 RGB image on a 0-255 scale, eval-resized.

    The header is checked first (format, variant, `max_pixels`); only then is
    the image decoded: grayscale expanded to RGB, alpha dropped (not
    composited), 16-bit PNG reduced to 8 bits (libpng keeps the high byte),
    CMYK/YCCK JPEG converted to RGB by libjpeg, GIF's first frame.

    Raises (at run time):
        InvalidArgumentError: not an accepted format, a refused variant, over
            `max_pixels`, or corrupt data.
    """
    code, pixels = image_header(data)
    checks = [
        tf.debugging.Assert(tf.not_equal(code, _UNKNOWN), [tf.strings.format(
            "image_bytes[{}] is not a JPEG, PNG, GIF, BMP or WebP image", index)]),
        tf.debugging.Assert(tf.not_equal(code, _UNSUPPORTED), [tf.strings.format(
            "image_bytes[{}] is an unsupported variant (palette, RLE, 16-bit or non-BGR bitfield BMP; "
            "animated WebP): convert it to PNG or JPEG", index)]),
        tf.debugging.Assert(pixels <= float(max_pixels), [tf.strings.join([
            "image_bytes[", tf.strings.as_string(index), "] has ", tf.strings.as_string(pixels, precision=0),
            f" pixels, more than max_pixels={max_pixels}: rejected before decoding"])]),
    ]
    with tf.control_dependencies(checks):
        image = tf.io.decode_image(data, channels=3, expand_animations=False, dtype=tf.uint8)
    image.set_shape((None, None, 3))
    return _resize(image, tuple(image_size), crop_fraction)
