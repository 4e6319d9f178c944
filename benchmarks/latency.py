"""Latency and peak memory of the served path per image size, and how well the warm-up's
speed estimate predicts it: the basis of the pixel cap.

    python -m benchmarks.latency --sizes 1024x768 4032x3024 --repeat 3 \\
        [--precision auto float32 bfloat16] [--out benchmarks/latency.md]

Each size runs in a fresh process (so that its peak RSS is its own) with the worker's
settings: the served runtime on every core, as gunicorn runs its one worker, precision
``auto`` unless told. Each row has the medians of decode, inference and encode, the
inference seconds per input megapixel, and the worker's warm-up estimate of it
(``seconds_per_megapixel`` in /supersizeme/model) with its error. Prints a Markdown table
with the machine named.
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.arguments import benchmark_parser
from supersizeme.machine import cpu_count, hardware
from supersizeme.service.config import REPO_ROOT
from supersizeme.service.runtime import RUNTIMES


def photo_like(width: int, height: int) -> bytes:
    """A PNG with edges and texture everywhere, so that no tile is an easy flat one."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width]
    base = 128 + 60 * np.sin(x / 7.0) * np.cos(y / 11.0)
    rgb = np.stack([base, base[::-1], base[:, ::-1]], axis=2) + rng.normal(0, 8, (height, width, 3))
    buffer = io.BytesIO()
    Image.fromarray(rgb.clip(0, 255).astype(np.uint8)).save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def measure_one(
    model: Path, size: str, repeat: int, precision: str, threads: int, tile: int, runtime: str
) -> dict:
    from supersizeme.service.images import Limits
    from supersizeme.service.pipeline import Output, supersize
    from supersizeme.service.upscaler import LoadSettings, open_upscaler

    width, height = (int(v) for v in size.split("x"))
    upscaler = open_upscaler(model, LoadSettings(runtime, precision, tile, threads))
    data = photo_like(width, height)
    limits = Limits(max_pixels=width * height, min_side=1)
    output = Output(upscaler.scale)
    runs = []
    for _ in range(repeat):
        started = time.perf_counter()
        _, timings = supersize(data, upscaler, output, limits)
        runs.append({"total": time.perf_counter() - started, **vars(timings)})
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    median = {stage: statistics.median(run[stage] for run in runs) for stage in runs[0]}
    megapixels = width * height / 1e6
    return {
        "size": size,
        "megapixels": megapixels,
        "runtime": upscaler.runtime,
        "precision": upscaler.precision,
        "median_s": median,
        "inference_s_per_mp": median["inference"] / megapixels,
        "estimate_s_per_mp": upscaler.seconds_per_megapixel,
        "peak_rss_mib": peak_mib,
    }


def table(rows: list[dict], heading: str) -> str:
    lines = [
        heading,
        "",
        "| input | MP | precision | total (s) | decode | inference | encode "
        "| inference s per MP | warm-up estimate | estimate error | peak RSS (MiB) |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        median, measured = row["median_s"], row["inference_s_per_mp"]
        lines.append(
            f"| {row['size']} | {row['megapixels']:.2f} | {row['precision']} "
            f"| {median['total']:.2f} | {median['decode']:.2f} | {median['inference']:.2f} "
            f"| {median['encode']:.2f} | {measured:.2f} | {row['estimate_s_per_mp']:.2f} "
            f"| {row['estimate_s_per_mp'] / measured - 1:+.0%} | {row['peak_rss_mib']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--sizes", nargs="+", default=["1024x768", "4032x3024"])
    parser.add_argument("--precision", nargs="+", default=["auto"])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--runtime", choices=RUNTIMES, default="openvino")
    parser.add_argument("--threads", type=int, default=cpu_count(), help="inference threads")
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--out", help="also write the Markdown table here")
    parser.add_argument("--json", help="also write the rows here as JSON")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        row = measure_one(
            args.model,
            args.sizes[0],
            args.repeat,
            args.precision[0],
            args.threads,
            args.tile,
            args.runtime,
        )
        print(json.dumps(row))
        return
    rows = []
    for precision in args.precision:
        for size in args.sizes:
            command = [
                sys.executable,
                "-m",
                "benchmarks.latency",
                "--child",
                "--model",
                str(args.model),
                "--sizes",
                size,
                "--precision",
                precision,
                "--repeat",
                str(args.repeat),
                "--threads",
                str(args.threads),
                "--tile",
                str(args.tile),
                "--runtime",
                args.runtime,
            ]
            output = subprocess.run(
                command, cwd=REPO_ROOT, capture_output=True, text=True, check=True
            ).stdout
            rows.append(json.loads(output.strip().splitlines()[-1]))
    heading = (
        f"Machine: {hardware()}; model {args.model.name}; {args.runtime}, {args.threads} "
        f"thread(s); tile {args.tile}; median of {args.repeat} runs of the whole served path "
        "(PNG in, PNG out) after the worker's warm-up; seconds per stage. The estimate error "
        "is the warm-up estimate against the measured inference seconds per input MP."
    )
    text = table(rows, heading)
    print(text, end="")
    if args.out:
        Path(args.out).write_text(text)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": hardware(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
