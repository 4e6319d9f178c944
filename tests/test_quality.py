"""PSNR and SSIM against closed-form values and against scikit-image's implementation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from supersizeme.toolchain.quality import psnr, rgb_to_y, shave, ssim, y_psnr_ssim


def smooth_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A photo-like RGB image on 0..255: smooth shapes plus a little texture."""
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    base = 128 + 80 * np.sin(6 * xx + 3 * yy)[..., None] * np.array([1.0, 0.7, 0.4])
    return np.clip(base + rng.normal(0, 12, (height, width, 3)), 0, 255)


def test_identical_images_are_infinite_psnr_and_unit_ssim():
    image = smooth_image(np.random.default_rng(0), 40, 50)
    assert psnr(image, image) == math.inf
    assert ssim(image[..., 0], image[..., 0]) == pytest.approx(1.0, abs=1e-12)
    assert y_psnr_ssim(image, image, border=2) == (math.inf, pytest.approx(1.0, abs=1e-12))


@pytest.mark.parametrize("offset", [1, 3, 10])
def test_constant_offset_gives_closed_form_psnr(offset):
    reference = np.full((16, 16), 100.0)
    assert psnr(reference, reference + offset) == pytest.approx(
        20 * math.log10(255 / offset), abs=1e-9
    )


def test_gaussian_noise_gives_expected_psnr():
    sigma = 5.0
    reference = np.full((512, 512), 128.0)
    noisy = reference + np.random.default_rng(1).normal(0, sigma, reference.shape)
    assert psnr(reference, noisy) == pytest.approx(20 * math.log10(255 / sigma), abs=0.05)


def test_y_of_white_and_black_is_the_bt601_range():
    assert rgb_to_y(np.full((2, 2, 3), 255.0)) == pytest.approx(235.0)
    assert rgb_to_y(np.zeros((2, 2, 3))) == pytest.approx(16.0)


def test_grey_2d_measures_like_its_rgb_copy():
    rng = np.random.default_rng(2)
    grey = smooth_image(rng, 30, 30)[..., 0]
    other = np.clip(grey + rng.normal(0, 4, grey.shape), 0, 255)
    as_rgb = [np.repeat(a[..., None], 3, axis=2) for a in (grey, other)]
    assert y_psnr_ssim(grey, other, 2) == pytest.approx(y_psnr_ssim(*as_rgb, 2), abs=1e-12)


def test_shave_removes_the_border():
    assert shave(np.zeros((10, 12, 3)), 2).shape == (6, 8, 3)
    assert shave(np.zeros((10, 12)), 0).shape == (10, 12)


@pytest.mark.parametrize("noise", [2.0, 15.0])
def test_matches_scikit_image(noise):
    rng = np.random.default_rng(3)
    hr = smooth_image(rng, 64, 80)
    sr = np.clip(hr + rng.normal(0, noise, hr.shape), 0, 255)
    y_hr, y_sr = shave(rgb_to_y(hr), 2), shave(rgb_to_y(sr), 2)
    ours_psnr, ours_ssim = y_psnr_ssim(hr, sr, border=2)
    # The papers' SSIM: 11x11 Gaussian window (sigma 1.5), population covariance.
    reference_ssim = structural_similarity(
        y_hr, y_sr, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255
    )
    assert ours_ssim == pytest.approx(reference_ssim, abs=1e-9)
    assert ours_psnr == pytest.approx(peak_signal_noise_ratio(y_hr, y_sr, data_range=255))
