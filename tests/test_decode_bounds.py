"""Uploads whose decoding would cost far more than their size: refused over HTTP, at once.

The limits themselves (each side of every cap) are tested in test_images.py; here, what a
client sees, and how fast, through the app's test client with the tiny RDN.
"""

from __future__ import annotations

import io
import time
import zlib

import pytest
from PIL import Image

from benchmarks import imagefactory as factory
from supersizeme.service.images import MAX_PNG_COMPRESSED_CHUNKS

BODY_LIMIT = 5 * 1024 * 1024
# The pixel cap's 2 MP, flat: each extra scan is then 12 bytes that libjpeg decodes over
# 31,212 blocks.
AT_THE_CAP = Image.new("RGB", (1632, 1224), (120, 130, 140))


def post(client, data: bytes, content_type: str):
    started = time.perf_counter()
    response = client.post("/supersizeme/", data=data, content_type=content_type)
    return response, time.perf_counter() - started


def test_a_progressive_jpeg_of_20000_scans_is_refused_within_a_second(client):
    # 252 KB that took Pillow 4.6 s to decode (benchmarks/decode-bounds.md).
    data = factory.many_scan_jpeg(AT_THE_CAP, 20_000)
    assert len(data) < BODY_LIMIT
    response, seconds = post(client, data, "image/jpeg")
    assert response.status_code == 422, response.get_data(as_text=True)
    body = response.get_json()
    assert body["error"] == "too_many_scans" and "scans" in body["message"]
    assert seconds < 1, seconds


def test_a_normal_progressive_jpeg_is_upscaled(client):
    data = factory.jpeg(Image.fromarray(factory.gradient(40, 30)), progressive=True)
    assert sum(segment[1] == 0xDA for segment in factory.jpeg_segments(data)) > 1
    response, _ = post(client, data, "image/jpeg")
    assert response.status_code == 200, response.get_data(as_text=True)
    assert Image.open(io.BytesIO(response.data)).size == (80, 60)


SMALL_JPEG = factory.jpeg(Image.fromarray(factory.gradient(40, 30)))
SMALL_PNG = factory.png(Image.fromarray(factory.gradient(40, 30)))
REFUSALS = {
    "JPEG comments": (
        factory.jpeg_with_segments(SMALL_JPEG, *[factory.jpeg_comment(b"")] * (BODY_LIMIT // 8)),
        "image/jpeg",
        "too_many_segments",
    ),
    "JPEG fill bytes": (
        factory.jpeg_with_segments(SMALL_JPEG, b"\xff" * (BODY_LIMIT - len(SMALL_JPEG))),
        "image/jpeg",
        "too_many_segments",
    ),
    "empty PNG chunks": (
        factory.png_with_chunks(
            SMALL_PNG, *[factory.png_chunk(b"prIv", b"")] * (BODY_LIMIT // 12 - 100)
        ),
        "image/png",
        "too_many_segments",
    ),
    "PNG text bombs": (
        factory.png_with_chunks(
            SMALL_PNG,
            *[factory.png_chunk(b"zTXt", b"\0\0" + zlib.compress(bytes(2**20)))]
            * (MAX_PNG_COMPRESSED_CHUNKS + 1),
        ),
        "image/png",
        "too_much_metadata",
    ),
}


@pytest.mark.parametrize("case", REFUSALS)
def test_other_costly_structures_are_refused_with_their_code(client, case):
    data, content_type, code = REFUSALS[case]
    assert len(data) <= BODY_LIMIT
    response, seconds = post(client, data, content_type)
    assert response.status_code == 422, response.get_data(as_text=True)
    assert response.get_json()["error"] == code
    assert seconds < 1, seconds
