"""The whole served path for one image: bytes in, PNG, WebP or JPEG bytes out.

The HTTP layer, the batch CLI and the evaluation all go through ``decode_for`` and
``upscale_decoded`` (``supersize`` is the two in a row), so that what we measure is
exactly what users get.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np
from PIL import Image

from supersizeme.service.images import DecodedImage, Limits, check_encodable, decode, encode
from supersizeme.service.tiling import Stop


class Upscale(Protocol):
    def __call__(
        self, rgb: np.ndarray, stop: Stop | None, *, dtype: type[np.generic] = np.float32
    ) -> np.ndarray:
        """An HxWx3 float image, and when to give up on it (or None: never) -> the
        upscaled image, as float32 or as rounded levels of ``dtype``."""
        ...


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

    @contextmanager
    def measure(self, stage: str) -> Iterator[None]:
        """Record the seconds the block takes as ``stage``; a block that raises records none."""
        started = time.perf_counter()
        yield
        setattr(self, stage, time.perf_counter() - started)


@dataclass(frozen=True)
class Output:
    """The result asked for: how many times larger, and in which format."""

    scale: int = 2
    image_format: str = "png"

    def file_name(self, stem: str) -> str:
        """The file name of a result, e.g. ``photo-x4.webp``."""
        return f"{stem}-x{self.scale}.{self.image_format}"


def upscale_alpha(alpha: np.ndarray, scale: int) -> np.ndarray:
    """Alpha is a coverage mask, not a photograph: bicubic on its own, not the network.

    The RDN learned natural images; running masks through it would double the cost of
    every transparent image for edges that bicubic already keeps smooth. At x4 it is one
    resize to the final size rather than two, so the mask is interpolated only once.
    """
    height, width = alpha.shape
    mask = Image.fromarray(np.ascontiguousarray(alpha, np.float32), mode="F")
    return np.asarray(mask.resize((width * scale, height * scale), Image.Resampling.BICUBIC))


def progressive(
    rgb: np.ndarray,
    upscale: Upscale,
    scale: int,
    stop: Stop | None,
    dtype: type[np.generic] = np.float32,
    first: Upscale | None = None,
) -> np.ndarray:
    """Run the network until the image is ``scale`` times larger: once for x2, twice for x4.

    ``first`` (by default ``upscale``) runs the first pass: the photo model removes a
    JPEG's artefacts there, and the second pass enlarges its clean result. Between passes
    the image is clipped to [0, 1], the range the network was trained on, as if its x2
    result had been saved and sent again (but without rounding). Every pass checks
    ``stop`` between tiles, so one deadline covers them all and a client that hangs up
    during either pass costs at most one more tile. The last pass gives ``dtype``.
    """
    height, width = rgb.shape[:2]
    while rgb.shape[0] < height * scale:
        if rgb.shape[0] > height:
            rgb = np.clip(rgb, 0.0, 1.0)
        last = rgb.shape[0] * 2 >= height * scale
        network = first if first is not None and rgb.shape[0] == height else upscale
        rgb = network(rgb, stop, dtype=dtype) if last else network(rgb, stop)
    if rgb.shape[:2] != (height * scale, width * scale):
        raise ValueError(f"the network's factor cannot make x{scale} in whole passes")
    return rgb


def decode_for(
    data: bytes,
    limits: Limits,
    output: Output,
    timings: Timings,
    admit: Callable[[int, bool], None] | None = None,
) -> DecodedImage:
    """Decode and validate ``data`` for the ``output`` asked for.

    ``limits`` are the x2 limits; the pixel cap shrinks for larger scales. Everything
    that would refuse the image happens here, before any inference is spent on it;
    ``admit`` (see ``images.decode``) gets the input's size before it is decoded.
    """
    with timings.measure("decode"):
        image = decode(data, replace(limits, scale=output.scale), admit)
        check_encodable(image, output.scale, output.image_format)
    return image


def upscale_decoded(
    image: DecodedImage,
    upscale: Upscale,
    output: Output,
    stop: Stop | None,
    timings: Timings,
    first: Upscale | None = None,
) -> bytes:
    """Enlarge and encode a decoded image; ``first`` runs the first pass (``progressive``)."""
    # Colour results are kept as 8-bit levels from the network on: every output format
    # writes colour in 8 bits. Grey ones stay float, for their channel mean and 16 bits.
    dtype = np.float32 if image.grayscale else np.uint8
    with timings.measure("inference"):
        rgb = progressive(image.rgb, upscale, output.scale, stop, dtype, first)
        alpha = upscale_alpha(image.alpha, output.scale) if image.alpha is not None else None
    with timings.measure("encode"):
        return encode(
            rgb,
            alpha,
            grayscale=image.grayscale,
            sixteen_bit=image.sixteen_bit,
            icc_profile=image.icc_profile,
            image_format=output.image_format,
        )


def supersize(
    data: bytes, upscale: Upscale, output: Output, limits: Limits, stop: Stop | None = None
) -> tuple[bytes, Timings]:
    """Decode and validate ``data``, upscale and encode it as ``output`` asks."""
    timings = Timings()
    image = decode_for(data, limits, output, timings)
    return upscale_decoded(image, upscale, output, stop, timings), timings
