"""The whole served path for one image: bytes in, PNG bytes out.

The HTTP layer and the evaluation both call ``supersize`` so that what we measure is
exactly what users get.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from supersizeme.images import DecodedImage, Limits, decode, encode_png

# An HxWx3 float image and a monotonic deadline (or None) -> the upscaled image.
Upscale = Callable[[np.ndarray, float | None], np.ndarray]


@dataclass
class Timings:
    decode: float = 0.0
    inference: float = 0.0
    encode: float = 0.0

    def server_timing(self) -> str:
        """The value of a ``Server-Timing`` header, in milliseconds."""
        return ", ".join(f"{name};dur={seconds * 1000:.1f}" for name, seconds in vars(self).items())


def upscale_alpha(alpha: np.ndarray, scale: int) -> np.ndarray:
    """Alpha is a coverage mask, not a photograph: bicubic on its own, not the network.

    The RDN learned natural images; running masks through it would double the cost of
    every transparent image for edges that bicubic already keeps smooth.
    """
    height, width = alpha.shape
    mask = Image.fromarray(np.ascontiguousarray(alpha, np.float32), mode="F")
    return np.asarray(mask.resize((width * scale, height * scale), Image.Resampling.BICUBIC))


def upscale_decoded(
    image: DecodedImage, upscale: Upscale, scale: int, deadline: float | None, timings: Timings
) -> bytes:
    started = time.perf_counter()
    rgb = upscale(image.rgb, deadline)
    alpha = upscale_alpha(image.alpha, scale) if image.alpha is not None else None
    timings.inference = time.perf_counter() - started
    started = time.perf_counter()
    png = encode_png(
        rgb,
        alpha,
        grayscale=image.grayscale,
        sixteen_bit=image.sixteen_bit,
        icc_profile=image.icc_profile,
    )
    timings.encode = time.perf_counter() - started
    return png


def supersize(
    data: bytes, upscale: Upscale, scale: int, limits: Limits, deadline: float | None = None
) -> tuple[bytes, Timings]:
    """Decode and validate ``data``, upscale it, and encode the result as PNG."""
    timings = Timings()
    started = time.perf_counter()
    image = decode(data, limits)
    timings.decode = time.perf_counter() - started
    return upscale_decoded(image, upscale, scale, deadline, timings), timings
