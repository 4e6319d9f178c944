"""The image layer between raw request bytes and the network.

``decode`` turns untrusted PNG or JPEG bytes into float arrays, refusing anything we
will not process with an ``ImageRejected`` that carries an HTTP status, a stable code
and a message safe to show the client. ``encode`` turns the network's output back into
PNG, WebP or JPEG bytes that keep as much of the input's kind as the format can hold:
grey stays grey (PNG, JPEG), 16-bit grey stays 16-bit (PNG), transparency (PNG, WebP)
and the ICC profile survive. Other metadata (EXIF, text, gamma chunks) is not carried
over: orientation is already applied to the pixels, and EXIF often holds location data
the client did not ask us to echo back.

Every size check reads the header alone, before Pillow decodes a single pixel, so a
small file that declares a huge image costs nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from io import BytesIO

import numpy as np
from PIL import Image, ImageOps

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_SUPPORTED = "send PNG or JPEG"

# Formats people commonly send by mistake, so the refusal can say what we saw:
# (offset, magic bytes, what to call it).
_KNOWN_UNSUPPORTED = (
    (0, b"GIF87a", "GIF images"),
    (0, b"GIF89a", "GIF images"),
    (8, b"WEBP", "WebP images"),
    (0, b"BM", "BMP images"),
    (0, b"II*\x00", "TIFF images"),
    (0, b"MM\x00*", "TIFF images"),
    (0, b"%PDF", "PDF documents"),
    (8, b"heic", "HEIC images"),
    (8, b"heix", "HEIC images"),
    (8, b"mif1", "HEIF images"),
    (8, b"avif", "AVIF images"),
)
_UTF8_BOM = b"\xef\xbb\xbf"

# Pillow names 16-bit grey "I;16" (and byte-order variants); older Pillows opened
# 16-bit grey PNGs as 32-bit "I" holding the same 0..65535 samples.
_SIXTEEN_BIT_GREY_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})
_GREY_MODES = frozenset({"1", "L", "LA", "La"})

# zlib level 3. On 8 MP photo-like results (x2 at the 2 MP cap; benchmarks/encode.md) it
# took 0.75 s of CPU for 9.0 MB, against 2.5 s for 8.1 MB at level 6 and 10.6 s for 7.9 MB
# at level 9: the 1.7 s that level 6 adds to every such request outweighs sending its 11%
# fewer bytes on any link faster than about 4 Mbit/s. Level 1 saves another 0.3 s for 7%
# more bytes. Clients that count bytes can ask for webp.
_PNG_COMPRESS_LEVEL = 3


@dataclass(frozen=True)
class OutputFormat:
    """What one output format can hold, and how Pillow is asked to write it."""

    name: str  # as the API and the CLI spell it, also the file extension
    pillow_name: str
    mimetype: str
    grey: bool  # has a one-channel grey mode
    alpha: bool
    sixteen_bit: bool  # can hold 16-bit grey
    max_side: int
    options: dict[str, object]


OUTPUT_FORMATS = {
    f.name: f
    for f in (
        OutputFormat(
            name="png",
            pillow_name="PNG",
            mimetype="image/png",
            grey=True,
            alpha=True,
            sixteen_bit=True,
            max_side=2**31 - 1,
            options={"compress_level": _PNG_COMPRESS_LEVEL},
        ),
        # Lossless, and exact: keep the colour under fully transparent pixels, which
        # libwebp would otherwise overwrite to save bytes. Effort is libwebp's -z 1 preset
        # (quality 20, method 1): on 8 MP photo-like results (benchmarks/encode.md) it took
        # 1.1 s of CPU for 5.6 MB, 38% smaller than PNG level 3, where Pillow's default
        # (quality 80, method 4) took 6.1 s to save another 4%. Method 0 took 0.4 s but its
        # files were hardly smaller than PNG level 6's, which is not why clients ask for webp.
        OutputFormat(
            name="webp",
            pillow_name="WEBP",
            mimetype="image/webp",
            grey=False,
            alpha=True,
            sixteen_bit=False,
            max_side=16383,
            options={"lossless": True, "exact": True, "quality": 20, "method": 1},
        ),
        # Quality 95 with 4:4:4 chroma: an upscaler's output is all fine detail, which
        # Pillow's default 4:2:0 would halve in colour.
        OutputFormat(
            name="jpeg",
            pillow_name="JPEG",
            mimetype="image/jpeg",
            grey=True,
            alpha=False,
            sixteen_bit=False,
            max_side=65500,
            options={"quality": 95, "subsampling": 0},
        ),
    )
}
FORMATS = tuple(OUTPUT_FORMATS)


class ImageRejected(Exception):
    """Input we refuse to process.

    ``status`` is the HTTP status, ``code`` a stable snake_case identifier, and
    ``message`` a sentence for the client that names the limit or problem. Messages
    never include exception text, paths or tracebacks; the cause, when there is one,
    is chained as ``__cause__`` for server-side logs.
    """

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Limits:
    """What decode accepts for an output ``scale`` times larger.

    ``max_pixels`` is the input pixel cap at x2. Larger scales run the x2 network again
    on its own output (progressive upsampling), each pass on four times the pixels of
    the one before: x4 costs 1 + 4 = 5 passes' worth of x2 work, so its cap is a fifth.

    Pillow refuses, at open, images over twice ``PIL.Image.MAX_IMAGE_PIXELS`` (about
    179 million pixels) as decompression bombs; a cap above that is not reachable and
    such images are reported as too_many_pixels regardless.
    """

    # 2 MP: about 27 s of float32 inference on one core (benchmarks/latency-cap.md), under
    # half the request deadline, so a request at the cap finishes even behind a small one.
    max_pixels: int = 2_000_000
    min_side: int = 8
    scale: int = 2

    @property
    def cost(self) -> int:
        """x2 passes' worth of work per input pixel: 1 + 4 + ... over the passes."""
        return max(1, (self.scale**2 - 1) // 3)

    @property
    def pixel_cap(self) -> int:
        return self.max_pixels // self.cost

    def describe_cap(self) -> str:
        if self.cost == 1:
            return f"the limit is {self.pixel_cap:,} pixels"
        return (
            f"the limit for x{self.scale} is {self.pixel_cap:,} pixels (x{self.scale} costs "
            f"{self.cost} times as much as x2, whose limit is {self.max_pixels:,})"
        )


@dataclass
class DecodedImage:
    """An upright image ready for the network, plus what encode needs to match it.

    ``rgb`` is float32 HxWx3 in [0, 1] (grey replicated to three channels); ``alpha`` is
    float32 HxW in [0, 1] or None. ``sixteen_bit`` is true only for 16-bit grey input:
    Pillow reduces 16-bit colour PNGs to 8 bits on open, so those come back 8-bit.
    ``icc_profile`` is the input's profile, or None for CMYK input, whose profile
    describes ink rather than the RGB we convert to.
    """

    rgb: np.ndarray
    alpha: np.ndarray | None
    grayscale: bool
    sixteen_bit: bool
    icc_profile: bytes | None
    source_format: str

    @property
    def width(self) -> int:
        return self.rgb.shape[1]

    @property
    def height(self) -> int:
        return self.rgb.shape[0]


def sniff_format(data: bytes) -> str:
    """The format's name, "PNG" or "JPEG", judged by magic bytes alone; others get a 415."""
    if data.startswith(PNG_MAGIC):
        return "PNG"
    if data.startswith(_JPEG_MAGIC):
        return "JPEG"
    raise ImageRejected(415, "unsupported_media_type", _unsupported_message(data))


def _unsupported_message(data: bytes) -> str:
    for offset, magic, name in _KNOWN_UNSUPPORTED:
        if data[offset : offset + len(magic)] == magic:
            return f"{name} are not supported; {_SUPPORTED}."
    text = data[:1024].removeprefix(_UTF8_BOM).lstrip().lower()
    if text.startswith(b"<"):
        name = "SVG images" if b"<svg" in text else "XML and HTML documents"
        return f"{name} are not supported; {_SUPPORTED}."
    return f"The body is not a PNG or JPEG image; {_SUPPORTED}."


def decode(data: bytes, limits: Limits) -> DecodedImage:
    """Validate and decode PNG or JPEG bytes into an upright float image.

    Raises ImageRejected for empty bodies (400), other formats (415), and images that
    are too large, too small, animated or undecodable (422).
    """
    if not data:
        raise ImageRejected(400, "empty_body", f"The request body is empty; {_SUPPORTED}.")
    source_format = sniff_format(data)
    with _refuse_undecodable(source_format, limits):
        with _open(data, source_format) as header:
            _check_header(header, source_format, limits)
            # Pillow skips IDAT CRCs while decoding; verify() checks the CRC of every
            # chunk without decompressing anything. It is a no-op for JPEG.
            header.verify()
        # verify() leaves the image unusable, so decoding needs a fresh open.
        with _open(data, source_format) as image:
            return _decoded(image, source_format)


def _open(data: bytes, source_format: str) -> Image.Image:
    return Image.open(BytesIO(data), formats=[source_format])


@contextmanager
def _refuse_undecodable(source_format: str, limits: Limits) -> Iterator[None]:
    """Turn whatever Pillow raises on hostile or broken input into a 422.

    Pillow's failures span OSError, SyntaxError, ValueError, EOFError, struct.error,
    zlib.error and more, and differ between versions, so anything that is not ours
    counts as corrupt input. MemoryError is the exception: within our pixel cap it
    means the server is short of memory, which is a server fault, not the client's.
    """
    try:
        yield
    except (ImageRejected, MemoryError):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Raised by Image.open from the header, before we can read the size ourselves.
        raise ImageRejected(
            422,
            "too_many_pixels",
            f"The image declares far more pixels than allowed; {limits.describe_cap()}.",
        ) from exc
    except Exception as exc:
        raise ImageRejected(
            422,
            "corrupt_image",
            f"The {source_format} data is corrupt or truncated and cannot be decoded.",
        ) from exc


def _check_header(image: Image.Image, source_format: str, limits: Limits) -> None:
    """Refuse on what the header declares, before any pixel is decoded.

    EXIF rotation only swaps width and height, so these checks hold for the upright
    image too.
    """
    width, height = image.size
    pixels = width * height
    if pixels > limits.pixel_cap:
        raise ImageRejected(
            422,
            "too_many_pixels",
            f"The image is {width}x{height} ({pixels:,} pixels); {limits.describe_cap()}.",
        )
    if min(width, height) < limits.min_side:
        raise ImageRejected(
            422,
            "too_small",
            f"The image is {width}x{height}; both sides must be at least {limits.min_side} pixels.",
        )
    # Only PNG: a multi-picture JPEG (MPO, as phones write) is one photo plus extras,
    # and Pillow gives us the primary picture as the first frame.
    if source_format == "PNG" and getattr(image, "is_animated", False):
        raise ImageRejected(
            422, "animated_image", "Animated PNGs are not supported; send a single frame."
        )


def _decoded(image: Image.Image, source_format: str) -> DecodedImage:
    icc_profile = None if image.mode == "CMYK" else image.info.get("icc_profile") or None
    upright = ImageOps.exif_transpose(image)
    if upright.mode in _SIXTEEN_BIT_GREY_MODES:
        rgb, alpha = _sixteen_bit_grey(upright)
        grayscale, sixteen_bit = True, True
    else:
        grayscale = upright.mode in _GREY_MODES
        rgb, alpha = _eight_bit(upright, grayscale=grayscale)
        sixteen_bit = False
    return DecodedImage(rgb, alpha, grayscale, sixteen_bit, icc_profile, source_format)


def _sixteen_bit_grey(image: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    samples = np.asarray(image)
    # 16-bit grey PNG transparency is a single key value, not a channel.
    key = image.info.get("transparency")
    alpha = None if key is None else (samples != key).astype(np.float32)
    grey = samples.astype(np.float32) / 65535
    return _replicated(grey[..., None]), alpha


def _eight_bit(image: Image.Image, *, grayscale: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Everything else through Pillow's converters: palette, bilevel, CMYK, premultiplied.

    Palette images count as colour even when the palette is grey.
    """
    has_alpha = image.has_transparency_data
    mode = ("LA" if has_alpha else "L") if grayscale else ("RGBA" if has_alpha else "RGB")
    samples = np.asarray(image.convert(mode), dtype=np.float32) / 255
    samples = samples.reshape(image.height, image.width, len(mode))
    if not has_alpha:
        return _replicated(samples), None
    return _replicated(samples[..., :-1]), np.ascontiguousarray(samples[..., -1])


def _replicated(colour: np.ndarray) -> np.ndarray:
    """HxWx3 contiguous, repeating a single grey channel."""
    if colour.shape[2] == 1:
        return np.repeat(colour, 3, axis=2)
    return np.ascontiguousarray(colour)


def check_encodable(image: DecodedImage, scale: int, image_format: str) -> None:
    """Refuse, before any inference, what ``image_format`` could not hold at ``scale``.

    Only real transparency counts: an alpha channel that is opaque everywhere carries
    nothing a JPEG would lose, so it is dropped rather than refused.
    """
    output_format = OUTPUT_FORMATS[image_format]
    if image.alpha is not None and not output_format.alpha and image.alpha.min() < 1.0:
        raise ImageRejected(
            422,
            "format_cannot_carry_alpha",
            f"The image has transparency, which {image_format} cannot carry; "
            f"ask for {' or '.join(f.name for f in OUTPUT_FORMATS.values() if f.alpha)}.",
        )
    width, height = image.width * scale, image.height * scale
    if max(width, height) > output_format.max_side:
        raise ImageRejected(
            422,
            "too_large_for_format",
            f"At x{scale} the image would be {width}x{height}; {image_format} images "
            f"can be at most {output_format.max_side:,} pixels on a side. Ask for png.",
        )


def encode(
    rgb: np.ndarray,
    alpha: np.ndarray | None,
    *,
    grayscale: bool,
    sixteen_bit: bool,
    icc_profile: bytes | None = None,
    image_format: str = "png",
) -> bytes:
    """Image bytes from a float HxWx3 image on the [0, 1] scale and optional HxW alpha.

    Values are clipped to [0, 1] and rounded to the nearest level. Grey output takes the
    mean of the three channels: for grey input they are three estimates of one value,
    which luma weights (meant for genuinely coloured pixels) would mix unevenly. WebP has
    no grey mode, so grey is written as three equal channels. ``sixteen_bit`` gives a
    16-bit PNG only for grey without alpha, the only 16-bit PNG Pillow writes; everything
    else is written at 8 bits per sample, keeping transparency over depth. An alpha
    channel is dropped where the format has none (``check_encodable`` refuses the cases
    where that would lose transparency).
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"rgb must be HxWx3, got shape {rgb.shape}")
    if alpha is not None and alpha.shape != rgb.shape[:2]:
        raise ValueError(f"alpha shape {alpha.shape} does not match rgb {rgb.shape[:2]}")
    output_format = OUTPUT_FORMATS[image_format]
    grey = grayscale and output_format.grey
    if not output_format.alpha:
        alpha = None
    colour = rgb
    if grayscale:
        colour = rgb.mean(axis=2, keepdims=True)
        if not grey:
            colour = np.repeat(colour, 3, axis=2)
    if sixteen_bit and grey and alpha is None and output_format.sixteen_bit:
        samples = _quantised(colour[..., 0], np.uint16)
    else:
        samples = _quantised(colour, np.uint8)
        if alpha is not None:
            samples = np.concatenate([samples, _quantised(alpha[..., None], np.uint8)], axis=2)
        if samples.shape[2] == 1:
            samples = samples[..., 0]
    if not grey and _is_grey_profile(icc_profile):
        # A grey input's profile cannot describe the RGB samples WebP needs.
        icc_profile = None
    buffer = BytesIO()
    # Pillow infers L, LA, RGB, RGBA or I;16 from the array's shape and dtype.
    Image.fromarray(samples).save(
        buffer, output_format.pillow_name, icc_profile=icc_profile, **output_format.options
    )
    return buffer.getvalue()


def _is_grey_profile(icc_profile: bytes | None) -> bool:
    # Bytes 16-19 of an ICC profile's header name the colour space it describes.
    return icc_profile is not None and icc_profile[16:20] == b"GRAY"


def _quantised(values: np.ndarray, dtype: type[np.unsignedinteger]) -> np.ndarray:
    # Round to the nearest level: truncation would darken every pixel by half a level.
    top = np.iinfo(dtype).max
    return np.rint(np.clip(values, 0.0, 1.0) * top).astype(dtype)
