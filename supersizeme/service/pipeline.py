"""The whole served path for one image: bytes in, PNG, WebP or JPEG bytes out.

The HTTP layer, the batch CLI and the evaluation all go through ``decode_for`` and
``upscale_decoded`` (``supersize`` is the two in a row), so that what we measure is
exactly what users get.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from supersizeme.service.images import DecodedImage, Limits, check_encodable, decode, encode
from supersizeme.service.tiling import Stop

# An HxWx3 float image and when to give up on it (or None: never) -> the upscaled image.
Upscale = Callable[[np.ndarray, Stop | None], np.ndarray]

# x4 is the x2 network run twice (progressive upsampling), not a network of its own.
SCALES = (2, 4)


@dataclass
class Timings:
    decode: float = 0.0
    queue: float = 0.0  # waiting for the worker's inference turn (set by the API)
    inference: float = 0.0
    encode: float = 0.0

    def server_timing(self) -> str:
        """The value of a ``Server-Timing`` header, in milliseconds."""
        return ", ".join(f"{name};dur={seconds * 1000:.1f}" for name, seconds in vars(self).items())


def output_name(stem: str, scale: int, image_format: str) -> str:
    """The file name of a result, e.g. ``photo-x4.webp``."""
    return f"{stem}-x{scale}.{image_format}"


def upscale_alpha(alpha: np.ndarray, scale: int) -> np.ndarray:
    """Alpha is a coverage mask, not a photograph: bicubic on its own, not the network.

    The RDN learned natural images; running masks through it would double the cost of
    every transparent image for edges that bicubic already keeps smooth. At x4 it is one
    resize to the final size rather than two, so the mask is interpolated only once.
    """
    height, width = alpha.shape
    mask = Image.fromarray(np.ascontiguousarray(alpha, np.float32), mode="F")
    return np.asarray(mask.resize((width * scale, height * scale), Image.Resampling.BICUBIC))


def progressive(rgb: np.ndarray, upscale: Upscale, scale: int, stop: Stop | None) -> np.ndarray:
    """Run the network until the image is ``scale`` times larger: once for x2, twice for x4.

    Between passes the image is clipped to [0, 1], the range the network was trained
    on, as if its x2 result had been saved and sent again (but without rounding). Every
    pass checks ``stop`` between tiles, so one deadline covers them all and a client that
    hangs up during either pass costs at most one more tile.
    """
    height, width = rgb.shape[:2]
    while rgb.shape[0] < height * scale:
        if rgb.shape[0] > height:
            rgb = np.clip(rgb, 0.0, 1.0)
        rgb = upscale(rgb, stop)
    if rgb.shape[:2] != (height * scale, width * scale):
        raise ValueError(f"the network's factor cannot make x{scale} in whole passes")
    return rgb


def decode_for(
    data: bytes, limits: Limits, scale: int, image_format: str, timings: Timings
) -> DecodedImage:
    """Decode and validate ``data`` for an x``scale`` result in ``image_format``.

    ``limits`` are the x2 limits; the pixel cap shrinks for larger scales. Everything
    that would refuse the image happens here, before any inference is spent on it.
    """
    started = time.perf_counter()
    image = decode(data, replace(limits, scale=scale))
    check_encodable(image, scale, image_format)
    timings.decode = time.perf_counter() - started
    return image


def upscale_decoded(
    image: DecodedImage,
    upscale: Upscale,
    scale: int,
    stop: Stop | None,
    timings: Timings,
    image_format: str = "png",
) -> bytes:
    started = time.perf_counter()
    rgb = progressive(image.rgb, upscale, scale, stop)
    alpha = upscale_alpha(image.alpha, scale) if image.alpha is not None else None
    timings.inference = time.perf_counter() - started
    started = time.perf_counter()
    encoded = encode(
        rgb,
        alpha,
        grayscale=image.grayscale,
        sixteen_bit=image.sixteen_bit,
        icc_profile=image.icc_profile,
        image_format=image_format,
    )
    timings.encode = time.perf_counter() - started
    return encoded


def supersize(
    data: bytes,
    upscale: Upscale,
    scale: int,
    limits: Limits,
    stop: Stop | None = None,
    image_format: str = "png",
) -> tuple[bytes, Timings]:
    """Decode and validate ``data``, upscale it ``scale`` times, and encode the result."""
    timings = Timings()
    image = decode_for(data, limits, scale, image_format, timings)
    return upscale_decoded(image, upscale, scale, stop, timings, image_format), timings
