"""Fuzz the decode path for a bounded time and write the result to fuzz/LAST_RUN.md.

    .venv/bin/python -m fuzz.run --minutes 10

Seeds are the suite's kinds of test image (made with benchmarks/imagefactory.py) plus every
PNG or JPEG of the Pillow test-image corpus beside the clone, when it is there. The
corpus the fuzzer grows, its crash files and its raw log stay in fuzz/work/ (ignored by
git); the report names each finding's file and exception. libFuzzer stops at the first
finding: fix it, add it to tests/test_images.py as a regression test, and run again.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import subprocess
import sys
import zlib
from pathlib import Path

from PIL import Image

from benchmarks import imagefactory as factory
from supersizeme.machine import hardware

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

PILLOW_CORPUS = REPO.parent / "shared" / "corpus" / "pillow-test-images"
MAGIC = (factory.PNG_SIGNATURE, b"\xff\xd8\xff")


def niced() -> str:
    """How the run was really started: the niceness is part of the throughput it reports."""
    level = os.nice(0)
    return f"nice -n {level} " if level else ""


def made_seeds() -> dict[str, bytes]:
    """One small file of each kind decode treats differently."""
    rgb = Image.fromarray(factory.gradient(24, 16))
    rgba = Image.fromarray(factory.gradient(24, 16, 4))
    grey = Image.fromarray(factory.gradient(24, 16, 1))
    oriented = rgb.copy()
    exif = oriented.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees
    sixteen = Image.fromarray(factory.gradient(24, 16, 1).astype("uint16") * 257)
    return {
        "rgb.png": factory.png(rgb),
        "rgba.png": factory.png(rgba),
        "grey.png": factory.png(grey),
        "la.png": factory.png(rgba.convert("LA")),
        "palette-trns.png": factory.png(rgb.convert("P"), transparency=0),
        "bilevel.png": factory.png(grey.convert("1")),
        "grey16.png": factory.png(sixteen),
        "rgb48.png": factory.rgb48_png(factory.gradient(24, 16).astype("uint16") * 257),
        "icc.png": factory.png(rgb, icc_profile=factory.srgb_profile()),
        "animated.png": factory.apng(),
        "bomb.png": factory.header_bomb(100_000, 100_000),
        "rgb.jpg": factory.jpeg(rgb),
        "grey.jpg": factory.jpeg(grey),
        "progressive.jpg": factory.jpeg(rgb, progressive=True),
        "cmyk.jpg": factory.jpeg(rgb.convert("CMYK")),
        "exif-rotated.jpg": factory.jpeg(oriented, exif=exif),
        "icc.jpg": factory.jpeg(rgb, icc_profile=factory.srgb_profile()),
        # Near the structure limits of supersizeme/service/images.py, so that mutations cross them.
        "many-scans.jpg": factory.many_scan_jpeg(rgb, 85),
        "segments.jpg": factory.jpeg_with_segments(
            factory.jpeg(rgb, restart_marker_blocks=1),
            b"\xff" * 16,
            factory.jpeg_comment(b"\xff\xda\x00\x02"),
            factory.jpeg_segment(0xED, b"Photoshop 3.0\0" + b"8BIM\x04\x04\0\0\0\0\0\0"),
        ),
        "text.png": factory.png_with_chunks(
            factory.png(rgb),
            factory.png_chunk(b"tEXt", b"Comment\0plain"),
            factory.png_chunk(b"zTXt", b"Title\0\0" + zlib.compress(b"compressed")),
            factory.png_chunk(b"iTXt", b"XML:com.adobe.xmp\0\1\0\0\0" + zlib.compress(b"<x/>")),
            factory.png_chunk(b"eXIf", oriented.getexif().tobytes()),
        ),
    }


def write_seeds(folder: Path) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    seeds = made_seeds()
    for name, data in seeds.items():
        (folder / name).write_bytes(data)
    count = len(seeds)
    if PILLOW_CORPUS.is_dir():
        for path in sorted(PILLOW_CORPUS.iterdir()):
            data = path.read_bytes()
            if data.startswith(MAGIC):
                (folder / f"pillow-{path.name}").write_bytes(data)
                count += 1
    return count


def last(pattern: str, text: str) -> str | None:
    found = re.findall(pattern, text)
    return found[-1] if found else None


def findings(folder: Path, log: str) -> list[str]:
    exceptions = re.findall(
        r"=== Uncaught Python exception: ===\n(?:.*\n)*?(\w+(?:Error|Exception)?: .*)\n", log
    )
    files = sorted(p.name for p in folder.glob("*") if p.is_file())
    return [*(f"`{name}`" for name in files), *(f"exception: `{e}`" for e in exceptions)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--report", type=Path, default=HERE / "LAST_RUN.md")
    args = parser.parse_args()

    work = HERE / "work"
    seeds, corpus, crashes = work / "seeds", work / "corpus", work / "findings"
    for folder in (corpus, crashes):
        folder.mkdir(parents=True, exist_ok=True)
    seed_count = write_seeds(seeds)
    seconds = round(args.minutes * 60)
    command = [
        sys.executable,
        str(HERE / "fuzz_decode.py"),
        f"-max_total_time={seconds}",
        f"-dict={HERE / 'png_jpeg.dict'}",
        f"-artifact_prefix={crashes}/",
        # A decode at the 2 MP cap takes well under a second; a minute is a hang.
        "-timeout=60",
        "-rss_limit_mb=3072",
        "-print_final_stats=1",
        str(corpus),
        str(seeds),
    ]
    started = datetime.datetime.now(datetime.UTC)
    # atheris takes the target as a script path; the target imports supersizeme from the
    # repository root.
    environment = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True)
    log = result.stdout + result.stderr
    (work / "fuzz.log").write_text(log)
    elapsed = (datetime.datetime.now(datetime.UTC) - started).total_seconds()

    found = findings(crashes, log)
    if not found and "Done " not in log:
        found = ["the fuzzer did not run to the end: see fuzz/work/fuzz.log"]
    rows = [
        ("date (UTC)", started.strftime("%Y-%m-%d %H:%M")),
        ("machine", hardware()),
        ("command", f"`{niced()}.venv/bin/python -m fuzz.run --minutes {args.minutes:g}`"),
        ("duration", f"{elapsed:.0f} s (bound {seconds} s)"),
        ("seeds", f"{seed_count} (suite-style images + Pillow corpus PNG/JPEG files)"),
        ("executions", last(r"stat::number_of_executed_units: (\d+)", log) or "?"),
        ("executions per second", last(r"stat::average_exec_per_sec:\s+(\d+)", log) or "?"),
        (
            "coverage (edges / features)",
            "{} / {}".format(last(r"cov: (\d+)", log) or "?", last(r"ft: (\d+)", log) or "?"),
        ),
        ("corpus grown to", last(r"corp: (\d+/\S+)", log) or "?"),
        ("peak RSS (MB)", last(r"stat::peak_rss_mb:\s+(\d+)", log) or "?"),
        ("libFuzzer exit status", str(result.returncode)),
        ("findings", "; ".join(found) if found else "none"),
    ]
    lines = [
        "# Last fuzzing run of the decode path",
        "",
        "Target `fuzz/fuzz_decode.py`: `supersizeme.service.images.decode` with the default",
        "limits, then `check_encodable` and `encode` in every output format of what it decodes",
        "(up to 512 x 512); anything but `Refused` is a finding.",
        "",
        "| | |",
        "| --- | --- |",
        *(f"| {name} | {value} |" for name, value in rows),
        "",
    ]
    args.report.write_text("\n".join(lines))
    print("\n".join(lines))
    sys.exit(1 if found or result.returncode else 0)


if __name__ == "__main__":
    main()
