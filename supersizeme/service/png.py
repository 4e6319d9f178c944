"""A PNG writer for large results: filtered and compressed in stripes on every core.

A x2 result has four times its input's pixels, so a 12 MP photo's is 48 MP, and zlib in
one thread (Pillow's writer) takes seconds for it. Here the rows are cut into stripes; each
stripe is filtered in numpy and compressed on its own thread into raw deflate blocks that
end on a byte boundary (a sync flush), so that the stripes' blocks joined in order are one
valid zlib stream; each stripe's Adler-32 is taken on its thread and the stream's is
combined from them, so that no stripe's filtered rows outlive its compression. Decoders see
an ordinary PNG: one IHDR, an optional iCCP, IDAT chunks, IEND.

Every row uses the Paeth filter (PNG filter type 4), which predicts each byte from its
left, upper and upper-left neighbours, computed for a whole stripe at once in numpy rather
than chosen row by row; the files come out the size of Pillow's (benchmarks/encode.md).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from typing import Any

import numpy as np
from isal import isal_zlib

from supersizeme.service.threads import mapped

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PAETH = 4
# ISA-L's level 2 (of 0-3): on 48 MP photo-like results (benchmarks/encode.md, one run on an
# AMD EPYC with AVX-512 BF16) levels 1 to 3 wrote files the size of zlib's level 3 in under
# half of zlib's time on the same stripes, level 2 as fast as level 1 and a little smaller;
# level 0 cost a fifth more bytes.
LEVEL = 2
STRIPE_BYTES = 4 * 1024 * 1024  # of raw rows: enough per thread call to amortise it
_COLOUR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}  # channels -> L, LA, RGB, RGBA


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(data, zlib.crc32(kind))
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def paeth_filtered(rows: np.ndarray, above: np.ndarray, bpp: int) -> np.ndarray:
    """``rows`` (h x row bytes, uint8) as Paeth-filtered scanlines, each with its filter
    byte first; ``above`` is the row before the first (zeros at the image's top)."""
    current = rows.astype(np.int16)
    up = np.vstack([above[None].astype(np.int16), current[:-1]])
    left = np.zeros_like(current)
    left[:, bpp:] = current[:, :-bpp]
    upper_left = np.zeros_like(current)
    upper_left[:, bpp:] = up[:, :-bpp]
    to_left = np.abs(up - upper_left)  # |p - a| with p = a + b - c
    to_up = np.abs(left - upper_left)  # |p - b|
    to_corner = np.abs(left + up - 2 * upper_left)  # |p - c|
    predicted = np.where(
        (to_left <= to_up) & (to_left <= to_corner),
        left,
        np.where(to_up <= to_corner, up, upper_left),
    )
    filtered = np.empty((rows.shape[0], rows.shape[1] + 1), np.uint8)
    filtered[:, 0] = PAETH
    filtered[:, 1:] = (current - predicted).astype(np.uint8)
    return filtered


ADLER_BASE = 65521  # the largest prime below 2**16 (RFC 1950)


def adler32_combine(first: int, second: int, second_length: int) -> int:
    """The Adler-32 of two byte strings joined, from each one's and the second's length.

    Adler-32 is two sums modulo 65521: A, the bytes plus one, and B, the running A's. After
    the join the second's A grows by the first's A - 1, and its B by the first's B plus
    second_length times (the first's A - 1).
    """
    a1, b1 = first & 0xFFFF, first >> 16
    a2, b2 = second & 0xFFFF, second >> 16
    a = (a1 + a2 - 1) % ADLER_BASE
    b = (b1 + b2 + second_length * (a1 - 1)) % ADLER_BASE
    return a | b << 16


def _scanlines(samples: np.ndarray) -> tuple[np.ndarray, int, int]:
    """The image as rows of big-endian bytes, its bit depth and bytes per pixel."""
    channels = 1 if samples.ndim == 2 else samples.shape[2]
    if samples.dtype == np.uint16:
        raw = samples.astype(">u2").view(np.uint8)
        depth = 16
    elif samples.dtype == np.uint8:
        raw, depth = samples, 8
    else:
        raise ValueError(f"samples must be uint8 or uint16, not {samples.dtype}")
    height, width = samples.shape[:2]
    bpp = channels * depth // 8
    return np.ascontiguousarray(raw).reshape(height, width * bpp), depth, bpp


def _stripes(height: int, row_bytes: int) -> Iterator[tuple[int, int]]:
    rows = max(1, STRIPE_BYTES // max(1, row_bytes))
    for top in range(0, height, rows):
        yield top, min(height, top + rows)


def encode_png(
    samples: np.ndarray,
    icc_profile: bytes | None = None,
    threads: int = 1,
    level: int = LEVEL,
    deflate: Any = isal_zlib,
) -> bytes:
    """PNG bytes of ``samples``: HxW grey, HxWx2 grey and alpha, HxWx3 RGB or HxWx4 RGBA,
    uint8 (or uint16 for 16-bit), compressed on ``threads`` threads at once.

    ``deflate`` is a module with zlib's ``compressobj`` (ISA-L's by default; the encode
    benchmark compares others) and ``level`` its compression level."""
    channels = 1 if samples.ndim == 2 else samples.shape[2]
    if channels not in _COLOUR_TYPES:
        raise ValueError(f"cannot write {channels} channels as PNG")
    rows, depth, bpp = _scanlines(samples)
    height, width = samples.shape[:2]
    last = height - 1

    def compress(span: tuple[int, int]) -> tuple[int, int, bytes]:
        top, bottom = span
        above = rows[top - 1] if top else np.zeros(rows.shape[1], np.uint8)
        filtered = paeth_filtered(rows[top:bottom], above, bpp).tobytes()
        compressor = deflate.compressobj(level, deflate.DEFLATED, -15)
        end = deflate.Z_FINISH if bottom - 1 == last else deflate.Z_SYNC_FLUSH
        compressed = compressor.compress(filtered) + compressor.flush(end)
        return zlib.adler32(filtered), len(filtered), compressed

    header = struct.pack(">IIBBBBB", width, height, depth, _COLOUR_TYPES[channels], 0, 0, 0)
    parts = [PNG_SIGNATURE, _chunk(b"IHDR", header)]
    if icc_profile:
        parts.append(_chunk(b"iCCP", b"ICC profile\0\0" + zlib.compress(icc_profile)))
    checksum = 1
    stripes = []
    for adler, length, compressed in mapped(
        compress, _stripes(height, rows.shape[1]), threads, "png"
    ):
        checksum = adler32_combine(checksum, adler, length)
        stripes.append(compressed)
    # One IDAT chunk per stripe: the first opens the zlib stream with its header (a 32 KiB
    # window, fast compression: RFC 1950), the last closes it with the Adler-32. Each
    # stripe's bytes are replaced by its chunk as it is made, so the file is held twice at
    # most (the chunks and the joined result), never three times.
    stripes[0] = b"\x78\x01" + stripes[0]
    stripes[-1] += struct.pack(">I", checksum)
    for index, compressed in enumerate(stripes):
        stripes[index] = _chunk(b"IDAT", compressed)
    return b"".join([*parts, *stripes, _chunk(b"IEND", b"")])
