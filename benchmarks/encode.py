"""Encode time and size of the service's output formats at the settings worth considering.

    nice -n 19 python -m benchmarks.encode --runs 3 \\
        --images set14/img_001.png bsd100/img_001.png --megapixels 1 4 8

Every result is four times its input's pixels (sixteen at x4), so encoding it is not
free next to inference. Real photos from the benchmark sets are enlarged bicubic to
output-sized images (8 MP is the x2 output of an input at the 2 MP cap) and each
candidate setting encodes them ``--runs`` times. Reported per output size: medians of
CPU seconds (what the encode costs a worker on an idle machine; zlib and libwebp encode
on one thread here) and wall seconds (inflated when the machine is shared), the file
size, and the encode time plus the time to send the file over two typical links, since
a client waits for both. Prints a Markdown table with the machine named and writes it
to benchmarks/encode.md.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, features

from supersizeme.machine import cpu_count, hardware
from supersizeme.service.images import OUTPUT_FORMATS

DATASETS = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets" / "benchmark"
OUT = Path(__file__).with_suffix(".md")
LINKS_MBIT = (20, 100)

# Pillow's values for options a format entry may leave out, so that the table can mark
# the candidate the service uses now.
_PILLOW_DEFAULTS = {"webp": {"quality": 80, "method": 4}}

_LOSSLESS_WEBP = {"lossless": True, "exact": True}


@dataclass(frozen=True)
class Candidate:
    label: str
    format: str  # a key of OUTPUT_FORMATS
    options: dict[str, object]

    @property
    def in_service(self) -> bool:
        defaults = _PILLOW_DEFAULTS.get(self.format, {})
        service = {**defaults, **OUTPUT_FORMATS[self.format].options}
        return {**defaults, **self.options} == service


def _webp(quality: int, method: int, note: str = "") -> Candidate:
    label = f"WebP lossless q{quality} m{method}{note}"
    return Candidate(label, "webp", {**_LOSSLESS_WEBP, "quality": quality, "method": method})


PNG_REFERENCE = Candidate("PNG level 6", "png", {"compress_level": 6})

# zlib levels 1-9 for PNG (``optimize`` is left out: Pillow then ignores the level and
# tries harder than level 9, which is already far too slow).
# For lossless WebP the pairs are libwebp's own presets (cwebp -z 0..6, from
# WebPConfigLosslessPreset), Pillow's default (quality 80 method 4), and quality 50 at
# method 1: at method 1 a quality above 25 bought smaller files in a trial run.
CANDIDATES = (
    *(Candidate(f"PNG level {level}", "png", {"compress_level": level}) for level in (1, 3)),
    PNG_REFERENCE,
    Candidate("PNG level 9", "png", {"compress_level": 9}),
    _webp(0, 0, " (-z 0)"),
    _webp(20, 1, " (-z 1)"),
    _webp(50, 1),
    _webp(25, 2, " (-z 2)"),
    _webp(30, 3, " (-z 3)"),
    _webp(50, 3, " (-z 4)"),
    _webp(50, 4, " (-z 5)"),
    _webp(75, 4, " (-z 6)"),
    _webp(80, 4, " (Pillow default)"),
    Candidate("JPEG q95 4:4:4 (lossy, reference)", "jpeg", {"quality": 95, "subsampling": 0}),
)


@dataclass
class Measurement:
    cpu_s: float
    wall_s: float
    size_bytes: int


def enlarged(path: Path, megapixels: float) -> Image.Image:
    """The image enlarged bicubic, aspect kept, to about ``megapixels`` million pixels."""
    image = Image.open(path).convert("RGB")
    factor = (megapixels * 1e6 / (image.width * image.height)) ** 0.5
    size = (round(image.width * factor), round(image.height * factor))
    return image.resize(size, Image.Resampling.BICUBIC)


def measure(image: Image.Image, candidate: Candidate, runs: int) -> Measurement:
    pillow_name = OUTPUT_FORMATS[candidate.format].pillow_name
    cpu, wall = [], []
    for _ in range(runs):
        buffer = io.BytesIO()
        started_wall, started_cpu = time.perf_counter(), time.process_time()
        image.save(buffer, pillow_name, **candidate.options)
        cpu.append(time.process_time() - started_cpu)
        wall.append(time.perf_counter() - started_wall)
    return Measurement(statistics.median(cpu), statistics.median(wall), buffer.tell())


def load_line() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f}, {five:.2f}, {fifteen:.2f}"


def _megabytes(measurements: list[Measurement]) -> float:
    return statistics.mean(m.size_bytes for m in measurements) / 1e6


def table(rows: list[tuple[float, Candidate, list[Measurement]]]) -> list[str]:
    links = " | ".join(f"CPU s + send at {mbit} Mbit/s" for mbit in LINKS_MBIT)
    lines = [
        f"| output MP | setting | CPU s | wall s | MB | MP/s (CPU) | size vs PNG 6 | {links} |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: |" + " ---: |" * len(LINKS_MBIT),
    ]
    reference = {
        megapixels: _megabytes(measurements)
        for megapixels, candidate, measurements in rows
        if candidate == PNG_REFERENCE
    }
    for megapixels, candidate, measurements in rows:
        cpu = statistics.mean(m.cpu_s for m in measurements)
        wall = statistics.mean(m.wall_s for m in measurements)
        megabytes = _megabytes(measurements)
        ratio = megabytes / reference[megapixels]
        sends = " | ".join(f"{cpu + megabytes * 8 / mbit:.2f}" for mbit in LINKS_MBIT)
        label = f"**{candidate.label}** (service)" if candidate.in_service else candidate.label
        lines.append(
            f"| {megapixels:g} | {label} | {cpu:.2f} | {wall:.2f} | {megabytes:.2f} "
            f"| {megapixels / cpu:.1f} | {ratio:.2f} | {sends} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", nargs="+", default=["set14/img_001.png", "bsd100/img_001.png"])
    parser.add_argument("--megapixels", nargs="+", type=float, default=[1.0, 4.0, 8.0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    load_before = load_line()
    rows = []
    for megapixels in args.megapixels:
        images = [enlarged(DATASETS / name, megapixels) for name in args.images]
        for candidate in CANDIDATES:
            measurements = [measure(image, candidate, args.runs) for image in images]
            rows.append((megapixels, candidate, measurements))
            print(f"{megapixels:g} MP {candidate.label}: done", file=sys.stderr, flush=True)
    load_after = load_line()

    busy = max(float(load_before.split(",")[0]), float(load_after.split(",")[0])) > cpu_count()
    header = [
        "# Encode time and size of the output formats",
        "",
        f"Machine: {hardware()}; Pillow {Image.__version__}, libwebp {features.version('webp')},"
        f" zlib {features.version('zlib')}; run at nice {os.nice(0)}.",
        f"Images: {', '.join(args.images)} from the benchmark sets, enlarged bicubic to each"
        " output size; every figure is the mean over the images of the median of"
        f" {args.runs} runs. Produced by `python -m benchmarks.encode`.",
        f"Load average (1, 5, 15 min) before: {load_before}; after: {load_after}"
        + (
            " — measured while the machine was busy, so wall seconds may be inflated; CPU"
            " seconds are what an encode costs a worker."
            if busy
            else "."
        ),
        "",
        "*MP/s* is megapixels encoded per CPU second. *CPU s + send* adds the time to move the"
        " file over a link of that speed: what a client waits for on top of inference. Bicubic"
        " enlargements are smoother than the network's output, whose files are likely larger"
        " and slower to encode; at 1 MP, set14/img_001 is enlarged about x2, as a real x2"
        " result is.",
        "",
    ]
    text = "\n".join(header + table(rows)) + "\n"
    print(text)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
