"""The served path of service/pipeline.py: scales, formats and refusals, with real bytes.

A stand-in network (nearest-neighbour x2, recording its calls) shows what the pipeline
does around the network; tests/test_api.py runs the same path with the tiny RDN.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from PIL import Image

from benchmarks.imagefactory import gradient, grey_profile, jpeg, png, reopened
from supersizeme.service.errors import Refused
from supersizeme.service.images import Limits
from supersizeme.service.levels import quantised
from supersizeme.service.pipeline import (
    Output,
    Timings,
    decode_for,
    progressive,
    supersize,
    upscale_alpha,
    upscale_decoded,
)
from supersizeme.service.tiling import ClientGone, Stop, TiledUpscaler


class NearestX2:
    """Doubles each side by repeating pixels, and remembers what it was given."""

    def __init__(self, factor: int = 2):
        self.factor = factor
        self.calls: list[tuple[np.ndarray, Stop | None]] = []
        self.dtypes: list[type[np.generic]] = []

    def __call__(
        self, rgb: np.ndarray, stop: Stop | None, dtype: type[np.generic] = np.float32
    ) -> np.ndarray:
        self.calls.append((rgb.copy(), stop))
        self.dtypes.append(dtype)
        larger = rgb.repeat(self.factor, axis=0).repeat(self.factor, axis=1)
        return larger if dtype == np.float32 else quantised(larger, dtype)


def photo(mode: str = "RGB", size: tuple[int, int] = (20, 12)) -> Image.Image:
    return Image.fromarray(gradient(*size)).convert(mode)


def with_transparency(image: Image.Image) -> Image.Image:
    alpha = np.full((image.height, image.width), 255, np.uint8)
    alpha[:, : image.width // 2] = 0
    image = image.convert("RGBA")
    image.putalpha(Image.fromarray(alpha))
    return image


@pytest.mark.parametrize("scale", [2, 4])
@pytest.mark.parametrize("image_format", ["png", "webp", "jpeg"])
def test_each_scale_and_format_gives_the_right_size_and_format(scale, image_format):
    network = NearestX2()
    data, timings = supersize(png(photo()), network, Output(scale, image_format), Limits())
    result = reopened(data)
    assert result.format == {"png": "PNG", "webp": "WEBP", "jpeg": "JPEG"}[image_format]
    assert result.size == (20 * scale, 12 * scale)
    assert len(network.calls) == scale // 2
    assert timings.inference > 0 and timings.encode > 0


def test_x4_runs_the_network_on_its_own_clipped_x2_output_with_one_stop():
    network = NearestX2()
    rgb = np.full((6, 8, 3), 0.5, np.float32)
    rgb[0, 0] = 1.4  # the network may overshoot; the second pass must not see it
    stop = Stop(deadline=time.monotonic() + 60)
    result = progressive(rgb, network, 4, stop)
    assert result.shape == (24, 32, 3)
    (first, first_stop), (second, second_stop) = network.calls
    assert first.shape == (6, 8, 3) and second.shape == (12, 16, 3)
    assert first[0, 0, 0] == pytest.approx(1.4) and second.max() == 1.0
    assert first_stop is stop and second_stop is stop


def test_x4_stops_within_a_tile_of_its_second_pass_when_the_client_hangs_up():
    calls = []

    def network(batch: np.ndarray) -> np.ndarray:
        calls.append(batch.shape[1:3])
        return batch.repeat(2, axis=1).repeat(2, axis=2)

    # 20x20 in tiles of 10: 4 tiles in the first pass, 16 in the second (40x40).
    upscale = TiledUpscaler(network, scale=2, overlap=0, tile=10)
    stop = Stop(client_gone=lambda: len(calls) >= 6)
    with pytest.raises(ClientGone):
        progressive(np.zeros((20, 20, 3), np.float32), upscale, 4, stop)
    assert len(calls) == 6  # the whole first pass, then two tiles of the second


@pytest.mark.parametrize(
    ("mode", "scale", "dtypes"),
    [
        ("RGB", 2, [np.uint8]),
        ("RGB", 4, [np.float32, np.uint8]),  # the second pass reads the first in float
        ("L", 2, [np.float32]),  # grey is the mean of the channels, and may be 16-bit
    ],
)
def test_colour_results_are_kept_in_8_bits_from_the_network_on(mode, scale, dtypes):
    network = NearestX2()
    data, _ = supersize(png(photo(mode)), network, Output(scale), Limits())
    assert network.dtypes == dtypes
    expected = np.asarray(photo(mode)).repeat(scale, axis=0).repeat(scale, axis=1)
    np.testing.assert_array_equal(np.asarray(reopened(data)), expected)


def test_a_network_that_cannot_make_the_scale_is_an_error_not_a_wrong_size():
    with pytest.raises(ValueError, match="x2"):
        progressive(np.zeros((4, 4, 3), np.float32), NearestX2(factor=3), 2, None)


def test_alpha_goes_to_the_final_size_in_one_bicubic_resize():
    alpha = np.zeros((10, 10), np.float32)
    alpha[:, 5:] = 1.0
    enlarged = upscale_alpha(alpha, 4)
    assert enlarged.shape == (40, 40)
    assert enlarged[:, :16].max() < 0.1 and enlarged[:, 24:].min() > 0.9


def test_x4_keeps_transparency_in_png_and_webp():
    for image_format in ("png", "webp"):
        data, _ = supersize(
            png(with_transparency(photo())), NearestX2(), Output(4, image_format), Limits()
        )
        result = np.asarray(reopened(data))
        assert result.shape == (48, 80, 4)
        # The edge is at column 40; bicubic reaches 2 input pixels (8 output) either side.
        assert result[:, :32, 3].max() == 0 and result[:, 48:, 3].min() == 255


def test_transparency_and_jpeg_is_refused_before_the_network_runs():
    network = NearestX2()
    with pytest.raises(Refused) as caught:
        supersize(png(with_transparency(photo())), network, Output(2, "jpeg"), Limits())
    error = caught.value
    assert error.code == "format_cannot_carry_alpha"
    assert "png or webp" in error.message
    assert network.calls == []


def test_an_opaque_alpha_channel_is_dropped_for_jpeg():
    data, _ = supersize(png(photo("RGBA")), NearestX2(), Output(2, "jpeg"), Limits())
    assert reopened(data).mode == "RGB"


def test_x4_pixel_cap_is_a_fifth_and_named_in_the_refusal():
    network = NearestX2()
    data = png(photo(size=(40, 30)))  # 1,200 pixels
    limits = Limits(max_pixels=5_000)
    assert len(supersize(data, network, Output(2), limits)[0]) > 0
    with pytest.raises(Refused) as caught:
        supersize(data, network, Output(4), limits)
    error = caught.value
    assert error.code == "too_many_pixels"
    assert "x4" in error.message and "1,000" in error.message and "5,000" in error.message
    assert len(network.calls) == 1  # only the x2 request ran


def test_output_too_wide_for_webp_is_refused_before_the_network_runs():
    network = NearestX2()
    data = png(photo(size=(4100, 8)))
    with pytest.raises(Refused) as caught:
        supersize(data, network, Output(4, "webp"), Limits())
    assert caught.value.code == "too_large_for_format"
    assert "16,383" in caught.value.message and "16400x32" in caught.value.message
    assert network.calls == []
    assert reopened(supersize(data, network, Output(4), Limits())[0]).size == (16400, 32)


def test_grey_jpeg_stays_grey_and_keeps_its_profile():
    data = jpeg(photo("L"), icc_profile=grey_profile())
    result = reopened(supersize(data, NearestX2(), Output(4, "jpeg"), Limits())[0])
    assert result.mode == "L" and result.info["icc_profile"] == grey_profile()


def test_output_file_name():
    assert Output(4, "webp").file_name("holiday") == "holiday-x4.webp"


def test_server_timing_lists_the_four_stages():
    timings = Timings(decode=0.001, queue=0.0004, inference=2.5, encode=0.25)
    assert timings.server_timing() == (
        "decode;dur=1.0, queue;dur=0.4, inference;dur=2500.0, encode;dur=250.0"
    )


def test_a_stage_that_fails_records_no_time():
    timings = Timings()
    with timings.measure("encode"):
        time.sleep(0.001)
    assert timings.encode >= 0.001
    with pytest.raises(RuntimeError), timings.measure("inference"):
        raise RuntimeError("network failed")
    assert timings.inference == 0.0


def test_the_first_pass_runs_on_its_own_network_and_the_second_on_the_clean_one():
    """The photo model removes a JPEG's artefacts in the first pass; at x4 the second pass
    enlarges that clean result with the clean model."""
    clean, first = NearestX2(), NearestX2()
    rgb = np.random.default_rng(0).random((6, 8, 3), np.float32)
    result = progressive(rgb, clean, 4, None, np.uint8, first=first)
    assert result.shape == (24, 32, 3) and result.dtype == np.uint8
    assert [call[0].shape for call in first.calls] == [(6, 8, 3)]
    assert [call[0].shape for call in clean.calls] == [(12, 16, 3)]
    assert clean.dtypes == [np.uint8] and first.dtypes == [np.float32]


def test_at_x2_only_the_first_pass_network_runs():
    clean, first = NearestX2(), NearestX2()
    image = decode_for(jpeg(photo()), Limits(), Output(2), Timings())
    upscale_decoded(image, clean, Output(2), None, Timings(), first)
    assert len(first.calls) == 1 and not clean.calls

