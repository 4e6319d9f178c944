"""The degradations: the benchmarks' crop and bicubic downscale, and the photo model's JPEG."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, JpegImagePlugin

from supersizeme.toolchain import degradation
from supersizeme.toolchain.degradation import (
    DEGRADATIONS,
    SUBSAMPLINGS,
    VALIDATION_QUALITIES,
    JpegDegradation,
    bicubic_downscale,
    crop_to_multiple,
    hr_lr_pair,
    jpeg_bytes,
    jpeg_round_trip,
)
from supersizeme.toolchain.quality import y_psnr_ssim


def photo(height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
    """uint8 RGB: a smooth gradient whose channels differ, a few sharp-edged blocks and a
    little noise, so that JPEG has both flat areas and edges to lose."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    rgb = np.stack([200 * x + 20, 180 * y + 30, 120 * (x + y) / 2 + 60], axis=2)
    block_height, block_width = max(1, min(8, height // 3)), max(1, min(12, width // 3))
    for _ in range(4):
        top = rng.integers(0, height - block_height + 1)
        left = rng.integers(0, width - block_width + 1)
        rgb[top : top + block_height, left : left + block_width] = rng.integers(0, 256, 3)
    rgb += rng.normal(0, 3, rgb.shape)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def y_psnr(reference: np.ndarray, test: np.ndarray) -> float:
    return y_psnr_ssim(reference, test, border=0)[0]


def reopen(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


@pytest.mark.parametrize("subsampling", ["4:4:4", "4:2:2", "4:2:0"])
def test_jpeg_bytes_is_a_jpeg_in_the_chroma_subsampling_asked_for(subsampling):
    data = jpeg_bytes(Image.fromarray(photo()), 90, subsampling)
    assert data[:2] == b"\xff\xd8" and data[-2:] == b"\xff\xd9"
    image = reopen(data)
    assert image.format == "JPEG" and image.mode == "RGB" and image.size == (64, 48)
    assert JpegImagePlugin.get_sampling(image) == SUBSAMPLINGS[subsampling]


def test_the_default_subsampling_is_4_2_0():
    assert JpegImagePlugin.get_sampling(reopen(jpeg_bytes(Image.fromarray(photo()), 90))) == 2


@pytest.mark.parametrize("subsampling", ["4:2:0", "4:4:4"])
def test_lower_quality_is_smaller_and_further_from_the_original(subsampling):
    rgb = photo()
    sizes = {q: len(jpeg_bytes(Image.fromarray(rgb), q, subsampling)) for q in (30, 95)}
    scores = {q: y_psnr(rgb, jpeg_round_trip(rgb, q, subsampling)) for q in (30, 95)}
    assert sizes[30] < sizes[95]
    assert scores[30] < scores[95] - 3  # dB: a clear loss, not rounding
    assert 30 < scores[30] and scores[95] < 60  # neither is garbage nor lossless


def test_round_trip_keeps_shape_and_dtype_and_accepts_a_rotated_view():
    rgb = photo()
    rotated = np.rot90(rgb)  # a view with negative strides, as augment() gives
    out = jpeg_round_trip(rotated, 80)
    assert out.shape == rotated.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out, jpeg_round_trip(np.ascontiguousarray(rotated), 80))


def test_jpeg_degradation_is_seeded_by_the_generator():
    rgb = photo()
    degrade = JpegDegradation(noise_probability=0.5)
    first = degrade(rgb, np.random.default_rng(5))
    again = degrade(rgb, np.random.default_rng(5))
    assert first.shape == rgb.shape and first.dtype == rgb.dtype
    np.testing.assert_array_equal(first, again)
    others = [degrade(rgb, np.random.default_rng(seed)) for seed in (6, 7, 8)]
    assert all(not np.array_equal(first, other) for other in others)


def test_a_fixed_quality_in_4_4_4_is_exactly_that_round_trip():
    rgb = photo()
    degrade = JpegDegradation(qualities=(60, 60), subsamplings=(("4:4:4", 1.0),))
    np.testing.assert_array_equal(
        degrade(rgb, np.random.default_rng(0)), jpeg_round_trip(rgb, 60, "4:4:4")
    )
    # ... and not the 4:2:0 one, so the subsampling really reaches the encoder
    assert not np.array_equal(degrade(rgb, np.random.default_rng(0)), jpeg_round_trip(rgb, 60))


def test_draws_cover_the_quality_range_and_both_subsamplings(monkeypatch):
    calls = []

    def record(rgb, quality, subsampling="4:2:0"):
        calls.append((quality, subsampling))
        return rgb

    monkeypatch.setattr(degradation, "jpeg_round_trip", record)
    degrade = JpegDegradation(qualities=(40, 45))
    rng = np.random.default_rng(11)
    rgb = photo(8, 8)
    for _ in range(400):
        degrade(rgb, rng)
    qualities = [quality for quality, _ in calls]
    assert all(isinstance(quality, int) for quality in qualities)
    assert set(qualities) == set(range(40, 46))  # both ends included
    share_420 = sum(subsampling == "4:2:0" for _, subsampling in calls) / len(calls)
    assert {subsampling for _, subsampling in calls} == {"4:2:0", "4:4:4"}
    assert 0.65 < share_420 < 0.85  # the 0.75 weight


def test_noise_is_added_before_the_compression_only_when_drawn():
    rgb = photo()
    clean = jpeg_round_trip(rgb, 100, "4:4:4")
    settings = {"qualities": (100, 100), "subsamplings": (("4:4:4", 1.0),)}
    noisy = JpegDegradation(noise_probability=1.0, **settings)
    quiet = JpegDegradation(noise_probability=0.0, **settings)
    seeds = range(20)
    changed = sum(not np.array_equal(noisy(rgb, np.random.default_rng(s)), clean) for s in seeds)
    # sigma is drawn from [0, 2] levels: one near 0 (seed 0 draws 0.08) rounds away entirely
    assert changed >= 15
    for seed in seeds:
        np.testing.assert_array_equal(quiet(rgb, np.random.default_rng(seed)), clean)


def test_noise_stays_mild():
    rgb = photo()
    settings = {"qualities": (100, 100), "subsamplings": (("4:4:4", 1.0),)}
    noisy = JpegDegradation(noise_probability=1.0, max_noise_sigma=2.0, **settings)
    clean = jpeg_round_trip(rgb, 100, "4:4:4").astype(float)
    out = noisy(rgb, np.random.default_rng(0)).astype(float)
    assert np.sqrt(np.mean((out - clean) ** 2)) < 3  # levels: at most sigma plus the codec


@pytest.mark.parametrize(
    "settings",
    [
        {"qualities": (90, 30)},
        {"qualities": (0, 50)},
        {"qualities": (50, 101)},
        {"subsamplings": (("4:1:1", 1.0),)},
        {"subsamplings": ()},
        {"subsamplings": (("4:2:0", 1.0), ("4:4:4", 0.0))},
        {"subsamplings": (("4:2:0", -1.0),)},
        {"noise_probability": 1.5},
        {"noise_probability": -0.1},
        {"max_noise_sigma": -1.0},
    ],
)
def test_invalid_settings_are_refused(settings):
    with pytest.raises(ValueError):
        JpegDegradation(**settings)


def test_the_extremes_of_the_valid_settings_are_accepted():
    JpegDegradation(qualities=(1, 100), noise_probability=1.0, max_noise_sigma=0.0)
    JpegDegradation(qualities=(100, 100), subsamplings=(("4:2:2", 0.1),))


def test_the_named_degradations():
    assert DEGRADATIONS["bicubic"] is None
    jpeg = DEGRADATIONS["jpeg"]
    assert isinstance(jpeg, JpegDegradation)
    low, high = jpeg.qualities
    assert 1 <= low <= high <= 100
    assert all(1 <= quality <= 100 for quality in VALIDATION_QUALITIES)
    assert list(VALIDATION_QUALITIES) == sorted(VALIDATION_QUALITIES, reverse=True)


@pytest.mark.parametrize(
    ("size", "scale", "cropped"),
    [
        ((33, 25), 2, (32, 24)),
        ((33, 25), 3, (33, 24)),
        ((32, 24), 2, (32, 24)),
        ((7, 5), 4, (4, 4)),
    ],
)
def test_crop_to_multiple_keeps_the_top_left(size, scale, cropped):
    image = Image.fromarray(photo(size[1], size[0]))
    result = crop_to_multiple(image, scale)
    assert result.size == cropped
    np.testing.assert_array_equal(np.asarray(result), np.asarray(image)[: cropped[1], : cropped[0]])


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA"])
def test_hr_lr_pair_is_the_cropped_image_and_its_bicubic_downscale(mode):
    image = Image.fromarray(photo(25, 33)).convert(mode)
    hr, lr = hr_lr_pair(image, 2)
    assert hr.shape == (24, 32, 3) and lr.shape == (12, 16, 3)
    assert hr.dtype == lr.dtype == np.uint8
    rgb = np.asarray(image.convert("RGB"))
    np.testing.assert_array_equal(hr, rgb[:24, :32])
    expected = rgb[:24, :32].reshape(12, 2, 16, 2, 3).mean(axis=(1, 3))
    assert np.abs(lr.astype(float) - expected).mean() < 4  # a downscale of this very image
    np.testing.assert_array_equal(lr, np.asarray(bicubic_downscale(Image.fromarray(hr), 2)))


def test_the_two_quality_bands_split_the_photo_range_between_them():
    low, high = degradation.LOW_QUALITY_DEGRADATION, degradation.HIGH_QUALITY_DEGRADATION
    assert low.qualities[0] == degradation.PHOTO_DEGRADATION.qualities[0]
    assert low.qualities[1] + 1 == high.qualities[0]
    assert high.qualities[1] == degradation.PHOTO_DEGRADATION.qualities[1]
    assert degradation.DEGRADATIONS["jpeg-low"] is low
    assert degradation.DEGRADATIONS["jpeg-high"] is high
