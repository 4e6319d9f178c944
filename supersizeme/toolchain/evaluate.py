"""Measure models the way the SR papers do, through the path users are served by.

    python -m supersizeme.toolchain.evaluate --model models/rdn-C3-D6-G32-G032-x2 --bicubic \\
        --sets ../shared/datasets/benchmark/set5 ../shared/datasets/benchmark/set14 \\
        --json evaluation.json

Each benchmark image is cropped to a multiple of the scale and bicubic-downscaled
(``degradation``); the low-resolution image is then sent, as PNG bytes, through
``pipeline.supersize`` exactly as the HTTP endpoint sends an upload, and the PNG that
comes back is scored with PSNR and SSIM on the shaved BT.601 Y channel
(``supersizeme.toolchain.quality``). The bicubic baseline goes through the same PNG-in, PNG-out
loop, so the two rows differ only in the upscaler.

Latency is the served time (decode, inference, encode) per megapixel of *input*,
summed over a set's images: total seconds / total input megapixels. The first image of
every set is run once untimed so that one-off graph and kernel set-up stays out of it.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np
from PIL import Image

from supersizeme.toolchain.degradation import bicubic_upscale, hr_lr_pair
from supersizeme.toolchain.quality import y_psnr_ssim

if TYPE_CHECKING:
    from supersizeme.service.pipeline import Upscale

# PNG bytes of a low-resolution image -> PNG bytes of its enlargement: the served contract.
UpscalePng = Callable[[bytes], bytes]

# Benchmark folders and how the papers spell them in their tables.
_SET_TITLES = {"set5": "Set5", "set14": "Set14", "bsd100": "BSD100", "urban100": "Urban100"}

BICUBIC = "bicubic"


@dataclass(frozen=True)
class BenchmarkPair:
    """One benchmark image: the HR reference (uint8 RGB) and the LR input we send."""

    name: str
    hr: np.ndarray
    lr: Image.Image


def load_pair(path: str | Path, scale: int) -> BenchmarkPair:
    """The protocol's HR/LR pair of one image file.

    A grey image stays grey on the way in: the served path then answers with grey, as
    it would for a user's grey upload. Its HR is still compared as RGB (R = G = B).
    """
    with Image.open(path) as image:
        grey = image.mode == "L"
        hr, lr = hr_lr_pair(image, scale)
    # R = G = B after hr_lr_pair's conversion, so any channel is the grey LR itself.
    lr_image = Image.fromarray(lr[..., 0] if grey else lr)
    return BenchmarkPair(Path(path).name, hr, lr_image)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def run_png(upscale: UpscalePng, lr: Image.Image) -> tuple[np.ndarray, float]:
    """The enlargement of ``lr`` as uint8 RGB, and the seconds ``upscale`` itself took."""
    data = png_bytes(lr)
    started = time.perf_counter()
    result = upscale(data)
    seconds = time.perf_counter() - started
    with Image.open(io.BytesIO(result)) as image:
        return np.asarray(image.convert("RGB")), seconds


def bicubic_png(scale: int) -> UpscalePng:
    """Pillow's bicubic enlargement, behind the same bytes-in, bytes-out contract."""

    def upscale(data: bytes) -> bytes:
        with Image.open(io.BytesIO(data)) as image:
            return png_bytes(bicubic_upscale(image, scale))

    return upscale


def served_png(upscaler: Upscale, scale: int) -> UpscalePng:
    """``pipeline.supersize`` with ``upscaler``, with size limits that admit any benchmark."""
    from supersizeme.service.images import Limits
    from supersizeme.service.pipeline import Output, supersize

    output = Output(scale)
    limits = Limits(max_pixels=1 << 40, min_side=1)

    def upscale(data: bytes) -> bytes:
        return supersize(data, upscaler, output, limits)[0]

    return upscale


def load_served(
    model_dir: str | Path,
    precision: str = "float32",
    tile: int = 512,
    threads: int | None = None,
    runtime: str = "openvino",
) -> tuple[UpscalePng, int]:
    """The served upscaler of a model folder as an ``UpscalePng``, and the model's scale."""
    from supersizeme.machine import cpu_count
    from supersizeme.service.upscaler import LoadSettings, open_upscaler

    upscaler = open_upscaler(
        model_dir, LoadSettings(runtime, precision, tile, threads or cpu_count())
    )
    return served_png(upscaler, upscaler.scale), upscaler.scale


def image_files(folder: str | Path) -> list[Path]:
    files = sorted(p for p in Path(folder).iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise ValueError(f"no images in {folder}")
    return files


def evaluate_folder(upscale_fn: UpscalePng, folder: str | Path, scale: int) -> dict[str, Any]:
    """Mean Y-PSNR and Y-SSIM of ``upscale_fn`` over the images of ``folder``.

    Returns ``{"psnr", "ssim", "images", "seconds", "megapixels", "seconds_per_megapixel"}``;
    the means are over images, as in the papers' tables, and the megapixels are input ones.
    """
    pairs = [load_pair(path, scale) for path in image_files(folder)]
    run_png(upscale_fn, pairs[0].lr)  # warm-up, untimed
    psnrs, ssims, seconds = [], [], 0.0
    for pair in pairs:
        sr, took = run_png(upscale_fn, pair.lr)
        seconds += took
        psnr, ssim = y_psnr_ssim(pair.hr, sr, border=scale)
        psnrs.append(psnr)
        ssims.append(ssim)
    megapixels = sum(pair.lr.width * pair.lr.height for pair in pairs) / 1e6
    return {
        "psnr": float(np.mean(psnrs)),
        "ssim": float(np.mean(ssims)),
        "images": len(pairs),
        "seconds": seconds,
        "megapixels": megapixels,
        "seconds_per_megapixel": seconds / megapixels,
    }


def set_name(folder: str | Path) -> str:
    return Path(folder).resolve().name


def evaluate_rows(
    rows: dict[str, UpscalePng],
    sets: Iterable[str | Path],
    scale: int,
    log: TextIO | None = sys.stderr,
) -> dict[str, dict[str, dict[str, Any]]]:
    """``{set_name: {row_name: evaluate_folder(...)}}`` for every row on every set."""
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for folder in sets:
        results[set_name(folder)] = per_set = {}
        for row, upscale in rows.items():
            per_set[row] = evaluate_folder(upscale, folder, scale)
            if log:
                print(f"{set_name(folder)} {row}: {format_cell(per_set[row])}", file=log)
    return results


def format_cell(entry: dict[str, Any]) -> str:
    return f"{entry['psnr']:.2f} / {entry['ssim']:.4f}"


def markdown_table(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    """One row per upscaler, a "PSNR / SSIM" column per set, and the latency over all sets.

    Latency weighs every set by its input megapixels (total seconds / total megapixels),
    so it is the rate a user sending images like these would see.
    """
    sets = list(results)
    rows = list(dict.fromkeys(row for per_set in results.values() for row in per_set))
    titles = [_SET_TITLES.get(name.lower(), name) for name in sets]
    lines = [
        "| model | " + " | ".join(f"{t} PSNR / SSIM" for t in titles) + " | s / input MP |",
        "| --- | " + " | ".join("---" for _ in sets) + " | --- |",
    ]
    for row in rows:
        entries = [results[name].get(row) for name in sets]
        cells = [format_cell(e) if e else "–" for e in entries]
        present = [e for e in entries if e and "seconds" in e]
        megapixels = sum(e["megapixels"] for e in present)
        latency = f"{sum(e['seconds'] for e in present) / megapixels:.3f}" if megapixels else "–"
        lines.append(f"| {row} | " + " | ".join(cells) + f" | {latency} |")
    return "\n".join(lines) + "\n"


def row_name(model_dir: str | Path, precision: str) -> str:
    name = Path(model_dir).resolve().name
    return name if precision == "float32" else f"{name} ({precision})"


def finite_or_none(results: dict) -> dict:
    """JSON has no infinity: an image identical to its reference would write ``Infinity``."""
    return {
        key: finite_or_none(value)
        if isinstance(value, dict)
        else (None if isinstance(value, float) and not math.isfinite(value) else value)
        for key, value in results.items()
    }


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", action="append", default=[], help="a model folder; repeatable")
    parser.add_argument("--sets", nargs="+", required=True, help="benchmark folders of HR images")
    parser.add_argument("--bicubic", action="store_true", help="add the bicubic baseline row")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--precision", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--tile", type=int, default=512, help="tile side in input pixels")
    parser.add_argument("--runtime", choices=("openvino", "tensorflow"), default="openvino")
    parser.add_argument("--threads", type=int, default=0, help="inference threads; 0: all cores")
    parser.add_argument("--scale", type=int, default=2, help="scale of a bicubic-only run")
    args = parser.parse_args(argv)
    if not args.model and not args.bicubic:
        parser.error("nothing to evaluate: give --model and/or --bicubic")

    rows: dict[str, UpscalePng] = {}
    scales = set()
    for model_dir in args.model:
        upscale, scale = load_served(
            model_dir, args.precision, args.tile, args.threads or None, args.runtime
        )
        rows[row_name(model_dir, args.precision)] = upscale
        scales.add(scale)
    if len(scales) > 1:
        parser.error(f"the models have different scales {sorted(scales)}; evaluate them apart")
    scale = scales.pop() if scales else args.scale
    if args.bicubic:
        rows = {BICUBIC: bicubic_png(scale), **rows}

    results = evaluate_rows(rows, args.sets, scale)
    print(markdown_table(results), end="")
    if args.json:
        Path(args.json).write_text(json.dumps(finite_or_none(results), indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
