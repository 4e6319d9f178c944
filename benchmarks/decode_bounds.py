"""What decoding the worst uploads costs: the most expensive files the limits still accept.

    nice -n 19 .venv/bin/python -m benchmarks.decode_bounds --runs 5

The pixel cap bounds the pixels; supersizeme/service/images.py also caps what the header does not
bound (JPEG scans, marker segments, header padding and parsed segments; PNG chunks,
compressed chunks and text; EXIF). Each file here sits at one of those limits with the
5 MB body and the 2 MP pixel cap, built to cost as much as it can; the refused files below
them are the decode-time traps the limits answer, with what Pillow alone spent on them.

Every file is decoded by ``supersizeme.service.images.decode`` (what a POST does before inference)
in a fresh process: the median wall time of ``--runs`` decodes, the peak resident memory
over them less the process's before the first (everything Pillow, libjpeg, zlib and numpy
hold), and the peak of Python's and numpy's allocations (tracemalloc, one more decode).
Prints a Markdown table with the machine named and writes it to benchmarks/decode-bounds.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import tracemalloc
import warnings
import zlib
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, PngImagePlugin, features

from benchmarks import imagefactory as factory
from supersizeme.machine import hardware
from supersizeme.service import images
from supersizeme.service.api import HTTP_STATUS
from supersizeme.service.config import REPO_ROOT
from supersizeme.service.errors import Refused
from supersizeme.service.images import Limits, decode

OUT = Path(__file__).with_name("decode-bounds.md")
BODY = 5 * 1024 * 1024
WIDTH, HEIGHT = 1632, 1224  # 1,997,568 pixels: the 2 MP cap's example size
MIB = 2**20


# --- files at the limits -------------------------------------------------------------------


def noise(mode: str = "RGB") -> Image.Image:
    """Random pixels: the most entropy-coded data a file of this size can have."""
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    samples = np.random.default_rng(1).integers(0, 256, (HEIGHT, WIDTH, channels), np.uint8)
    return Image.fromarray(samples.squeeze(), mode)


def flat(mode: str = "RGB") -> Image.Image:
    return Image.new(mode, (WIDTH, HEIGHT), 120)


def largest_jpeg(image: Image.Image, **options: object) -> bytes:
    """``image`` at the highest quality whose JPEG fits the body."""
    for quality in range(95, 5, -5):
        data = factory.jpeg(image, quality=quality, **options)
        if len(data) <= BODY:
            return data
    raise ValueError("no quality fits")


def scans(data: bytes) -> list[bytes]:
    return [s for s in factory.jpeg_segments(data) if s[1] == 0xDA]


def with_scan_copies(data: bytes, pick: Callable[[list[bytes]], bytes]) -> bytes:
    """``data`` with copies of one scan up to the scan cap, as many as the body holds."""
    segments = factory.jpeg_segments(data)
    scan = pick(scans(data))
    room = (BODY - len(data)) // len(scan)
    copies = min(images.MAX_JPEG_SCANS - len(scans(data)), room)
    at = segments.index(scan) + 1
    return b"".join([*segments[:at], *[scan] * copies, *segments[at:]])


def smallest(found: list[bytes]) -> bytes:
    return min(found, key=len)


def interleaved_dc(found: list[bytes]) -> bytes:
    # The first scan: the DC coefficients of every component, so every block of the image.
    return found[0]


def header_at_limits() -> bytes:
    """The most marker segments, of equal size to fill the body, after the most padding."""
    data = factory.jpeg(flat(), quality=90)
    own = len(factory.jpeg_segments(data)) - 2
    count = images.MAX_JPEG_SEGMENTS - own
    room = BODY - len(data) - images.MAX_JPEG_HEADER_PADDING
    comment = factory.jpeg_comment(bytes(room // count - 4))
    padding = b"\xff" * images.MAX_JPEG_HEADER_PADDING
    return factory.jpeg_with_segments(data, padding, *[comment] * count)


def parsed_segments_at_limits() -> bytes:
    """Quantization tables and empty Photoshop resources, up to their byte budget."""
    data = factory.jpeg(flat(), quality=90)
    half = images.MAX_JPEG_PARSED_SEGMENT_BYTES // 2 - 1024
    tables = b"\0" + bytes(range(1, 65))
    blocks = b"8BIM\x04\x04\0\0\0\0\0\0"
    segments = []
    for code, prefix, entry in ((0xDB, b"", tables), (0xED, b"Photoshop 3.0\0", blocks)):
        payload = prefix + entry * ((65_000 - len(prefix)) // len(entry))
        segments += [factory.jpeg_segment(code, payload)] * (half // (len(payload) + 2))
    return factory.jpeg_with_segments(data, *segments)


def exif_of_entries(count: int, orientation: int) -> bytes:
    """A big-endian TIFF directory: the orientation, then ``count - 1`` other entries."""
    entries = [struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0)]
    tags = [tag for tag in range(1, 2**16) if tag != 0x0112][: count - 1]
    entries += [struct.pack(">HHI4s", tag, 7, 4, b"abcd") for tag in tags]
    return b"MM\0*" + struct.pack(">IH", 8, count) + b"".join(entries) + bytes(4)


def jpeg_with_exif() -> bytes:
    count = (images.MAX_EXIF_BYTES - 6 - 14) // 12
    return factory.jpeg(flat(), quality=90, exif=b"Exif\0\0" + exif_of_entries(count, 6))


def jpeg_with_big_icc() -> bytes:
    """An ICC profile as large as the body allows (Pillow splits it into APP2 segments)."""
    profile = bytearray(factory.srgb_profile() + bytes(BODY - 120_000))
    profile[:4] = len(profile).to_bytes(4, "big")
    return factory.jpeg(flat(), quality=90, icc_profile=bytes(profile))


def noisy_rgba() -> Image.Image:
    """Noise in red, gradients elsewhere: as much pixel data as fits the body."""
    samples = factory.gradient(WIDTH, HEIGHT, 4)
    samples[..., 0] = np.asarray(noise("L"))
    return Image.fromarray(samples)


def png_of(image: Image.Image) -> bytes:
    return factory.png(image, compress_level=1)


def idat_cut(data: bytes, pieces: int) -> bytes:
    """``data`` with its image data cut into ``pieces`` IDAT chunks."""
    chunks, position = [], len(factory.PNG_SIGNATURE)
    while position < len(data):
        (length,) = struct.unpack_from(">I", data, position)
        chunks.append(data[position : position + 12 + length])
        position += 12 + length
    stream = b"".join(c[8:-4] for c in chunks if c[4:8] == b"IDAT")
    size = -(-len(stream) // pieces)
    idats = [factory.png_chunk(b"IDAT", stream[i : i + size]) for i in range(0, len(stream), size)]
    first = next(i for i, c in enumerate(chunks) if c[4:8] == b"IDAT")
    rest = [c for c in chunks[first:] if c[4:8] != b"IDAT"]
    return factory.PNG_SIGNATURE + b"".join([*chunks[:first], *idats, *rest])


def png_chunks_at_limit(after_image: bool) -> bytes:
    data = png_of(flat())
    count = images.MAX_PNG_CHUNKS - 4  # IHDR, IDAT, IEND and a spare
    chunk = factory.png_chunk(b"prIv", bytes((BODY - len(data)) // count - 12))
    return factory.png_with_chunks(data, *[chunk] * count, after_image=after_image)


def png_text_at_limits() -> bytes:
    """Every compressed chunk inflating to the per-chunk limit; as much of it kept as allowed.

    Keyword-less chunks are inflated but not kept, so only MAX_TEXT_MEMORY's worth carry one.
    """
    limit = images.PngImagePlugin.MAX_TEXT_CHUNK
    kept = images.PngImagePlugin.MAX_TEXT_MEMORY // limit
    text = zlib.compress(b"t" * limit, 9)
    chunks = [
        factory.png_chunk(b"zTXt", (b"k%d" % i if i < kept else b"") + b"\0\0" + text)
        for i in range(images.MAX_PNG_COMPRESSED_CHUNKS)
    ]
    return factory.png_with_chunks(png_of(flat()), *chunks)


def png_plain_text() -> bytes:
    """Uncompressed text: as much kept as allowed, the rest of the body without keywords."""
    data = png_of(flat())
    kept = images.PngImagePlugin.MAX_TEXT_MEMORY - 1024
    rest = BODY - len(data) - kept - 1024
    return factory.png_with_chunks(
        data,
        factory.png_chunk(b"tEXt", b"k\0" + b"t" * kept),
        *[factory.png_chunk(b"tEXt", b"\0" + b"t" * (2**16))] * (rest // (2**16 + 13)),
    )


def png_with_exif() -> bytes:
    count = (images.MAX_EXIF_BYTES - 6 - 14) // 12
    exif = factory.png_chunk(b"eXIf", exif_of_entries(count, 6))
    return factory.png_with_chunks(png_of(flat()), exif)


def accepted_files() -> dict[str, bytes]:
    # Quality 40 leaves room in the body for the copies of its DC scan below.
    progressive_noise = factory.jpeg(noise(), quality=40, subsampling=0, progressive=True)
    return {
        "JPEG baseline, noise, 4:4:4 (reference)": largest_jpeg(noise(), subsampling=0),
        "JPEG progressive, noise, 4:4:4 (reference)": progressive_noise,
        "JPEG, 100 scans: copies of its smallest": with_scan_copies(
            factory.jpeg(flat(), quality=90, subsampling=0, progressive=True), smallest
        ),
        "JPEG, 100 scans: copies of its all-component DC scan": with_scan_copies(
            factory.jpeg(flat(), quality=90, subsampling=0, progressive=True), interleaved_dc
        ),
        "JPEG CMYK, 100 scans: copies of its all-component DC scan": with_scan_copies(
            factory.jpeg(flat("RGB").convert("CMYK"), quality=90, progressive=True), interleaved_dc
        ),
        "JPEG, noise, 100 scans: copies of its DC scan to 5 MB": with_scan_copies(
            progressive_noise, interleaved_dc
        ),
        "JPEG, 1,000 segments filling 5 MB after 64 KiB of padding": header_at_limits(),
        "JPEG, 256 KiB of quantization tables and Photoshop resources": (
            parsed_segments_at_limits()
        ),
        "JPEG, 64 KB EXIF of 5,458 entries, turned 90°": jpeg_with_exif(),
        "JPEG, 5 MB ICC profile": jpeg_with_big_icc(),
        "PNG RGBA, gradient (reference)": png_of(
            Image.fromarray(factory.gradient(WIDTH, HEIGHT, 4))
        ),
        "PNG RGBA, noise in one channel (reference)": png_of(noisy_rgba()),
        "PNG 16-bit grey, gradient (reference)": png_of(
            Image.fromarray(factory.gradient(WIDTH, HEIGHT, 1).astype(np.uint16) * 257)
        ),
        "PNG, 10,000 chunks before the image data": png_chunks_at_limit(after_image=False),
        "PNG, 10,000 chunks after the image data": png_chunks_at_limit(after_image=True),
        "PNG, image data cut into 9,997 IDAT chunks": idat_cut(
            png_of(noise("L").resize((WIDTH, HEIGHT))), images.MAX_PNG_CHUNKS - 3
        ),
        "PNG, 16 zTXt of 1 MiB inflated, 4 MiB kept": png_text_at_limits(),
        "PNG, 4 MiB of tEXt kept, the body filled with more": png_plain_text(),
        "PNG, 64 KB eXIf of 5,458 entries, turned 90°": png_with_exif(),
    }


# --- the traps the limits refuse ------------------------------------------------------------


def short_array_exif(size: int) -> bytes:
    """A TIFF directory: the orientation, then as many 16-bit values as fit in one entry,
    which exif_transpose unpacks and writes back."""
    count = (size - 38) // 2
    orientation = struct.pack(">HHIHH", 0x0112, 3, 1, 6, 0)
    values = struct.pack(">HHII", 0x9999, 3, count, 38)
    directory = struct.pack(">IH", 8, 2) + orientation + values + bytes(4)
    return b"MM\0*" + directory + b"\x01\x2c" * count


def refused_files() -> dict[str, bytes]:
    small = factory.jpeg(flat(), quality=90)
    flat_png = png_of(flat())
    return {
        "JPEG, 20,000 scans of 12 bytes": factory.many_scan_jpeg(flat(), 20_000),
        "JPEG, 5 MB of empty comments": factory.jpeg_with_segments(
            small, *[factory.jpeg_comment(b"")] * ((BODY - len(small)) // 4)
        ),
        "JPEG, 5 MB of 0xFF fill in the header": factory.jpeg_with_segments(
            small, b"\xff" * (BODY - len(small))
        ),
        "JPEG, 5 MB of quantization tables": factory.jpeg_with_segments(
            small,
            *[factory.jpeg_segment(0xDB, (b"\0" + bytes(range(1, 65))) * 1008)]
            * ((BODY - len(small)) // 65_524),
        ),
        "PNG, 5 MB of empty chunks": factory.png_with_chunks(
            flat_png, *[factory.png_chunk(b"prIv", b"")] * ((BODY - len(flat_png)) // 12)
        ),
        "PNG, 1 MB of keyword-less zTXt, 1 MiB each": factory.png_with_chunks(
            png_of(flat()),
            *[factory.png_chunk(b"zTXt", b"\0\0" + zlib.compress(bytes(MIB), 9))] * (MIB // 1_050),
        ),
        "PNG, 786 KB eXIf of 65,535 entries": factory.png_with_chunks(
            flat_png, factory.png_chunk(b"eXIf", exif_of_entries(65_535, 6))
        ),
        "PNG, 5 MB eXIf of 16-bit values": factory.png_with_chunks(
            flat_png, factory.png_chunk(b"eXIf", short_array_exif(BODY - len(flat_png) - 12))
        ),
        "PNG, 63 zTXt of 1 MiB with keywords (75 KB)": factory.png_with_chunks(
            png_of(Image.new("RGB", (64, 48))),
            *[
                factory.png_chunk(b"zTXt", b"k%d\0\0" % i + zlib.compress(b" " * MIB, 9))
                for i in range(63)
            ],
        ),
    }


# --- measuring, one process per file -------------------------------------------------------


def memory_kib(field: str) -> int:
    """A field of /proc/self/status: VmRSS (resident now), VmHWM (its peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise KeyError(field)


def outcome(data: bytes, pillow_alone: bool) -> str:
    if pillow_alone:
        # What decode did before these limits: open, load, turn upright by the EXIF.
        try:
            with Image.open(BytesIO(data)) as image:
                image.load()
                upright = ImageOps.exif_transpose(image)
        except Exception as exc:
            return type(exc).__name__
        return f"{upright.width}x{upright.height}"
    try:
        image = decode(data, Limits())
    except Refused as exc:
        # As a client sees it: the status the API gives the code.
        return f"{HTTP_STATUS[exc.code]} {exc.code}"
    return f"{image.width}x{image.height}"


def measure(path: Path, runs: int, pillow_alone: bool) -> dict[str, object]:
    """Run in the child: decode ``path`` ``runs`` times, then once more under tracemalloc
    (not Pillow alone, whose traps take seconds a run)."""
    if pillow_alone:
        # Pillow's own defaults, which importing supersizeme.service.images changed.
        PngImagePlugin.MAX_TEXT_CHUNK = ImageFile.SAFEBLOCK
        PngImagePlugin.MAX_TEXT_MEMORY = 64 * ImageFile.SAFEBLOCK
        warnings.resetwarnings()
    data = path.read_bytes()
    outcome(factory.png(Image.new("RGB", (16, 16))), pillow_alone)  # load Pillow's plugins
    # Reset the peak to what is resident now (Linux's clear_refs 5): ru_maxrss would still
    # hold the parent's size at the fork.
    Path("/proc/self/clear_refs").write_text("5")
    before = memory_kib("VmRSS")
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        result = outcome(data, pillow_alone)
        seconds.append(time.perf_counter() - started)
    peak_rss = (memory_kib("VmHWM") - before) * 1024
    traced = 0
    if not pillow_alone:
        tracemalloc.start()
        outcome(data, pillow_alone)
        traced = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return {
        "outcome": result,
        "seconds": statistics.median(seconds),
        "rss_mib": max(peak_rss, 0) / MIB,
        "traced_mib": traced / MIB,
    }


def measured(data: bytes, runs: int, pillow_alone: bool = False) -> dict[str, object]:
    with tempfile.NamedTemporaryFile(suffix=".bin") as file:
        file.write(data)
        file.flush()
        command = [
            sys.executable,
            "-m",
            "benchmarks.decode_bounds",
            "--child",
            file.name,
            "--runs",
            str(runs),
        ]
        if pillow_alone:
            command.append("--pillow-alone")
        completed = subprocess.run(
            command, cwd=REPO_ROOT, capture_output=True, text=True, check=True
        )
    return json.loads(completed.stdout)


def row(name: str, data: bytes, result: dict[str, object]) -> str:
    return (
        f"| {name} | {len(data) / 1e6:.2f} | {result['outcome']} | {result['seconds']:.3f} "
        f"| {result['rss_mib']:.0f} | {result['traced_mib']:.0f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--pillow-alone", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.runs, args.pillow_alone)))
        return

    load_before = os.getloadavg()
    header = "| file | MB | outcome | median s | peak RSS MiB | traced MiB |"
    rule = "| --- | ---: | --- | ---: | ---: | ---: |"
    accepted = [header, rule]
    for name, data in accepted_files().items():
        assert len(data) <= BODY, (name, len(data))
        accepted.append(row(name, data, measured(data, args.runs)))
        print(accepted[-1], flush=True)
    refused = [
        "| file | MB | refused as | median s | Pillow alone: s | Pillow alone: peak RSS MiB |",
        "| --- | ---: | --- | ---: | ---: | ---: |",
    ]
    for name, data in refused_files().items():
        assert len(data) <= BODY, (name, len(data))
        ours = measured(data, args.runs)
        alone = measured(data, 1, pillow_alone=True)
        refused.append(
            f"| {name} | {len(data) / 1e6:.2f} | {ours['outcome']} | {ours['seconds']:.3f} "
            f"| {alone['seconds']:.2f} | {alone['rss_mib']:.0f} |"
        )
        print(refused[-1], flush=True)
    load_after = os.getloadavg()

    niceness = os.nice(0)
    lines = [
        "# Decoding the worst uploads the limits accept",
        "",
        f"Machine: {hardware()}; Pillow {Image.__version__}, libjpeg-turbo "
        f"{features.version('jpg')}, zlib {features.version('zlib')}"
        + (f"; run at nice {niceness}." if niceness else "."),
        f"Produced by `python -m benchmarks.decode_bounds --runs {args.runs}`: each file decoded "
        "by `supersizeme.service.images.decode` in a fresh process; *median s* over the runs, "
        "*peak RSS* "
        "the process's resident peak less its size before the first decode, *traced* the "
        "peak of Python's and numpy's allocations in one more decode.",
        "Load average (1, 5, 15 min) before: "
        + ", ".join(f"{x:.2f}" for x in load_before)
        + "; after: "
        + ", ".join(f"{x:.2f}" for x in load_after)
        + ". The machine is shared, so times are an upper bound of an idle one's.",
        "",
        f"Every file is at most 5 MB (the body limit) and, where it has pixels to spare, "
        f"{WIDTH} x {HEIGHT} ({WIDTH * HEIGHT:,} pixels, the 2 MP cap). Limits in force: "
        f"{images.MAX_JPEG_SCANS} JPEG scans, {images.MAX_JPEG_SEGMENTS:,} JPEG marker "
        f"segments, {images.MAX_JPEG_HEADER_PADDING // 1024} KiB of padding and "
        f"{images.MAX_JPEG_PARSED_SEGMENT_BYTES // 1024} KiB of quantization tables and "
        f"Photoshop resources in a JPEG header, {images.MAX_PNG_CHUNKS:,} PNG chunks of which "
        f"{images.MAX_PNG_COMPRESSED_CHUNKS} compressed (zTXt, iTXt, iCCP), PNG text "
        f"{images.PngImagePlugin.MAX_TEXT_CHUNK // MIB} MiB a chunk inflated and "
        f"{images.PngImagePlugin.MAX_TEXT_MEMORY // MIB} MiB kept, "
        f"{images.MAX_EXIF_BYTES:,} bytes of EXIF.",
        "",
        "## Accepted: the most each limit lets a file cost",
        "",
        *accepted,
        "",
        "## Refused: the traps, and what they cost before these limits",
        "",
        "*Pillow alone* is what `decode` did before: `Image.open`, `load` and "
        "`ImageOps.exif_transpose`, with Pillow's own text limits (1 MiB a chunk, 64 MiB in "
        "all) and warnings, one run in a fresh process.",
        "",
        *refused,
        "",
    ]
    OUT.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
