"""Good and hostile encoded images, built in a few lines each (no downloads).

Shared by the load test (`load_serving.py`) and the reliability tests (the
tests put this folder on `sys.path`): numpy, Pillow and struct only, so a
process that cannot import keras can build them too.
"""

import io
import struct

import numpy as np
from PIL import Image

# Masks of a 32-bit BI_BITFIELDS BMP, in (red, green, blue, alpha) order.
BGRA_MASKS = (0x00FF0000, 0x0000FF00, 0x000000FF, 0xFF000000)  # what TensorFlow assumes
RGBA_MASKS = (0x000000FF, 0x0000FF00, 0x00FF0000, 0xFF000000)  # bytes R, G, B, A
ABGR_MASKS = (0xFF000000, 0x00FF0000, 0x0000FF00, 0x000000FF)  # bytes A, B, G, R


def encode(pixels, fmt, mode="RGB", **kwargs):
    out = io.BytesIO()
    Image.fromarray(np.asarray(pixels, np.uint8)).convert(mode).save(out, fmt, **kwargs)
    return out.getvalue()


def colourful(height, width, seed=0):
    """uint8 RGB with distinct channels (a channel swap changes it)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([40 + 180 * xx / max(width, 1), 200 - 150 * yy / max(height, 1),
                     np.full(xx.shape, 90.0)], -1)
    return np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)


def bmp32(rgb, masks, compression=3, header_size=40, alpha=255):
    """A bottom-up 32-bit BMP whose pixels are laid out by `masks` (r, g, b, a).

    compression 3 is BI_BITFIELDS, 6 BI_ALPHABITFIELDS; with a 40-byte header
    the masks follow it (three, or four for 6), a larger (V4/V5) header holds
    all four itself.
    """
    rgb = np.asarray(rgb, np.uint8)
    h, w, _ = rgb.shape
    channels = [rgb[..., 0], rgb[..., 1], rgb[..., 2], np.full((h, w), alpha, np.uint8)]
    value = np.zeros((h, w), np.uint32)
    for channel, mask in zip(channels, masks):
        if mask:
            shift = (mask & -mask).bit_length() - 1
            value |= (channel.astype(np.uint32) << np.uint32(shift)) & np.uint32(mask)
    data = value[::-1].astype("<u4").tobytes()
    info = struct.pack("<IiiHHIIiiII", header_size, w, h, 1, 32, compression, len(data), 2835, 2835, 0, 0)
    if header_size > 40:
        info += struct.pack("<4I", *masks) + b"\0" * (header_size - 56)
        extra = b""
    else:
        extra = struct.pack("<4I" if compression == 6 else "<3I", *(masks if compression == 6 else masks[:3]))
    offset = 14 + len(info) + len(extra)
    return b"BM" + struct.pack("<IHHI", offset + len(data), 0, 0, offset) + info + extra + data


def gif_frames(data):
    """Byte offsets of each frame's image descriptor (0x2C) in a GIF."""
    def table(packed):
        return 3 * (2 << (packed & 7)) if packed & 0x80 else 0

    pos, found = 13 + table(data[10]), []
    while pos < len(data):
        kind = data[pos]
        if kind == 0x21:
            pos += 2
        elif kind == 0x2C:
            found.append(pos)
            pos += 10 + table(data[pos + 9]) + 1
        else:
            return found
        while data[pos]:  # data sub-blocks
            pos += data[pos] + 1
        pos += 1
    return found


def gif_with_huge_later_frame(width=60000, height=60000, seed=0):
    """A small two-frame GIF whose second frame's descriptor announces
    width x height: the first frame (what Pillow reports) looks harmless,
    giflib would allocate the later one."""
    frames = [Image.fromarray(colourful(16, 16, seed + i)) for i in range(2)]
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:])
    data = bytearray(out.getvalue())
    second = gif_frames(data)[1]
    data[second + 5:second + 9] = struct.pack("<HH", width, height)
    return bytes(data)


def png_header_only(width, height):
    """Signature + IHDR, no pixel data."""
    ihdr = struct.pack(">II", width, height) + bytes([8, 2, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + b"\0" * 4


def hostile_requests(max_pixels, seed=0):
    """{kind: bytes} that a guarded server must refuse (InvalidArgument), each
    alone: garbage, empty, truncated, over the pixel limit, bitfield BMPs with
    RGBA/ABGR masks, a GIF with a huge later frame."""
    small = colourful(24, 32, seed)
    side = int(max_pixels ** 0.5) + 2
    return {
        "garbage": bytes(np.random.default_rng(seed).integers(0, 256, 200, dtype=np.uint8)),
        "empty": b"",
        "truncated_png": encode(small, "PNG")[:60],
        "truncated_jpeg": encode(small, "JPEG")[:120],
        "png_bomb_header": png_header_only(100_000, 100_000),
        "jpeg_over_limit": encode(np.zeros((side, side, 3), np.uint8), "JPEG"),
        "gif_huge_later_frame": gif_with_huge_later_frame(seed=seed),
        "bmp_rgba_masks": bmp32(small, RGBA_MASKS),
        "bmp_abgr_masks_v5": bmp32(small, ABGR_MASKS, header_size=124),
        "bmp_alphabitfields_rgba": bmp32(small, RGBA_MASKS, compression=6),
    }
