"""The image layer, exercised with real PNG and JPEG bytes made in memory."""

from __future__ import annotations

import struct
import subprocess
import sys
import warnings
import zlib
from typing import NamedTuple

import numpy as np
import pytest
from PIL import Image, ImageFile, JpegImagePlugin, PngImagePlugin

from benchmarks.imagefactory import (
    apng,
    encoded,
    gradient,
    grey_profile,
    handmade_png,
    header_bomb,
    jpeg,
    jpeg_comment,
    jpeg_segment,
    jpeg_segments,
    jpeg_with_segments,
    many_scan_jpeg,
    png,
    png_chunk,
    png_with_chunks,
    reopened,
    rgb48_png,
    srgb_profile,
    with_bad_crc,
)
from supersizeme.service import images
from supersizeme.service.config import REPO_ROOT
from supersizeme.service.errors import Refused
from supersizeme.service.images import (
    MAX_EXIF_BYTES,
    MAX_JPEG_HEADER_PADDING,
    MAX_JPEG_PARSED_SEGMENT_BYTES,
    MAX_JPEG_SCANS,
    MAX_JPEG_SEGMENTS,
    MAX_PNG_CHUNKS,
    MAX_PNG_COMPRESSED_CHUNKS,
    PNG_MAGIC,
    DecodedImage,
    Limits,
    check_encodable,
    decode,
    encode,
    sniff_format,
)

LIMITS = Limits()


def rejection(data: bytes, limits: Limits = LIMITS) -> Refused:
    """The Refused that decode raises, after checking its message is client-safe."""
    with pytest.raises(Refused) as caught:
        decode(data, limits)
    error = caught.value
    assert error.message and error.message == str(error)
    assert "Traceback" not in error.message
    assert "<_io." not in error.message
    if error.__cause__ is not None:
        assert str(error.__cause__) not in error.message
    return error


def enlarged(image: DecodedImage) -> tuple[np.ndarray, np.ndarray | None]:
    """A stand-in for the network: nearest-neighbour 2x of colour and alpha."""

    def double(array: np.ndarray) -> np.ndarray:
        return array.repeat(2, axis=0).repeat(2, axis=1)

    return double(image.rgb), None if image.alpha is None else double(image.alpha)


def round_trip(image: DecodedImage) -> Image.Image:
    rgb, alpha = enlarged(image)
    return reopened(
        encode(
            rgb,
            alpha,
            grayscale=image.grayscale,
            sixteen_bit=image.sixteen_bit,
            icc_profile=image.icc_profile,
        )
    )


def assert_well_formed(image: DecodedImage, width: int, height: int) -> None:
    assert (image.width, image.height) == (width, height)
    assert image.rgb.shape == (height, width, 3)
    assert image.rgb.dtype == np.float32 and image.rgb.flags.c_contiguous
    assert 0.0 <= image.rgb.min() and image.rgb.max() <= 1.0
    if image.alpha is not None:
        assert image.alpha.shape == (height, width)
        assert image.alpha.dtype == np.float32 and image.alpha.flags.c_contiguous
        assert 0.0 <= image.alpha.min() and image.alpha.max() <= 1.0


# --- modes: decode flags, then encode of a 2x image -------------------------------------

WIDTH, HEIGHT = 12, 10


def palette_image(*, transparent: bool) -> bytes:
    image = Image.fromarray(gradient(WIDTH, HEIGHT)).quantize(16)
    return png(image, transparency=0) if transparent else png(image)


class ModeCase(NamedTuple):
    data: bytes
    output_mode: str
    grayscale: bool = False
    sixteen_bit: bool = False
    alpha: bool = False


def sixteen_bit_grey(width: int, height: int) -> Image.Image:
    return Image.fromarray(gradient(width, height, 1).astype(np.uint16) * 257)


MODE_CASES = {
    "RGB": ModeCase(png(Image.fromarray(gradient(WIDTH, HEIGHT))), "RGB"),
    "RGBA": ModeCase(png(Image.fromarray(gradient(WIDTH, HEIGHT, 4))), "RGBA", alpha=True),
    "L": ModeCase(png(Image.fromarray(gradient(WIDTH, HEIGHT, 1))), "L", grayscale=True),
    "LA": ModeCase(
        png(Image.fromarray(gradient(WIDTH, HEIGHT, 2))), "LA", grayscale=True, alpha=True
    ),
    "P": ModeCase(palette_image(transparent=False), "RGB"),
    "P+tRNS": ModeCase(palette_image(transparent=True), "RGBA", alpha=True),
    "1": ModeCase(
        png(Image.fromarray(gradient(WIDTH, HEIGHT, 1)).convert("1")), "L", grayscale=True
    ),
    "L+tRNS": ModeCase(
        png(Image.new("L", (WIDTH, HEIGHT), 9), transparency=9), "LA", grayscale=True, alpha=True
    ),
    "RGB+tRNS": ModeCase(
        png(Image.new("RGB", (WIDTH, HEIGHT), (1, 2, 3)), transparency=(1, 2, 3)),
        "RGBA",
        alpha=True,
    ),
    "I;16": ModeCase(
        png(sixteen_bit_grey(WIDTH, HEIGHT)), "I;16", grayscale=True, sixteen_bit=True
    ),
    "RGB 16-bit": ModeCase(rgb48_png(gradient(WIDTH, HEIGHT).astype(np.uint16) * 257), "RGB"),
    "JPEG RGB": ModeCase(jpeg(Image.fromarray(gradient(WIDTH, HEIGHT))), "RGB"),
    "JPEG L": ModeCase(jpeg(Image.fromarray(gradient(WIDTH, HEIGHT, 1))), "L", grayscale=True),
    "JPEG CMYK": ModeCase(jpeg(Image.new("CMYK", (WIDTH, HEIGHT), (0, 255, 0, 0))), "RGB"),
}


@pytest.mark.parametrize("case", MODE_CASES)
def test_each_mode_decodes_and_encodes_to_its_kind(case):
    expected = MODE_CASES[case]
    image = decode(expected.data, LIMITS)
    assert_well_formed(image, WIDTH, HEIGHT)
    assert image.grayscale == expected.grayscale
    assert image.sixteen_bit == expected.sixteen_bit
    assert (image.alpha is not None) == expected.alpha
    assert image.source_format == ("JPEG" if case.startswith("JPEG") else "PNG")
    output = round_trip(image)
    assert output.mode == expected.output_mode
    assert output.size == (2 * WIDTH, 2 * HEIGHT)


@pytest.mark.parametrize(("mode", "channels"), [("RGB", 3), ("RGBA", 4), ("L", 1), ("LA", 2)])
def test_eight_bit_png_survives_the_round_trip_exactly(mode, channels):
    pixels = gradient(WIDTH, HEIGHT, channels)
    output = round_trip(decode(png(Image.fromarray(pixels)), LIMITS))
    assert output.mode == mode
    expected = pixels.repeat(2, axis=0).repeat(2, axis=1)
    np.testing.assert_array_equal(np.asarray(output), expected)


def test_grey_is_replicated_to_three_equal_channels():
    image = decode(MODE_CASES["L"].data, LIMITS)
    np.testing.assert_array_equal(image.rgb[..., 0], image.rgb[..., 2])
    np.testing.assert_allclose(image.rgb[..., 1] * 255, gradient(WIDTH, HEIGHT, 1), atol=1e-3)


def test_sixteen_bit_grey_keeps_every_level():
    samples = np.arange(WIDTH * HEIGHT, dtype=np.uint16).reshape(HEIGHT, WIDTH) * 541
    image = decode(png(Image.fromarray(samples)), LIMITS)
    np.testing.assert_allclose(image.rgb[..., 0] * 65535, samples, atol=0.01)
    output = np.asarray(round_trip(image))
    np.testing.assert_array_equal(output, samples.repeat(2, axis=0).repeat(2, axis=1))


def test_sixteen_bit_grey_transparency_key_becomes_alpha():
    samples = np.full((HEIGHT, WIDTH), 1000, np.uint16)
    samples[0, 0] = 7
    image = decode(png(Image.fromarray(samples), transparency=1000), LIMITS)
    assert image.sixteen_bit and image.alpha is not None
    assert image.alpha[0, 0] == 1.0 and image.alpha[1:, 1:].max() == 0.0
    # No 16-bit grey+alpha mode to write: transparency is kept at 8 bits.
    assert round_trip(image).mode == "LA"


def test_sixteen_bit_rgb_png_is_reduced_to_eight_bit():
    samples = gradient(WIDTH, HEIGHT).astype(np.uint16) * 257
    image = decode(rgb48_png(samples), LIMITS)
    np.testing.assert_allclose(image.rgb * 255, gradient(WIDTH, HEIGHT), atol=1e-3)


def test_palette_transparency_becomes_alpha():
    image = decode(palette_image(transparent=True), LIMITS)
    assert set(np.unique(image.alpha)) <= {0.0, 1.0}
    assert image.alpha.min() == 0.0 and image.alpha.max() == 1.0


def test_cmyk_jpeg_becomes_rgb_and_drops_its_profile():
    cmyk = Image.new("CMYK", (WIDTH, HEIGHT), (0, 255, 0, 0))  # magenta ink
    image = decode(jpeg(cmyk, icc_profile=srgb_profile()), LIMITS)
    assert image.icc_profile is None
    red, green, blue = image.rgb[HEIGHT // 2, WIDTH // 2] * 255
    assert red > 200 and green < 50 and blue > 200


# --- encode ---------------------------------------------------------------------------


def encoded_samples(rgb: np.ndarray, **flags: bool) -> np.ndarray:
    options = {"grayscale": False, "sixteen_bit": False} | flags
    return np.asarray(reopened(encode(rgb, None, **options)))


def test_encode_rounds_to_nearest_and_clips():
    values = np.array([-0.3, 0.49 / 255, 0.51 / 255, 1.49 / 255, 254.6 / 255, 1.0, 1.7])
    rgb = np.repeat(values[None, :, None], 3, axis=2)
    assert encoded_samples(rgb)[0, :, 0].tolist() == [0, 0, 1, 1, 255, 255, 255]


def test_encode_sixteen_bit_rounds_to_nearest():
    values = np.array([0.51 / 65535, 65534.6 / 65535, 2.0])
    rgb = np.repeat(values[None, :, None], 3, axis=2)
    samples = encoded_samples(rgb, grayscale=True, sixteen_bit=True)
    assert samples.dtype == np.uint16 and samples[0].tolist() == [1, 65535, 65535]


def test_grey_output_is_the_channel_mean():
    rgb = np.zeros((2, 2, 3))
    rgb[..., 2] = 0.6
    assert encoded_samples(rgb, grayscale=True)[0, 0] == 51


def test_sixteen_bit_is_ignored_for_colour():
    rgb = np.full((2, 2, 3), 0.5)
    assert reopened(encode(rgb, None, grayscale=False, sixteen_bit=True)).mode == "RGB"


def test_encode_refuses_mismatched_shapes():
    with pytest.raises(ValueError):
        encode(np.zeros((4, 4)), None, grayscale=True, sixteen_bit=False)
    with pytest.raises(ValueError):
        encode(np.zeros((4, 4, 3)), np.zeros((4, 5)), grayscale=False, sixteen_bit=False)


def test_encode_without_profile_writes_none():
    output = reopened(encode(np.zeros((2, 2, 3)), None, grayscale=False, sixteen_bit=False))
    assert "icc_profile" not in output.info


@pytest.mark.parametrize("make", [png, jpeg], ids=["PNG", "JPEG"])
def test_icc_profile_round_trips(make):
    profile = srgb_profile()
    image = decode(make(Image.fromarray(gradient(WIDTH, HEIGHT)), icc_profile=profile), LIMITS)
    assert image.icc_profile == profile
    assert round_trip(image).info["icc_profile"] == profile


# --- orientation --------------------------------------------------------------------------


def test_exif_orientation_is_applied():
    stored = np.zeros((24, 40, 3), np.uint8)
    stored[:8, :8] = (255, 0, 0)  # red in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    image = decode(jpeg(Image.fromarray(stored), exif=exif, quality=95), LIMITS)
    assert (image.width, image.height) == (24, 40)
    red, green, blue = image.rgb[2, -3] * 255  # so it is now top-right
    assert red > 200 and green < 50 and blue < 50


# --- refusals -----------------------------------------------------------------------------


def test_an_empty_body_is_refused():
    error = rejection(b"")
    assert error.code == "empty_body"


def test_sniff_format_reads_magic_bytes():
    assert sniff_format(PNG_MAGIC + b"anything") == "PNG"
    assert sniff_format(b"\xff\xd8\xff\xe0rest") == "JPEG"


SMALL = Image.fromarray(gradient(16, 16))
FOREIGN = {
    "GIF": (encoded(SMALL, "GIF"), "GIF"),
    "WebP": (encoded(SMALL, "WEBP"), "WebP"),
    "BMP": (encoded(SMALL, "BMP"), "BMP"),
    "TIFF": (encoded(SMALL, "TIFF"), "TIFF"),
    "TIFF big-endian": (b"MM\x00*\x00\x00\x00\x08", "TIFF"),
    "PDF": (b"%PDF-1.4\n1 0 obj\n<<>>\nendobj\n", "PDF"),
    "SVG": (
        b'\xef\xbb\xbf  <?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"/>',
        "SVG",
    ),
    "HTML": (b"<!doctype html><html></html>", "HTML"),
    "HEIC": (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00", "HEIC"),
    "random": (np.random.default_rng(3).bytes(200), "PNG or JPEG"),
    "JPEG-ish prefix": (b"\xff\xd8", "PNG or JPEG"),
}


@pytest.mark.parametrize("case", FOREIGN)
def test_other_formats_are_refused_and_named(case):
    data, name = FOREIGN[case]
    error = rejection(data)
    assert error.code == "unsupported_media_type"
    assert name in error.message and "send PNG or JPEG" in error.message


def test_too_many_pixels_is_refused_with_the_numbers():
    error = rejection(png(Image.fromarray(gradient(100, 50))), Limits(max_pixels=4_999))
    assert error.code == "too_many_pixels"
    assert "100x50" in error.message and "5,000" in error.message and "4,999" in error.message


def test_exactly_the_limits_are_accepted():
    image = decode(png(Image.fromarray(gradient(8, 10))), Limits(max_pixels=80, min_side=8))
    assert (image.width, image.height) == (8, 10)


@pytest.mark.parametrize("size", [(7, 20), (20, 7)])
def test_too_small_is_refused_naming_the_minimum(size):
    error = rejection(png(Image.fromarray(gradient(*size))), Limits(min_side=8))
    assert error.code == "too_small"
    assert "at least 8 pixels" in error.message


@pytest.fixture
def no_pixel_decoding(monkeypatch):
    """Make any pixel decode fail loudly, so a refusal proves it came from the header."""

    def forbidden(self):
        raise AssertionError("load() called")

    monkeypatch.setattr(ImageFile.ImageFile, "load", forbidden)


@pytest.mark.usefixtures("no_pixel_decoding")
@pytest.mark.parametrize("side", [5_000, 100_000])
def test_declared_size_is_refused_from_the_header(side):
    # 5,000 squared is over our cap but under Pillow's bomb limit; 100,000 is over both.
    error = rejection(header_bomb(side, side))
    assert error.code == "too_many_pixels"
    assert f"{LIMITS.max_pixels:,}" in error.message


@pytest.mark.usefixtures("no_pixel_decoding")
def test_bomb_warning_raised_as_error_is_still_too_many_pixels():
    side = int(Image.MAX_IMAGE_PIXELS**0.5) + 100
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        error = rejection(header_bomb(side, side))
    assert error.code == "too_many_pixels"


def test_animated_png_is_refused():
    error = rejection(apng())
    assert error.code == "animated_image"


VALID_PNG = png(Image.fromarray(gradient(32, 32)))
VALID_JPEG = jpeg(Image.fromarray(gradient(32, 32)))
CORRUPT = {
    "truncated PNG": VALID_PNG[: len(VALID_PNG) // 2],
    "PNG without IEND": VALID_PNG[:-12],
    "truncated JPEG": VALID_JPEG[: len(VALID_JPEG) // 2],
    "bad IHDR CRC": with_bad_crc(VALID_PNG, b"IHDR"),
    "bad IDAT CRC": with_bad_crc(VALID_PNG, b"IDAT"),
    "garbage after PNG magic": PNG_MAGIC + bytes(100),
    "garbage after JPEG magic": b"\xff\xd8\xff" + np.random.default_rng(4).bytes(300),
    "bad zlib stream": handmade_png(16, 16, bit_depth=8, colour_type=0, idat=b"not zlib"),
}


@pytest.mark.parametrize("case", CORRUPT)
def test_corrupt_data_is_refused(case):
    error = rejection(CORRUPT[case])
    assert error.code == "corrupt_image"
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_unexpected_decoder_errors_become_corrupt_image(monkeypatch):
    def broken(image):
        raise KeyError("internal detail")

    monkeypatch.setattr(images, "_upright", broken)
    error = rejection(VALID_PNG)
    assert error.code == "corrupt_image" and "internal detail" not in error.message


def test_memory_errors_are_not_blamed_on_the_client(monkeypatch):
    def exhausted(image):
        raise MemoryError

    monkeypatch.setattr(images, "_upright", exhausted)
    with pytest.raises(MemoryError):
        decode(VALID_PNG, LIMITS)


# --- WebP and JPEG, and what each format can hold -----------------------------------------


def encoded_as(image_format: str, rgb: np.ndarray, alpha: np.ndarray | None = None, **flags):
    options = {"grayscale": False, "sixteen_bit": False} | flags
    return reopened(encode(rgb, alpha, image_format=image_format, **options))


def test_webp_is_lossless_and_keeps_colour_under_transparent_pixels():
    samples = gradient(WIDTH, HEIGHT, 4)
    samples[..., 3] = 0
    samples[:, : WIDTH // 2, 3] = 255
    result = encoded_as("webp", samples[..., :3] / 255, samples[..., 3] / 255)
    assert result.format == "WEBP" and result.mode == "RGBA"
    np.testing.assert_array_equal(np.asarray(result), samples)


def test_webp_rounds_to_nearest_and_clips():
    values = np.array([-0.3, 0.49 / 255, 0.51 / 255, 1.49 / 255, 254.6 / 255, 1.7])
    rgb = np.repeat(values[None, :, None], 3, axis=2)
    assert np.asarray(encoded_as("webp", rgb))[0, :, 0].tolist() == [0, 0, 1, 1, 255, 255]


def test_jpeg_is_quality_95_with_full_chroma():
    rgb = gradient(64, 48) / 255
    result = encoded_as("jpeg", rgb)
    assert result.format == "JPEG" and result.mode == "RGB"
    assert JpegImagePlugin.get_sampling(result) == 0  # 4:4:4
    reference = reopened(jpeg(Image.fromarray(gradient(64, 48)), quality=95))
    assert result.quantization == reference.quantization


def test_grey_stays_grey_in_jpeg_and_is_three_equal_channels_in_webp():
    grey = np.repeat((gradient(WIDTH, HEIGHT, 1) / 255)[..., None], 3, axis=2)
    assert encoded_as("jpeg", grey, grayscale=True).mode == "L"
    webp = np.asarray(encoded_as("webp", grey, grayscale=True))
    assert webp.shape == (HEIGHT, WIDTH, 3)
    np.testing.assert_array_equal(webp[..., 0], gradient(WIDTH, HEIGHT, 1))
    np.testing.assert_array_equal(webp[..., 0], webp[..., 2])


@pytest.mark.parametrize("image_format", ["webp", "jpeg"])
def test_sixteen_bit_grey_becomes_eight_bit_rounded(image_format):
    grey = np.full((HEIGHT, WIDTH, 3), 128.7 / 255)  # truncation would give 128
    result = np.asarray(encoded_as(image_format, grey, grayscale=True, sixteen_bit=True))
    assert result.dtype == np.uint8
    assert abs(int(result.flat[0]) - 129) <= (0 if image_format == "webp" else 1)


@pytest.mark.parametrize("image_format", ["png", "webp", "jpeg"])
def test_icc_profile_is_kept_in_every_format(image_format):
    result = encoded_as(image_format, gradient(WIDTH, HEIGHT) / 255, icc_profile=srgb_profile())
    assert result.info["icc_profile"] == srgb_profile()


def test_grey_profile_is_dropped_only_where_grey_becomes_rgb():
    grey = np.full((HEIGHT, WIDTH, 3), 0.5)
    options = {"grayscale": True, "icc_profile": grey_profile()}
    assert encoded_as("png", grey, **options).info["icc_profile"] == grey_profile()
    assert encoded_as("jpeg", grey, **options).info["icc_profile"] == grey_profile()
    assert "icc_profile" not in encoded_as("webp", grey, **options).info


def decoded(mode: str, size: tuple[int, int] = (WIDTH, HEIGHT)) -> DecodedImage:
    return decode(png(Image.fromarray(gradient(*size, 4)).convert(mode)), LIMITS)


def test_jpeg_refuses_transparency_but_not_an_opaque_alpha_channel():
    with pytest.raises(Refused) as caught:
        check_encodable(decoded("RGBA"), 2, "jpeg")
    assert caught.value.code == "format_cannot_carry_alpha"
    assert "png or webp" in caught.value.message
    check_encodable(decoded("RGBA"), 2, "webp")
    opaque = decoded("RGB")
    opaque.alpha = np.ones(opaque.rgb.shape[:2], np.float32)
    check_encodable(opaque, 4, "jpeg")
    assert encoded_as("jpeg", opaque.rgb, opaque.alpha).mode == "RGB"


@pytest.mark.parametrize(("image_format", "side"), [("webp", 16383), ("jpeg", 65500)])
def test_outputs_over_the_format_s_side_limit_are_refused(image_format, side):
    image = decoded("RGB", (side // 4, 8))
    check_encodable(image, 4, image_format)
    image = decoded("RGB", (side // 4 + 1, 8))
    with pytest.raises(Refused) as caught:
        check_encodable(image, 4, image_format)
    assert caught.value.code == "too_large_for_format"
    assert f"{side:,}" in caught.value.message


def test_the_x4_cap_is_a_fifth_of_the_x2_cap():
    assert Limits(max_pixels=2_000_000).pixel_cap == 2_000_000
    assert Limits(max_pixels=2_000_000, scale=4).pixel_cap == 400_000
    data = png(Image.fromarray(gradient(50, 20)))  # 1,000 pixels
    assert decode(data, Limits(max_pixels=5_000, scale=4)).width == 50
    error = rejection(data, Limits(max_pixels=4_999, scale=4))
    assert error.code == "too_many_pixels"
    assert "x4" in error.message and "999" in error.message and "4,999" in error.message


@pytest.mark.usefixtures("no_pixel_decoding")
def test_bomb_refusal_names_the_x4_cap():
    error = rejection(header_bomb(100_000, 100_000), Limits(scale=4))
    assert error.code == "too_many_pixels" and "400,000" in error.message


# --- what the header does not bound: scans, segments, chunks, text, EXIF ------------------

FLAT = Image.new("RGB", (64, 48), (120, 130, 140))


@pytest.fixture
def pillow_opens(monkeypatch) -> list[str]:
    """Every format Pillow is asked to open: none means a refusal came from the bytes alone."""
    formats: list[str] = []
    real = images._open

    def spied(data, source_format):
        formats.append(source_format)
        return real(data, source_format)

    monkeypatch.setattr(images, "_open", spied)
    return formats


def scan_count(data: bytes) -> int:
    return sum(segment[1] == 0xDA for segment in jpeg_segments(data))


def test_a_many_scan_jpeg_is_one_libjpeg_decodes():
    # So that the refusals below are about cost: without them the file would be decoded.
    data = many_scan_jpeg(FLAT, 3 * MAX_JPEG_SCANS)
    assert scan_count(data) > 3 * MAX_JPEG_SCANS
    assert reopened(data).size == FLAT.size


def test_jpeg_scans_up_to_the_cap_are_decoded():
    normal = scan_count(jpeg(FLAT, progressive=True))
    assert 5 <= normal < MAX_JPEG_SCANS
    at_cap = many_scan_jpeg(FLAT, MAX_JPEG_SCANS - normal)
    assert scan_count(at_cap) == MAX_JPEG_SCANS
    assert decode(at_cap, LIMITS).width == FLAT.width


@pytest.mark.parametrize("over", [1, 5_000])
def test_jpeg_scans_over_the_cap_are_refused_before_pillow_parses(over, pillow_opens):
    normal = scan_count(jpeg(FLAT, progressive=True))
    error = rejection(many_scan_jpeg(FLAT, MAX_JPEG_SCANS - normal + over))
    assert error.code == "too_many_scans"
    assert f"more than {MAX_JPEG_SCANS} scans" in error.message
    assert pillow_opens == []


def test_scans_are_counted_through_stuffed_bytes_and_restart_markers():
    noise = np.random.default_rng(6).integers(0, 256, (256, 256, 3), np.uint8)
    data = many_scan_jpeg(Image.fromarray(noise), MAX_JPEG_SCANS, restart_marker_blocks=1)
    first_scan = next(s for s in jpeg_segments(data) if s[1] == 0xDA)
    assert b"\xff\x00" in first_scan and b"\xff\xd0" in first_scan
    assert rejection(data).code == "too_many_scans"


def test_what_libjpeg_skips_is_not_counted_as_scans():
    # Start-of-scan bytes inside a comment, stuffed 0xFF bytes and restart markers inside
    # noisy scans, and a second picture after EOI (as an MPO has) are no scans of the image.
    noise = np.random.default_rng(5).integers(0, 256, (48, 64, 3), np.uint8)
    data = jpeg(Image.fromarray(noise), progressive=True, restart_marker_blocks=1)
    assert b"\xff\x00" in data and b"\xff\xd0" in data
    fake_scans = jpeg_comment(b"\xff\xda\x00\x02" * (2 * MAX_JPEG_SCANS))
    trailing = many_scan_jpeg(FLAT, 2 * MAX_JPEG_SCANS)
    image = decode(jpeg_with_segments(data, fake_scans) + trailing, LIMITS)
    assert (image.width, image.height) == (64, 48)


def test_jpeg_marker_segments_are_capped():
    data = jpeg(FLAT)
    own = len(jpeg_segments(data)) - 2  # all but SOI and EOI
    comments = [jpeg_comment(b"")] * (MAX_JPEG_SEGMENTS - own)
    assert decode(jpeg_with_segments(data, *comments), LIMITS).width == FLAT.width
    error = rejection(jpeg_with_segments(data, *comments, jpeg_comment(b"")))
    assert error.code == "too_many_segments"
    assert f"{MAX_JPEG_SEGMENTS:,} marker segments" in error.message


@pytest.mark.parametrize("byte", [b"\xff", b"\x00"], ids=["fill", "stray"])
def test_padding_between_jpeg_header_markers_is_capped(byte):
    soi, app0, *rest = jpeg_segments(jpeg(FLAT))

    def padded(count: int) -> bytes:
        return b"".join([soi, app0, byte * count, *rest])

    assert decode(padded(MAX_JPEG_HEADER_PADDING), LIMITS).width == FLAT.width
    error = rejection(padded(MAX_JPEG_HEADER_PADDING + 1))
    assert error.code == "too_many_segments"
    assert "padding" in error.message


@pytest.mark.parametrize("code", [0x02, 0xC8, 0xD8, 0xD9, 0xDE, 0xF0])
def test_a_header_marker_libjpeg_refuses_is_corrupt_before_pillow_reads_on(code, pillow_opens):
    data = jpeg_with_segments(jpeg(FLAT), bytes([0xFF, code]) + bytes(2 * MAX_JPEG_HEADER_PADDING))
    with pytest.raises(Exception):  # noqa: B017 - any of Pillow's many exceptions
        reopened(data)
    error = rejection(data)
    assert error.code == "corrupt_image"
    assert pillow_opens == []


# Entries that Pillow parses one by one: a quantization table (table 0, 8-bit) and an empty
# Photoshop resource block.
ENTRIES = {
    "quantization tables": (0xDB, b"", b"\0" + bytes(range(1, 65))),
    "Photoshop resources": (0xED, b"Photoshop 3.0\0", b"8BIM\x04\x04\0\0\0\0\0\0"),
}


@pytest.mark.parametrize("kind", ENTRIES)
def test_header_segments_pillow_parses_entry_by_entry_are_capped_in_bytes(kind, pillow_opens):
    code, prefix, entry = ENTRIES[kind]
    data = jpeg(FLAT)
    # A segment's length field counts itself and the payload, not the marker.
    own = sum(len(segment) - 2 for segment in jpeg_segments(data) if segment[1] == 0xDB)
    full = jpeg_segment(code, prefix + entry * ((65_000 - len(prefix)) // len(entry)))
    count = (MAX_JPEG_PARSED_SEGMENT_BYTES - own) // (len(full) - 2)
    room = MAX_JPEG_PARSED_SEGMENT_BYTES - own - count * (len(full) - 2)
    last = jpeg_segment(code, prefix + entry * ((room - 2 - len(prefix)) // len(entry)))
    within = jpeg_with_segments(data, *[full] * count, last)
    assert decode(within, LIMITS).width == FLAT.width
    over = jpeg_with_segments(data, *[full] * count, last, jpeg_segment(code, prefix + entry))
    pillow_opens.clear()
    error = rejection(over)
    assert error.code == "too_much_metadata"
    assert kind in error.message and pillow_opens == []


SMALL_PNG = png(FLAT)


def chunk_count(data: bytes) -> int:
    count, position = 0, len(PNG_MAGIC)
    while position < len(data):
        count += 1
        position += 12 + int.from_bytes(data[position : position + 4], "big")
    return count


def test_png_chunks_are_capped():
    private = png_chunk(b"prIv", b"")
    extra = MAX_PNG_CHUNKS - chunk_count(SMALL_PNG)
    at_cap = png_with_chunks(SMALL_PNG, *[private] * extra)
    assert chunk_count(at_cap) == MAX_PNG_CHUNKS
    assert decode(at_cap, LIMITS).width == FLAT.width
    error = rejection(png_with_chunks(SMALL_PNG, *[private] * (extra + 1), after_image=True))
    assert error.code == "too_many_segments"
    assert f"{MAX_PNG_CHUNKS:,} chunks" in error.message


@pytest.mark.parametrize("chunk_type", [b"zTXt", b"iTXt", b"iCCP"])
def test_compressed_png_chunks_are_capped(chunk_type):
    # Without a keyword Pillow inflates a chunk but never counts its text.
    payload = {
        b"zTXt": b"\0\0" + zlib.compress(bytes(1000)),
        b"iTXt": b"\0\1\0\0\0" + zlib.compress(bytes(1000)),
        b"iCCP": b"p\0\0" + zlib.compress(srgb_profile()),
    }[chunk_type]
    chunks = [png_chunk(chunk_type, payload)] * MAX_PNG_COMPRESSED_CHUNKS
    assert decode(png_with_chunks(SMALL_PNG, *chunks), LIMITS).width == FLAT.width
    error = rejection(png_with_chunks(SMALL_PNG, *chunks, chunks[0], after_image=True))
    assert error.code == "too_much_metadata"
    assert f"more than {MAX_PNG_COMPRESSED_CHUNKS} compressed" in error.message


def ztxt(keyword: bytes, text: bytes) -> bytes:
    return png_chunk(b"zTXt", keyword + b"\0\0" + zlib.compress(text))


@pytest.mark.parametrize("after_image", [False, True], ids=["before", "after"])
def test_png_text_is_bounded_per_chunk_and_in_all(after_image):
    chunk_limit, memory_limit = PngImagePlugin.MAX_TEXT_CHUNK, PngImagePlugin.MAX_TEXT_MEMORY
    assert (chunk_limit, memory_limit) == (2**20, 4 * 2**20)
    within = [ztxt(b"k%d" % i, b"t" * chunk_limit) for i in range(memory_limit // chunk_limit)]
    data = png_with_chunks(SMALL_PNG, *within, after_image=after_image)
    assert decode(data, LIMITS).width == FLAT.width
    for chunks in ([ztxt(b"k", b"t" * (chunk_limit + 1))], [*within, ztxt(b"last", b"t")]):
        error = rejection(png_with_chunks(SMALL_PNG, *chunks, after_image=after_image))
        assert error.code == "too_much_metadata"
        assert "1 MiB per chunk" in error.message and "4 MiB in all" in error.message


def exif_of_size(size: int, orientation: int) -> bytes:
    """A little-endian TIFF directory with one orientation entry, padded to ``size`` bytes."""
    directory = b"II*\0" + struct.pack("<IHHHIHHI", 8, 1, 0x0112, 3, 1, orientation, 0, 0)
    return directory + bytes(size - len(directory))


def test_exif_up_to_what_a_jpeg_holds_is_read_for_its_orientation():
    # Pillow keeps a PNG's eXIf chunk behind the 6 bytes of a JPEG's "Exif\0\0" prefix.
    exif = exif_of_size(MAX_EXIF_BYTES - 6, orientation=6)
    image = decode(png_with_chunks(SMALL_PNG, png_chunk(b"eXIf", exif)), LIMITS)
    assert (image.width, image.height) == (FLAT.height, FLAT.width)


@pytest.mark.parametrize("carrier", ["eXIf", "Raw profile type exif"])
def test_larger_exif_is_refused(carrier):
    exif = exif_of_size(MAX_EXIF_BYTES - 5, orientation=6)
    if carrier == "eXIf":
        chunk = png_chunk(b"eXIf", exif)
    else:  # ImageMagick's hexadecimal text, with its own 6-byte prefix
        hexadecimal = (b"Exif\0\0" + exif).hex()
        chunk = ztxt(carrier.encode(), f"\nexif\n{len(exif) + 6:8}\n{hexadecimal}\n".encode())
    error = rejection(png_with_chunks(SMALL_PNG, chunk, after_image=True))
    assert error.code == "too_much_metadata"
    assert f"{MAX_EXIF_BYTES:,}" in error.message


def test_malformed_exif_writes_nothing_to_stderr(tmp_path):
    # Pillow warns once per distinct message, here one per entry: thousands of lines.
    entries = [struct.pack("<HHII", 0x8000 + i, 7, 1000 + i, 8) for i in range(500)]
    exif = b"II*\0" + struct.pack("<IH", 8, len(entries)) + b"".join(entries) + bytes(4)
    path = tmp_path / "exif.jpg"
    path.write_bytes(jpeg(FLAT, exif=b"Exif\0\0" + exif))
    script = (
        "import sys; from supersizeme.service.images import Limits, decode; "
        "decode(open(sys.argv[1], 'rb').read(), Limits())"
    )
    completed = subprocess.run(
        [sys.executable, "-c", script, str(path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert completed.stderr == ""


def test_a_jpeg_carries_its_estimated_quality_and_a_png_none():
    picture = Image.fromarray(gradient(24, 16))
    assert decode(encoded(picture, "JPEG", quality=83), Limits()).jpeg_quality == 83
    assert decode(encoded(picture, "PNG"), Limits()).jpeg_quality is None


@pytest.mark.parametrize(
    ("code", "named"),
    [(0xC9, "arithmetic-coded"), (0xCA, "arithmetic-coded"), (0xC5, "hierarchical")],
)
def test_a_jpeg_coding_the_decoder_lacks_is_named_as_unsupported(code, named):
    data = bytearray(jpeg(Image.fromarray(gradient(24, 16))))
    frame = data.index(b"\xff\xc0")  # Pillow writes baseline: SOF0
    data[frame + 1] = code
    with pytest.raises(Refused) as refused:
        decode(bytes(data), Limits())
    assert refused.value.code == "unsupported_media_type"
    assert named in refused.value.message and f"SOF{code - 0xC0}" in refused.value.message


def test_what_a_result_carries_can_be_sent_back():
    """The largest ICC profile a JPEG may bring is one its PNG result can carry back in."""
    limit = PngImagePlugin.MAX_TEXT_CHUNK
    picture = Image.fromarray(gradient(WIDTH, HEIGHT))
    largest = srgb_profile().ljust(limit, b"\0")
    image = decode(jpeg(picture, icc_profile=largest), LIMITS)
    result = encode(*enlarged(image), grayscale=False, sixteen_bit=False, icc_profile=largest)
    assert decode(result, LIMITS).icc_profile == largest
    refused = rejection(jpeg(picture, icc_profile=largest + b"\0"))
    assert refused.code == "too_much_metadata" and "ICC profile" in refused.message
