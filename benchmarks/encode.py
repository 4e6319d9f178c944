"""Encode time and size of large results: PNG writers and settings, and the other formats.

    python -m benchmarks.encode --megapixels 48 --runs 2 \\
        --images set14/img_001.png bsd100/img_001.png

48 MP is the x2 result of a 12 MP photo. Photos from the benchmark sets are enlarged bicubic
to that size, with fine noise added (a sensor's, about one level), since a bicubic
enlargement alone is smoother than any photograph or the network's result. Each candidate
encodes every image ``--runs`` times from the uint8 samples the service holds:

- Pillow's PNG writer (zlib on one thread) at levels 1, 3 and 6;
- the service's striped writer (supersizeme/service/png.py: Paeth-filtered stripes
  compressed on several threads) with ISA-L at levels 0-3, with the standard zlib and with
  zlib-ng, on one thread and on every core;
- lossless WebP and JPEG as the service writes them.

Reported per candidate: medians of wall seconds (what a client waits for; the machine should
be otherwise idle) and CPU seconds (what it costs the worker's cores), the file size, and the
size against Pillow's level 3. Prints a Markdown table with the machine named and writes it
to benchmarks/encode.md.
"""

from __future__ import annotations

import argparse
import functools
import io
import os
import statistics
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np
import zlib_ng.zlib_ng as zlib_ng
from isal import isal_zlib
from PIL import Image, features

from supersizeme.machine import cpu_count, hardware
from supersizeme.service import png
from supersizeme.service.images import OUTPUT_FORMATS

DATASETS = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets" / "benchmark"
OUT = Path(__file__).with_suffix(".md")
REFERENCE = "Pillow PNG, zlib level 3"
NOISE_LEVELS = 1.0

Write = Callable[[np.ndarray], bytes]


@dataclass(frozen=True)
class Candidate:
    label: str
    write: Write
    in_service: bool = False


def pillow(image_format: str, options: dict[str, object], samples: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(samples).save(buffer, image_format, **options)
    return buffer.getvalue()


def striped(threads: int, level: int, deflate: object, samples: np.ndarray) -> bytes:
    return png.encode_png(samples, threads=threads, level=level, deflate=deflate)


def candidates(cores: int) -> list[Candidate]:
    found = [
        Candidate(
            f"Pillow PNG, zlib level {level}",
            functools.partial(pillow, "PNG", {"compress_level": level}),
        )
        for level in (1, 3, 6)
    ]
    libraries = (
        ("ISA-L", isal_zlib, (0, 1, 2, 3)),
        ("zlib", zlib, (1, 3)),
        ("zlib-ng", zlib_ng, (1, 3)),
    )
    for name, deflate, levels in libraries:
        for level in levels:
            for threads in sorted({1, cores}):
                service = deflate is isal_zlib and level == png.LEVEL and threads == cores
                found.append(
                    Candidate(
                        f"striped PNG, {name} level {level}, {threads} thread(s)",
                        functools.partial(striped, threads, level, deflate),
                        service,
                    )
                )
    # libwebp's own lossless presets (cwebp -z 0, 1, 2: WebPConfigLosslessPreset) and
    # Pillow's default; WebP's encoder runs on one thread.
    webp = OUTPUT_FORMATS["webp"].options
    for label, quality, method in (
        ("-z 0", 0, 0),
        ("-z 1", 20, 1),
        ("-z 2", 25, 2),
        ("Pillow's default", 80, 4),
    ):
        options = {**webp, "quality": quality, "method": method}
        found.append(
            Candidate(
                f"WebP lossless, quality {quality} method {method} ({label})",
                functools.partial(pillow, "WEBP", options),
                in_service=options == webp,
            )
        )
    jpeg = OUTPUT_FORMATS["jpeg"].options
    found.append(
        Candidate(
            "JPEG quality 95, 4:4:4 (lossy)",
            functools.partial(pillow, "JPEG", jpeg),
            in_service=True,
        )
    )
    return found


@dataclass
class Measurement:
    wall_s: float
    cpu_s: float
    size_bytes: int


def photo_sized(path: Path, megapixels: float) -> np.ndarray:
    """The image enlarged bicubic, aspect kept, to about ``megapixels`` million pixels, with
    Gaussian noise of ``NOISE_LEVELS`` levels, as uint8 RGB."""
    image = Image.open(path).convert("RGB")
    factor = (megapixels * 1e6 / (image.width * image.height)) ** 0.5
    size = (round(image.width * factor), round(image.height * factor))
    pixels = np.asarray(image.resize(size, Image.Resampling.BICUBIC), np.float32)
    pixels += np.random.default_rng(0).normal(0, NOISE_LEVELS, pixels.shape).astype(np.float32)
    return np.rint(np.clip(pixels, 0, 255)).astype(np.uint8)


def measure(samples: np.ndarray, candidate: Candidate, runs: int) -> Measurement:
    wall, cpu = [], []
    for _ in range(runs):
        started_wall, started_cpu = time.perf_counter(), time.process_time()
        data = candidate.write(samples)
        cpu.append(time.process_time() - started_cpu)
        wall.append(time.perf_counter() - started_wall)
    return Measurement(statistics.median(wall), statistics.median(cpu), len(data))


def load_line() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f}, {five:.2f}, {fifteen:.2f}"


def table(rows: list[tuple[Candidate, list[Measurement]]], megapixels: float) -> list[str]:
    lines = [
        "| setting | wall s | CPU s | MB | MP/s (wall) | size vs " + REFERENCE + " |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    reference = next(
        statistics.mean(m.size_bytes for m in found)
        for candidate, found in rows
        if candidate.label == REFERENCE
    )
    for candidate, found in rows:
        wall = statistics.mean(m.wall_s for m in found)
        cpu = statistics.mean(m.cpu_s for m in found)
        size = statistics.mean(m.size_bytes for m in found)
        label = f"**{candidate.label}** (service)" if candidate.in_service else candidate.label
        lines.append(
            f"| {label} | {wall:.2f} | {cpu:.2f} | {size / 1e6:.1f} | {megapixels / wall:.1f} "
            f"| {size / reference:.2f} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", nargs="+", default=["set14/img_001.png", "bsd100/img_001.png"])
    parser.add_argument("--megapixels", type=float, default=48.0)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    load_before = load_line()
    images = [photo_sized(DATASETS / name, args.megapixels) for name in args.images]
    rows = []
    for candidate in candidates(cpu_count()):
        rows.append((candidate, [measure(image, candidate, args.runs) for image in images]))
        print(f"{candidate.label}: done", file=sys.stderr, flush=True)
    libraries = (
        f"Pillow {Image.__version__} (zlib {features.version('zlib')}, libwebp "
        f"{features.version('webp')}), isal {version('isal')}, zlib-ng {version('zlib-ng')}"
    )
    height, width = images[0].shape[:2]
    header = [
        "# Encode time and size of large results",
        "",
        f"Machine: {hardware()}; {libraries}. Produced by `python -m benchmarks.encode`.",
        f"Images: {', '.join(args.images)} from the benchmark sets, enlarged bicubic to "
        f"{args.megapixels:g} MP (the first {width} x {height}) with noise of "
        f"{NOISE_LEVELS:g} level; every figure is the mean over the images of the median of "
        f"{args.runs} runs, from uint8 samples. Load average (1, 5, 15 min) before: "
        f"{load_before}; after: {load_line()}.",
        "",
        "*Wall s* is what a client waits for on top of inference; *CPU s* what the encode "
        "costs the worker's cores (above wall seconds when it runs on several). "
        "(service) marks what the service writes.",
        "",
    ]
    text = "\n".join(header + table(rows, args.megapixels)) + "\n"
    print(text)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
