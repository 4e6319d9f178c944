"""The image layer between raw request bytes and the network.

``decode`` turns untrusted PNG or JPEG bytes into float arrays, refusing anything we
will not process with a ``Refused`` (errors.py) that carries a stable code and a message
safe to show the client. ``encode`` turns the network's output back into PNG, WebP or
JPEG bytes that keep as much of the input's kind as the format can hold: grey stays grey
(PNG, JPEG), 16-bit grey stays 16-bit (PNG), transparency (PNG, WebP) and the ICC
profile survive. Other metadata (EXIF, text, gamma chunks) is not carried over:
orientation is already applied to the pixels, and EXIF often holds location data the
client did not ask us to echo back.

Every size check reads the header alone, before Pillow decodes a single pixel, so a
small file that declares a huge image costs nothing. What the header does not bound (how
many scans a JPEG is cut into, how many chunks or how much text a PNG carries, the EXIF)
is checked from the raw bytes before Pillow parses them, or capped in Pillow itself, so
that decoding any accepted upload takes bounded time and memory
(benchmarks/decode-bounds.md).
"""

from __future__ import annotations

import re
import struct
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from io import BytesIO

import numpy as np
from PIL import ExifTags, Image, PngImagePlugin

from supersizeme.machine import cpu_count
from supersizeme.service.errors import Refused
from supersizeme.service.jpeg_quality import estimate_quality
from supersizeme.service.levels import quantised
from supersizeme.service.png import encode_png

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

# --- what the header does not bound ------------------------------------------------------
# Decoders also spend time on how a file is cut up, not only on its pixels and size. Each
# limit is far above what encoders write; together they keep the decoding of the worst
# accepted 5 MB upload under a second and 100 MiB. The costs quoted below are of files
# the limits refuse, decoded by Pillow alone (benchmarks/decode-bounds.md).

# libjpeg decodes every scan of a progressive JPEG over the whole image, however few bytes
# the scan has: 20,000 scans of 12 bytes (250 KB) took 4.6 s at 2 MP. libjpeg-turbo advises
# applications to cap the scans; encoders write about 10 (20 with custom scripts).
MAX_JPEG_SCANS = 100
# Pillow parses JPEG marker segments and PNG chunks in Python, microseconds each: 5 MB of
# empty comments or chunks took 2.5 s. libpng writes 8 KiB IDAT chunks, 640 in 5 MB.
MAX_JPEG_SEGMENTS = 1_000
MAX_PNG_CHUNKS = 10_000
# Pillow's JPEG header parser also steps through any bytes between markers (0xFF fill,
# stray bytes) one at a time: 5 MB of 0xFF took 4.8 s. Encoders write none.
MAX_JPEG_HEADER_PADDING = 64 * 1024
# Two kinds of header segment Pillow parses entry by entry: quantization tables (65 bytes
# each; an image uses at most 4) and Photoshop's resource blocks (12 bytes and up; the
# APP13 of a Photoshop export is a few KiB). 5 MB of tables took 0.5 s, and a decode
# opens the file twice.
MAX_JPEG_PARSED_SEGMENT_BYTES = 256 * 1024
# Pillow inflates every zTXt, iTXt and iCCP chunk (up to MAX_TEXT_CHUNK each) and keeps the
# text it finds (up to MAX_TEXT_MEMORY; we use none of it). Chunks without a keyword are
# inflated but never counted against that, so only their number bounds the inflating:
# 1 MB of them took 6 s.
MAX_PNG_COMPRESSED_CHUNKS = 16
# Per chunk, once inflated: Pillow's own default, because it also bounds the ICC profile,
# which we keep.
PngImagePlugin.MAX_TEXT_CHUNK = 1024 * 1024
# All text together: Pillow's default of 64 MiB let a 75 KB PNG of zTXt chunks hold 63 MiB.
PngImagePlugin.MAX_TEXT_MEMORY = 4 * 1024 * 1024
# Pillow reads every entry of the EXIF's first directory (12 bytes each; 65,535 of them
# took 2.4 s) to find the orientation. A JPEG holds at most this much EXIF (one APP1
# segment), and a PNG may not carry more.
MAX_EXIF_BYTES = 65_533
# Pillow warns once per distinct message about each malformed EXIF entry: on hostile input
# that is thousands of lines on stderr per request, and a warnings registry that keeps
# every message for the life of the worker. We read nothing from EXIF but the orientation.
warnings.filterwarnings("ignore", module=r"PIL\.TiffImagePlugin")

# A JPEG marker is 0xFF and a code byte. Within entropy-coded data 0xFF 0x00 is a data
# byte; a 0xFF may be followed by more 0xFF fill bytes (the marker is the run's last one);
# RST0-7 (0xD0-0xD7) carry no length. Matching two bytes at a time keeps the search
# linear on long runs of 0xFF.
_JPEG_MARKER = re.compile(rb"\xff[^\x00\xff\xd0-\xd7]")
_SOS, _DQT, _APP13 = 0xDA, 0xDB, 0xED
_PHOTOSHOP = b"Photoshop 3.0\0"
# Codes followed by a two-byte length, by which libjpeg and Pillow's header parser both
# skip the segment: SOFn, DHT, DAC, SOS, DQT, DNL, DRI, APPn, COM. At any other code but
# EOI libjpeg stops with an error.
_JPEG_SEGMENT_CODES = frozenset(
    {*range(0xC0, 0xC8), *range(0xC9, 0xD0), *range(0xDA, 0xDE), *range(0xE0, 0xF0), 0xFE}
)
# The frame types (SOFn) that Pillow's libjpeg does not decode, by what they are named in
# ITU-T T.81 (B.1.1.3): hierarchical and arithmetic-coded ones. Huffman-coded baseline,
# extended, progressive and lossless frames (SOF0-3) are decoded.
_UNSUPPORTED_FRAMES = {
    0xC5: "hierarchical (differential sequential)",
    0xC6: "hierarchical (differential progressive)",
    0xC7: "hierarchical (differential lossless)",
    0xC9: "arithmetic-coded (extended sequential)",
    0xCA: "arithmetic-coded (progressive)",
    0xCB: "arithmetic-coded (lossless)",
    0xCD: "arithmetic-coded (differential sequential)",
    0xCE: "arithmetic-coded (differential progressive)",
    0xCF: "arithmetic-coded (differential lossless)",
}
_PNG_COMPRESSED_CHUNKS = frozenset({b"zTXt", b"iTXt", b"iCCP"})

# EXIF orientation -> the transpose that shows the image upright (as ImageOps.exif_transpose).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

# PNG is written by supersizeme/service/png.py, on every core, not by Pillow (whose zlib
# runs on one thread): see that module and benchmarks/encode.md.
_PNG_OPTIONS: dict[str, object] = {}
# Lossless, and exact: keep the colour under fully transparent pixels, which libwebp would
# otherwise overwrite to save bytes. Effort is libwebp's -z 1 preset (quality 20, method 1):
# on 48 MP photo-like results (benchmarks/encode.md, one run on an AMD EPYC with AVX-512
# BF16) it wrote files 23% smaller than PNG in 6.9 s (libwebp encodes them on one thread),
# where Pillow's default (quality 80, method 4) took 40 s for the same size. Method 0 took
# 3.8 s, but its files were only 8% smaller than PNG's, which is not why clients ask for webp.
_WEBP_OPTIONS: dict[str, object] = {"lossless": True, "exact": True, "quality": 20, "method": 1}
# Quality 95 with 4:4:4 chroma: an upscaler's output is all fine detail, which Pillow's
# default 4:2:0 would halve in colour.
_JPEG_OPTIONS: dict[str, object] = {"quality": 95, "subsampling": 0}


@dataclass(frozen=True)
class OutputFormat:
    """What one output format can hold, and how Pillow is asked to write it."""

    name: str  # as the API and the CLI spell it, also the file extension
    max_side: int
    options: dict[str, object]
    grey: bool = False  # has a one-channel grey mode
    alpha: bool = False
    sixteen_bit: bool = False  # can hold 16-bit grey

    @property
    def pillow_name(self) -> str:
        return self.name.upper()

    @property
    def mimetype(self) -> str:
        return f"image/{self.name}"


OUTPUT_FORMATS = {
    f.name: f
    for f in (
        OutputFormat("png", 2**31 - 1, _PNG_OPTIONS, grey=True, alpha=True, sixteen_bit=True),
        OutputFormat("webp", 16383, _WEBP_OPTIONS, alpha=True),
        OutputFormat("jpeg", 65500, _JPEG_OPTIONS, grey=True),
    )
}
FORMATS = tuple(OUTPUT_FORMATS)


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

    # The cap of a Limits made without one (the fuzzer, tests); the server's is decided by
    # each worker from its speed and memory (capacity.decide_cap).
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
    # A JPEG's quality as its luminance table says (jpeg_quality.estimate_quality), else None.
    jpeg_quality: int | None = None

    @property
    def width(self) -> int:
        return self.rgb.shape[1]

    @property
    def height(self) -> int:
        return self.rgb.shape[0]


def sniff_format(data: bytes) -> str:
    """The format's name, "PNG" or "JPEG", judged by magic bytes alone; others are refused."""
    if data.startswith(PNG_MAGIC):
        return "PNG"
    if data.startswith(_JPEG_MAGIC):
        return "JPEG"
    raise Refused("unsupported_media_type", _unsupported_message(data))


def _unsupported_message(data: bytes) -> str:
    for offset, magic, name in _KNOWN_UNSUPPORTED:
        if data[offset : offset + len(magic)] == magic:
            return f"{name} are not supported; {_SUPPORTED}."
    text = data[:1024].removeprefix(_UTF8_BOM).lstrip().lower()
    if text.startswith(b"<"):
        name = "SVG images" if b"<svg" in text else "XML and HTML documents"
        return f"{name} are not supported; {_SUPPORTED}."
    return f"The body is not a PNG or JPEG image; {_SUPPORTED}."


def decode(
    data: bytes, limits: Limits, admit: Callable[[int, bool], None] | None = None
) -> DecodedImage:
    """Validate and decode PNG or JPEG bytes into an upright float image.

    ``admit`` is called with the image's pixel count, and whether it is grey, once its
    header and checksums have passed, before any pixel is decoded; whatever it raises
    refuses the image there.

    Raises Refused for empty bodies, other formats, and images that are too large, too
    small, animated, too costly to parse or undecodable.
    """
    if not data:
        raise Refused("empty_body", f"The request body is empty; {_SUPPORTED}.")
    source_format = sniff_format(data)
    with _refuse_undecodable(source_format, limits):
        if source_format == "JPEG":
            _check_jpeg_structure(data)
        else:
            _check_png_structure(data)
        with _open(data, source_format) as header:
            _check_header(header, source_format, limits)
            # Pillow skips IDAT CRCs while decoding; verify() checks the CRC of every
            # chunk without decompressing anything. It is a no-op for JPEG.
            header.verify()
            if admit is not None:
                grey = header.mode in _GREY_MODES | _SIXTEEN_BIT_GREY_MODES
                admit(header.width * header.height, grey)
        # verify() leaves the image unusable, so decoding needs a fresh open.
        with _open(data, source_format) as image:
            return _decoded(image, source_format)


def _open(data: bytes, source_format: str) -> Image.Image:
    return Image.open(BytesIO(data), formats=[source_format])


def _check_jpeg_structure(data: bytes) -> None:
    """Refuse, from its markers alone, a JPEG that would cost far more to decode than its size.

    Walks the file as libjpeg does: from segment to segment by their lengths, and over a
    scan's entropy-coded data to the next marker, up to the end of the first picture (EOI;
    libjpeg reads no further, so the extra pictures of an MPO do not count).
    """
    scans = segments = padding = parsed = 0
    position = 2  # past SOI
    while True:
        # Pillow's Python parser reads everything before the first scan: there, look no
        # further for the next marker than the padding still allowed.
        end = len(data) if scans else position + MAX_JPEG_HEADER_PADDING - padding + 2
        marker = _JPEG_MARKER.search(data, position, end)
        if marker is None:
            if end < len(data):
                raise Refused(
                    "too_many_segments",
                    f"The JPEG has more than {MAX_JPEG_HEADER_PADDING:,} bytes of padding "
                    "between the markers of its header, which is all that is accepted.",
                )
            return  # truncated: the decoder says so
        if not scans:
            padding += marker.start() - position
        code = data[marker.start() + 1]
        if code not in _JPEG_SEGMENT_CODES:
            if scans:
                return  # EOI, or a marker at which libjpeg stops with an error
            # libjpeg refuses this header, but only after Pillow has stepped through the
            # rest of the file byte by byte.
            raise _corrupt("JPEG")
        if code in _UNSUPPORTED_FRAMES:
            raise Refused(
                "unsupported_media_type",
                f"The JPEG is {_UNSUPPORTED_FRAMES[code]} (SOF{code - 0xC0}); only "
                "Huffman-coded JPEGs (baseline, progressive, lossless) are decoded: save "
                "it as a standard JPEG or as PNG.",
            )
        segments += 1
        if segments > MAX_JPEG_SEGMENTS:
            raise Refused(
                "too_many_segments",
                f"The JPEG has more than {MAX_JPEG_SEGMENTS:,} marker segments, which is "
                "all that is accepted.",
            )
        if code == _SOS:
            scans += 1
            if scans > MAX_JPEG_SCANS:
                raise Refused(
                    "too_many_scans",
                    f"The JPEG is split into more than {MAX_JPEG_SCANS} scans, each decoded "
                    f"over the whole image; at most {MAX_JPEG_SCANS} are accepted "
                    "(progressive encoders write about 10).",
                )
        # libjpeg reads a length under 2 as 2: just the length field itself.
        length = int.from_bytes(data[marker.end() : marker.end() + 2], "big")
        if not scans and (
            code == _DQT or (code == _APP13 and data.startswith(_PHOTOSHOP, marker.end() + 2))
        ):
            parsed += length
            if parsed > MAX_JPEG_PARSED_SEGMENT_BYTES:
                raise Refused(
                    "too_much_metadata",
                    f"The JPEG has more than {MAX_JPEG_PARSED_SEGMENT_BYTES // 1024} KiB of "
                    "quantization tables and Photoshop resources before its image data, "
                    "which is all that is accepted.",
                )
        position = marker.end() + max(length, 2)


def _check_png_structure(data: bytes) -> None:
    """Refuse, from its chunk headers alone, a PNG too costly for Pillow to parse.

    Counts the chunks up to IEND, where Pillow stops reading, jumping over each by its
    declared length without reading its data.
    """
    chunks = compressed = 0
    position = len(PNG_MAGIC)
    while position + 8 <= len(data):
        length, chunk_type = struct.unpack_from(">I4s", data, position)
        chunks += 1
        if chunks > MAX_PNG_CHUNKS:
            raise Refused(
                "too_many_segments",
                f"The PNG has more than {MAX_PNG_CHUNKS:,} chunks, which is all that is accepted.",
            )
        if chunk_type in _PNG_COMPRESSED_CHUNKS:
            compressed += 1
            if compressed > MAX_PNG_COMPRESSED_CHUNKS:
                raise Refused(
                    "too_much_metadata",
                    f"The PNG has more than {MAX_PNG_COMPRESSED_CHUNKS} compressed text or "
                    "profile chunks (zTXt, iTXt, iCCP), which is all that is accepted.",
                )
        if chunk_type == b"IEND":
            return
        position += 12 + length


def _corrupt(source_format: str) -> Refused:
    return Refused(
        "corrupt_image",
        f"The {source_format} data is corrupt or truncated and cannot be decoded.",
    )


@contextmanager
def _refuse_undecodable(source_format: str, limits: Limits) -> Iterator[None]:
    """Turn whatever Pillow raises on hostile or broken input into a refusal.

    Pillow's failures span OSError, SyntaxError, ValueError, EOFError, struct.error,
    zlib.error and more, and differ between versions, so anything that is not ours
    counts as corrupt input, except Pillow's PNG text limits, which name themselves.
    MemoryError is the exception: within our pixel cap it means the server is short of
    memory, which is a server fault, not the client's.
    """
    try:
        yield
    except (Refused, MemoryError):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Raised by Image.open from the header, before we can read the size ourselves.
        raise Refused(
            "too_many_pixels",
            f"The image declares far more pixels than allowed; {limits.describe_cap()}.",
        ) from exc
    except ValueError as exc:
        # Pillow's PNG text limits raise a plain ValueError that names the setting.
        if "MAX_TEXT_" not in str(exc):
            raise _corrupt(source_format) from exc
        raise Refused(
            "too_much_metadata",
            f"The PNG's text is too large: at most "
            f"{PngImagePlugin.MAX_TEXT_CHUNK // 2**20} MiB per chunk once decompressed "
            f"(the ICC profile included) and {PngImagePlugin.MAX_TEXT_MEMORY // 2**20} MiB "
            "in all are accepted.",
        ) from exc
    except Exception as exc:
        raise _corrupt(source_format) from exc


def _check_header(image: Image.Image, source_format: str, limits: Limits) -> None:
    """Refuse on what the header declares, before any pixel is decoded.

    EXIF rotation only swaps width and height, so these checks hold for the upright
    image too.
    """
    _check_profile_size(image.info)
    width, height = image.size
    pixels = width * height
    if pixels > limits.pixel_cap:
        raise Refused(
            "too_many_pixels",
            f"The image is {width}x{height} ({pixels:,} pixels); {limits.describe_cap()}.",
        )
    if min(width, height) < limits.min_side:
        raise Refused(
            "too_small",
            f"The image is {width}x{height}; both sides must be at least {limits.min_side} pixels.",
        )
    # Only PNG: a multi-picture JPEG (MPO, as phones write) is one photo plus extras,
    # and Pillow gives us the primary picture as the first frame.
    if source_format == "PNG" and getattr(image, "is_animated", False):
        raise Refused("animated_image", "Animated PNGs are not supported; send a single frame.")


def _decoded(image: Image.Image, source_format: str) -> DecodedImage:
    # A PNG's EXIF and text may follow the image data, so they are known only once loaded.
    image.load()
    _check_exif_size(image.info)
    icc_profile = None if image.mode == "CMYK" else image.info.get("icc_profile") or None
    upright = _upright(image)
    if upright.mode in _SIXTEEN_BIT_GREY_MODES:
        rgb, alpha = _sixteen_bit_grey(upright)
        grayscale, sixteen_bit = True, True
    else:
        grayscale = upright.mode in _GREY_MODES
        rgb, alpha = _eight_bit(upright, grayscale=grayscale)
        sixteen_bit = False
    quality = _jpeg_quality(image) if source_format == "JPEG" else None
    return DecodedImage(rgb, alpha, grayscale, sixteen_bit, icc_profile, source_format, quality)


def _jpeg_quality(image: Image.Image) -> int | None:
    tables = getattr(image, "quantization", None) or {}
    luminance = tables[min(tables)] if tables else ()
    return estimate_quality(luminance) if len(luminance) == 64 else None


def _check_profile_size(info: Mapping[str, object]) -> None:
    """A JPEG's ICC profile (spread over APP2 segments) within the PNG input's bound.

    The profile is copied into the result, whose iCCP chunk Pillow (and this service)
    reads only up to MAX_TEXT_CHUNK decompressed: a larger one would make a result that
    cannot be opened, or sent back.
    """
    profile = info.get("icc_profile")
    limit = PngImagePlugin.MAX_TEXT_CHUNK
    if isinstance(profile, bytes) and len(profile) > limit:
        raise Refused(
            "too_much_metadata",
            f"The image's ICC profile is {len(profile):,} bytes; at most {limit:,} "
            f"({limit // 2**20} MiB, what a PNG result can carry) are accepted.",
        )


def _check_exif_size(info: Mapping[str, object]) -> None:
    exif = info.get("exif")
    # ImageMagick keeps a PNG's EXIF as hexadecimal text, which Pillow reads when there
    # is no eXIf chunk: two characters a byte.
    raw_profile = info.get("Raw profile type exif")
    size = len(exif) if isinstance(exif, bytes) else len(str(raw_profile or "")) // 2
    if size > MAX_EXIF_BYTES:
        raise Refused(
            "too_much_metadata",
            f"The image's EXIF is {size:,} bytes; at most {MAX_EXIF_BYTES:,} (what a JPEG "
            "can hold) are accepted.",
        )


def _upright(image: Image.Image) -> Image.Image:
    """The image turned as its EXIF (or XMP) orientation says it is meant to be shown.

    ImageOps.exif_transpose turns it the same way, but then rewrites the EXIF and XMP of
    the image it returns, or copies an image that needs no turning: work for metadata
    and pixels we would throw away.
    """
    method = _UPRIGHT.get(image.getexif().get(ExifTags.Base.Orientation))
    return image if method is None else image.transpose(method)


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
        raise Refused(
            "format_cannot_carry_alpha",
            f"The image has transparency, which {image_format} cannot carry; "
            f"ask for {' or '.join(f.name for f in OUTPUT_FORMATS.values() if f.alpha)}.",
        )
    width, height = image.width * scale, image.height * scale
    if max(width, height) > output_format.max_side:
        raise Refused(
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
    """Image bytes from a float HxWx3 image on the [0, 1] scale (or, for colour, one
    already rounded to uint8) and an optional float HxW alpha.

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
    if rgb.dtype == np.uint8 and grayscale:
        raise ValueError("grey output is made from float samples, not from uint8 ones")
    colour = rgb
    if grayscale:
        colour = rgb.mean(axis=2, keepdims=True)
        if not grey:
            colour = np.repeat(colour, 3, axis=2)
    if sixteen_bit and grey and alpha is None and output_format.sixteen_bit:
        samples = quantised(colour[..., 0], np.uint16)
    else:
        # A colour result may arrive already in 8 bits (tiling.TiledUpscaler's dtype).
        samples = colour if colour.dtype == np.uint8 else quantised(colour, np.uint8)
        if alpha is not None:
            samples = np.concatenate([samples, quantised(alpha[..., None], np.uint8)], axis=2)
        if samples.shape[2] == 1:
            samples = samples[..., 0]
    if not grey and _is_grey_profile(icc_profile):
        # A grey input's profile cannot describe the RGB samples WebP needs.
        icc_profile = None
    if output_format.name == "png":
        return encode_png(samples, icc_profile, threads=cpu_count())
    buffer = BytesIO()
    # Pillow infers L, LA, RGB, RGBA or I;16 from the array's shape and dtype.
    Image.fromarray(samples).save(
        buffer, output_format.pillow_name, icc_profile=icc_profile, **output_format.options
    )
    return buffer.getvalue()


def _is_grey_profile(icc_profile: bytes | None) -> bool:
    # Bytes 16-19 of an ICC profile's header name the colour space it describes.
    return icc_profile is not None and icc_profile[16:20] == b"GRAY"


