"""Image quality metrics as the super-resolution papers compute them.

PSNR and SSIM are measured on the luma (Y) channel of ITU-R BT.601 in the
[16, 235] range, on 8-bit scale values, after shaving ``border`` pixels from each
side (the RDN paper and its predecessors shave ``scale`` pixels). SSIM follows
Wang et al. 2004: an 11x11 Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03,
evaluated only where the window fits ("valid").
"""

from __future__ import annotations

import numpy as np

# BT.601 luma from R'G'B' in [0, 1] to Y in [16, 235] (MATLAB's rgb2ycbcr).
_BT601_Y = np.array([65.481, 128.553, 24.966])


def rgb_to_y(image: np.ndarray) -> np.ndarray:
    """Y channel (float64, 16..235) of an HxWx3 RGB image on the 0..255 scale.

    A 2-D (grayscale) image counts as R = G = B, so that a grey image and its RGB copy
    measure the same.
    """
    pixels = np.asarray(image, dtype=np.float64)
    if pixels.ndim == 2:
        pixels = pixels[..., None].repeat(3, axis=2)
    return 16.0 + pixels[..., :3] @ _BT601_Y / 255.0


def shave(image: np.ndarray, border: int) -> np.ndarray:
    if border == 0:
        return image
    return image[border:-border, border:-border, ...]


def psnr(reference: np.ndarray, test: np.ndarray, peak: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB; infinite for identical images."""
    ref = np.asarray(reference, dtype=np.float64)
    out = np.asarray(test, dtype=np.float64)
    if ref.shape != out.shape:
        raise ValueError(f"shapes differ: {ref.shape} vs {out.shape}")
    mse = np.mean((ref - out) ** 2)
    if mse == 0:
        return float("inf")
    return float(10.0 * np.log10(peak**2 / mse))


def _gaussian_kernel(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    offsets = np.arange(size) - (size - 1) / 2
    kernel = np.exp(-(offsets**2) / (2 * sigma**2))
    return kernel / kernel.sum()


def _filter_valid(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Separable 'valid' correlation of a 2-D image with a 1-D kernel on both axes."""
    n = len(kernel)
    rows = sum(k * image[i : image.shape[0] - n + 1 + i, :] for i, k in enumerate(kernel))
    return sum(k * rows[:, i : rows.shape[1] - n + 1 + i] for i, k in enumerate(kernel))


def ssim(reference: np.ndarray, test: np.ndarray, peak: float = 255.0) -> float:
    """Mean structural similarity of two 2-D images (Wang et al. 2004)."""
    ref = np.asarray(reference, dtype=np.float64)
    out = np.asarray(test, dtype=np.float64)
    if ref.shape != out.shape or ref.ndim != 2:
        raise ValueError(f"need two 2-D images of one shape, got {ref.shape} and {out.shape}")
    c1 = (0.01 * peak) ** 2
    c2 = (0.03 * peak) ** 2
    kernel = _gaussian_kernel()
    mu_x = _filter_valid(ref, kernel)
    mu_y = _filter_valid(out, kernel)
    var_x = _filter_valid(ref * ref, kernel) - mu_x**2
    var_y = _filter_valid(out * out, kernel) - mu_y**2
    cov = _filter_valid(ref * out, kernel) - mu_x * mu_y
    index = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    )
    return float(index.mean())


def y_psnr_ssim(hr: np.ndarray, sr: np.ndarray, border: int) -> tuple[float, float]:
    """PSNR and SSIM on the shaved Y channel: the protocol of the SR benchmark tables."""
    y_hr = shave(rgb_to_y(hr), border)
    y_sr = shave(rgb_to_y(sr), border)
    return psnr(y_hr, y_sr), ssim(y_hr, y_sr)
