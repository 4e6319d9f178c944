"""The striped PNG writer: every mode exact through Pillow and through zlib's own checks."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from supersizeme.service import png

RNG = np.random.default_rng(0)


def chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """The file's chunks, each one's CRC checked."""
    assert data.startswith(png.PNG_SIGNATURE)
    found, offset = [], len(png.PNG_SIGNATURE)
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        body = data[offset + 8 : offset + 8 + length]
        (crc,) = struct.unpack(">I", data[offset + 8 + length : offset + 12 + length])
        assert crc == zlib.crc32(kind + body), kind
        found.append((kind, body))
        offset += 12 + length
    return found


def paeth_by_the_spec(rows: np.ndarray, bpp: int) -> np.ndarray:
    """PNG's Paeth filter written out byte by byte, as the specification states it."""
    out = np.zeros((rows.shape[0], rows.shape[1] + 1), np.uint8)
    for y in range(rows.shape[0]):
        out[y, 0] = 4
        for x in range(rows.shape[1]):
            a = int(rows[y, x - bpp]) if x >= bpp else 0
            b = int(rows[y - 1, x]) if y else 0
            c = int(rows[y - 1, x - bpp]) if x >= bpp and y else 0
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            predictor = a if pa <= pb and pa <= pc else b if pb <= pc else c
            out[y, x + 1] = (int(rows[y, x]) - predictor) % 256
    return out


def test_adler32_of_a_join_is_combined_from_its_parts():
    data = RNG.integers(0, 256, 200_000, dtype=np.uint8).tobytes()
    for cut in (0, 1, 65_521, 100_000, 200_000):
        first, second = data[:cut], data[cut:]
        combined = png.adler32_combine(zlib.adler32(first), zlib.adler32(second), len(second))
        assert combined == zlib.adler32(data), cut


def test_the_paeth_filter_is_the_specifications():
    rows = RNG.integers(0, 256, (6, 15), dtype=np.uint8)
    expected = paeth_by_the_spec(rows, bpp=3)
    got = png.paeth_filtered(rows, np.zeros(15, np.uint8), bpp=3)
    np.testing.assert_array_equal(got, expected)
    # A stripe further down is filtered against the row above it, as one image would be.
    lower = png.paeth_filtered(rows[3:], rows[2], bpp=3)
    np.testing.assert_array_equal(lower, expected[3:])


@pytest.mark.parametrize(
    ("shape", "dtype", "mode"),
    [
        ((37, 53), np.uint8, "L"),
        ((37, 53, 2), np.uint8, "LA"),
        ((37, 53, 3), np.uint8, "RGB"),
        ((37, 53, 4), np.uint8, "RGBA"),
        ((37, 53), np.uint16, "I;16"),
        ((1, 1, 3), np.uint8, "RGB"),
    ],
)
def test_every_mode_reads_back_exactly(shape, dtype, mode):
    samples = RNG.integers(0, np.iinfo(dtype).max + 1, shape, dtype=dtype)
    data = png.encode_png(samples, threads=2)
    image = Image.open(io.BytesIO(data))
    assert image.mode == mode and image.size == (shape[1], shape[0])
    np.testing.assert_array_equal(np.asarray(image).astype(np.int64), samples.astype(np.int64))


def test_many_stripes_on_many_threads_make_one_valid_stream(monkeypatch):
    monkeypatch.setattr(png, "STRIPE_BYTES", 1000)
    samples = RNG.integers(0, 256, (301, 97, 3), dtype=np.uint8)
    data = png.encode_png(samples, threads=2)
    found = chunks(data)
    kinds = [kind for kind, _ in found]
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND" and kinds.count(b"IDAT") > 1
    # zlib checks the Adler-32 over the stripes at the end of the stream.
    raw = zlib.decompress(b"".join(body for kind, body in found if kind == b"IDAT"))
    assert len(raw) == 301 * (97 * 3 + 1)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), samples)
    assert png.encode_png(samples, threads=1) == data


def test_a_profile_is_written_compressed_and_read_back():
    profile = bytes(range(256)) * 8
    data = png.encode_png(np.zeros((4, 4, 3), np.uint8), icc_profile=profile)
    assert [kind for kind, _ in chunks(data)][:2] == [b"IHDR", b"iCCP"]
    assert Image.open(io.BytesIO(data)).info["icc_profile"] == profile


def test_what_png_cannot_hold_is_refused():
    with pytest.raises(ValueError, match="uint8 or uint16"):
        png.encode_png(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="5 channels"):
        png.encode_png(np.zeros((4, 4, 5), np.uint8))
