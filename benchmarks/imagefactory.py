"""Real image files, made in memory with Pillow (or by hand where Pillow will not write them)."""

from __future__ import annotations

import re
import struct
import zlib
from io import BytesIO

import numpy as np
from PIL import Image, ImageCms

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def gradient(width: int, height: int, channels: int = 3) -> np.ndarray:
    """A uint8 HxWxC (HxW for one channel) image whose channels differ, so mix-ups show."""
    ys, xs = np.mgrid[0:height, 0:width]
    planes = [(xs * 7 + ys * 3 + 40 * c) % 256 for c in range(channels)]
    image = np.stack(planes, axis=2).astype(np.uint8)
    return image[..., 0] if channels == 1 else image


def encoded(image: Image.Image, image_format: str, **options: object) -> bytes:
    buffer = BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def png(image: Image.Image, **options: object) -> bytes:
    return encoded(image, "PNG", **options)


def jpeg(image: Image.Image, **options: object) -> bytes:
    return encoded(image, "JPEG", **options)


def camera_jpeg(width: int, height: int) -> bytes:
    """A JPEG the size of a phone's photo: photo-like detail everywhere, and the sensor
    noise that makes a 12 MP photo 4-5 MB at the quality cameras write (94 here)."""
    rng = np.random.default_rng(3)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = 128 + 60 * np.sin(x / 37.0) * np.cos(y / 23.0) + 30 * np.sin((x + y) / 9.0)
    rgb = np.stack([base, base[::-1], base[:, ::-1]], axis=2)
    rgb += rng.normal(0, 6, rgb.shape).astype(np.float32)
    buffer = BytesIO()
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=94)
    return buffer.getvalue()


def reopened(data: bytes) -> Image.Image:
    image = Image.open(BytesIO(data))
    image.load()
    return image


def srgb_profile() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def apng(width: int = 16, height: int = 16) -> bytes:
    frames = [Image.new("RGB", (width, height), colour) for colour in ("red", "blue")]
    return png(frames[0], save_all=True, append_images=frames[1:])


def png_chunk(chunk_type: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(chunk_type + payload)
    return struct.pack(">I", len(payload)) + chunk_type + payload + struct.pack(">I", crc)


def handmade_png(
    width: int, height: int, *, bit_depth: int, colour_type: int, idat: bytes
) -> bytes:
    """A PNG with whatever IHDR we say, and ``idat`` as its compressed image data."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (
        PNG_SIGNATURE
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def header_bomb(width: int, height: int) -> bytes:
    """A few dozen bytes declaring a width x height 8-bit grey image with almost no data."""
    return handmade_png(width, height, bit_depth=8, colour_type=0, idat=zlib.compress(bytes(1024)))


def rgb48_png(samples: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG (Pillow cannot write these) from uint16 HxWx3."""
    height, width, _ = samples.shape
    rows = np.ascontiguousarray(samples, dtype=">u2").view(np.uint8).reshape(height, width * 6)
    scanlines = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1)
    return handmade_png(
        width, height, bit_depth=16, colour_type=2, idat=zlib.compress(scanlines.tobytes())
    )


def with_bad_crc(data: bytes, chunk_type: bytes) -> bytes:
    """``data`` with the CRC of its first ``chunk_type`` chunk flipped."""
    start = data.index(chunk_type) - 4
    (length,) = struct.unpack(">I", data[start : start + 4])
    crc_at = start + 8 + length
    corrupted = bytearray(data)
    corrupted[crc_at] ^= 0xFF
    return bytes(corrupted)


def grey_profile() -> bytes:
    """An ICC profile that declares grey data (Pillow cannot make one: sRGB relabelled)."""
    profile = bytearray(srgb_profile())
    profile[16:20] = b"GRAY"  # the header's data colour space
    return bytes(profile)


def jpeg_segments(data: bytes) -> list[bytes]:
    """A JPEG as Pillow writes it, cut into its marker segments from SOI to EOI.

    A scan's segment runs on over its entropy-coded data, up to the next marker that is
    neither a stuffed 0xFF (0xFF00) nor a restart marker.
    """
    segments, position = [data[:2]], 2
    while data[position + 1] != 0xD9:
        (length,) = struct.unpack_from(">H", data, position + 2)
        end = position + 2 + length
        if data[position + 1] == 0xDA:
            end = re.compile(rb"\xff[^\x00\xd0-\xd7]").search(data, end).start()
        segments.append(data[position:end])
        position = end
    return [*segments, data[position : position + 2]]


def many_scan_jpeg(image: Image.Image, extra_scans: int, **options: object) -> bytes:
    """``image`` as a progressive JPEG with ``extra_scans`` more copies of its smallest scan.

    libjpeg decodes every copy over the whole image and only warns that the progression
    repeats itself; for a flat image the smallest scan is 12 bytes (one run of empty
    blocks), the decode-time trap of a progressive JPEG.
    """
    segments = jpeg_segments(jpeg(image, progressive=True, **options))
    smallest = min((s for s in segments if s[1] == 0xDA), key=len)
    at = segments.index(smallest) + 1
    return b"".join([*segments[:at], *[smallest] * extra_scans, *segments[at:]])


def jpeg_with_segments(data: bytes, *extra: bytes) -> bytes:
    """A JPEG with ``extra`` bytes (segments, padding) put between SOI and its first marker."""
    return data[:2] + b"".join(extra) + data[2:]


def jpeg_segment(code: int, payload: bytes) -> bytes:
    """A JPEG marker segment: 0xFF, ``code``, the length, ``payload``."""
    return bytes([0xFF, code]) + struct.pack(">H", len(payload) + 2) + payload


def jpeg_comment(payload: bytes) -> bytes:
    """A COM (comment) marker segment."""
    return jpeg_segment(0xFE, payload)


def png_with_chunks(data: bytes, *chunks: bytes, after_image: bool = False) -> bytes:
    """A PNG with ``chunks`` put after IHDR, or just before IEND with ``after_image``."""
    at = len(data) - 12 if after_image else len(PNG_SIGNATURE) + 25
    return data[:at] + b"".join(chunks) + data[at:]
