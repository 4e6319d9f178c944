"""The degradation that defines the x2 task: what training learns to undo.

Every SR benchmark (and so our training) makes the low-resolution input by a bicubic
downscale of the high-resolution image, after cropping the latter to a multiple of the
scale. Training and evaluation share these functions so that they cannot drift apart.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def crop_to_multiple(image: Image.Image, scale: int) -> Image.Image:
    width, height = image.size
    return image.crop((0, 0, width - width % scale, height - height % scale))


def bicubic_downscale(image: Image.Image, scale: int) -> Image.Image:
    """Pillow's bicubic downscale; the image must already be a multiple of ``scale``."""
    width, height = image.size
    return image.resize((width // scale, height // scale), Image.Resampling.BICUBIC)


def bicubic_upscale(image: Image.Image, scale: int) -> Image.Image:
    width, height = image.size
    return image.resize((width * scale, height * scale), Image.Resampling.BICUBIC)


def hr_lr_pair(image: Image.Image, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """(HR, LR) uint8 RGB arrays: HR cropped to a multiple of ``scale``, LR its downscale."""
    hr = crop_to_multiple(image.convert("RGB"), scale)
    return np.asarray(hr), np.asarray(bicubic_downscale(hr, scale))
