"""The degradations that define the x2 tasks: what training learns to undo.

Every SR benchmark (and so the clean model's training) makes the low-resolution input by
a bicubic downscale of the high-resolution image, after cropping the latter to a multiple
of the scale. The photo model's input is that downscale saved as a JPEG, at the qualities
cameras and the web use, in 4:2:0 or 4:4:4 chroma, and optionally with mild sensor-like
noise before the compression. Training and evaluation share these functions so that they
cannot drift apart.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

# uint8 RGB and the run's random generator -> the degraded uint8 RGB.
Degrade = Callable[[np.ndarray, np.random.Generator], np.ndarray]

# Pillow's names for the chroma subsamplings a JPEG is saved with.
SUBSAMPLINGS = {"4:4:4": 0, "4:2:2": 1, "4:2:0": 2}


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


def jpeg_bytes(image: Image.Image, quality: int, subsampling: str = "4:2:0") -> bytes:
    """``image`` saved as a baseline JPEG by Pillow (libjpeg's standard tables)."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality, subsampling=SUBSAMPLINGS[subsampling])
    return buffer.getvalue()


def jpeg_round_trip(rgb: np.ndarray, quality: int, subsampling: str = "4:2:0") -> np.ndarray:
    """uint8 RGB as it comes back from a JPEG of ``quality`` in ``subsampling``."""
    data = jpeg_bytes(Image.fromarray(rgb), quality, subsampling)
    with Image.open(io.BytesIO(data)) as decoded:
        return np.asarray(decoded.convert("RGB"))


@dataclass(frozen=True)
class JpegDegradation:
    """A random JPEG compression of an LR patch: the photo model's training input.

    The quality is drawn uniformly from ``qualities`` (inclusive), the subsampling from
    ``subsamplings`` with their weights (4:2:0 is what Pillow, libjpeg and most cameras
    write by default, 4:4:4 what careful exports choose); with probability
    ``noise_probability`` Gaussian noise of a standard deviation drawn from
    [0, ``max_noise_sigma``] levels (of 255) is added first, as a
    camera's sensor adds it before its encoder runs.
    """

    qualities: tuple[int, int] = (30, 95)
    subsamplings: tuple[tuple[str, float], ...] = (("4:2:0", 0.75), ("4:4:4", 0.25))
    noise_probability: float = 0.0
    max_noise_sigma: float = 2.0

    def __post_init__(self) -> None:
        low, high = self.qualities
        if not 1 <= low <= high <= 100:
            raise ValueError(f"JPEG qualities {self.qualities}: need 1 <= low <= high <= 100")
        names = {name for name, _ in self.subsamplings}
        if not names or names - set(SUBSAMPLINGS):
            raise ValueError(f"subsamplings {self.subsamplings}: choose from {list(SUBSAMPLINGS)}")
        if any(weight <= 0 for _, weight in self.subsamplings):
            raise ValueError(f"subsamplings {self.subsamplings}: weights must be positive")
        if not 0 <= self.noise_probability <= 1 or self.max_noise_sigma < 0:
            raise ValueError("noise: a probability in [0, 1] and a sigma >= 0")

    def __call__(self, rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``rgb`` (uint8) degraded; the same ``rng`` state gives the same result."""
        quality = int(rng.integers(self.qualities[0], self.qualities[1] + 1))
        weights = np.array([weight for _, weight in self.subsamplings])
        choice = rng.choice(len(weights), p=weights / weights.sum())
        subsampling = self.subsamplings[int(choice)][0]
        if rng.random() < self.noise_probability:
            sigma = rng.uniform(0, self.max_noise_sigma)
            noisy = rgb.astype(np.float32) + rng.normal(0, sigma, rgb.shape).astype(np.float32)
            rgb = np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
        return jpeg_round_trip(np.ascontiguousarray(rgb), quality, subsampling)


# The degradations a training run can name (``--degradation``), applied after the downscale.
# ``jpeg`` spans every quality a photo arrives in; ``jpeg-high`` and ``jpeg-low`` split it
# in two bands: one model for all of it smooths the light artefacts of high qualities as
# hard as the heavy blocking of low ones.
PHOTO_DEGRADATION = JpegDegradation()
HIGH_QUALITY_DEGRADATION = JpegDegradation(qualities=(75, 95))
LOW_QUALITY_DEGRADATION = JpegDegradation(qualities=(30, 74))
DEGRADATIONS: dict[str, Degrade | None] = {
    "bicubic": None,
    "jpeg": PHOTO_DEGRADATION,
    "jpeg-high": HIGH_QUALITY_DEGRADATION,
    "jpeg-low": LOW_QUALITY_DEGRADATION,
}

# The fixed JPEG qualities (4:2:0, Pillow's default) of a training run's validation read-out.
VALIDATION_QUALITIES = (90, 75, 50)
