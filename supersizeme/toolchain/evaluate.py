"""Measure models the way the SR papers do, through the path users are served by.

    python -m supersizeme.toolchain.evaluate --model models/rdn-C3-D6-G32-G032-x2 --bicubic \\
        --sets ../shared/datasets/benchmark/set5 ../shared/datasets/benchmark/set14 \\
        --json evaluation.json

Each benchmark image is cropped to a multiple of the scale and bicubic-downscaled
(``degradation``); the low-resolution image is then sent, as the bytes of an upload,
through ``pipeline.supersize`` exactly as the HTTP endpoint sends an upload, and the PNG
that comes back is scored with PSNR and SSIM on the shaved BT.601 Y channel
(``supersizeme.toolchain.quality``). The bicubic baseline goes through the same bytes-in,
PNG-out loop, so the two rows differ only in the upscaler.

The *input condition* chooses the upload's bytes: ``png`` (the default, and the papers'
protocol) sends the LR as PNG; ``jpeg<q>`` sends it as a baseline JPEG of quality q with
Pillow's default 4:2:0 chroma, as photos arrive. Under a JPEG condition the bicubic row
enlarges the same decoded JPEG, so its gain is what the model adds over what a browser
would show. ``--jpeg 90 75 50`` evaluates those conditions besides PNG (``--no-png``
skips PNG) and adds the bicubic row; it then also prints the gain table: one line per
condition, with the Y-PSNR of bicubic and of each row pooled over every image of every
given set (the mean over images, not of set means) and the row's gain over bicubic.

``--url http://127.0.0.1:8000/supersizeme/`` adds a row for a running service instead of a
local model folder: each upload is POSTed to it as a raw body (Content-Type image/png or
image/jpeg), so the row measures whichever model the service routes that upload to, with
its default settings; its timing is the round trip. The row is named after the URL, or
``--url-name``. The answer must be PNG at ``--scale`` (the service's default is x2).

Latency is the served time (decode, inference, encode) per megapixel of *input*,
summed over a set's images: total seconds / total input megapixels. The first image of
every set is run once untimed so that one-off graph and kernel set-up stays out of it.

``--json`` writes ``{set: {row: entry}}`` for the PNG condition, as the model cards record
it, and the JPEG conditions under the key ``"jpeg"`` (a name no set may then have):
``{"jpeg": {"90": {set: {row: entry}}}}``. An entry is ``evaluate_folder``'s.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import re
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np
from PIL import Image

from supersizeme.toolchain.degradation import bicubic_upscale, hr_lr_pair, jpeg_bytes
from supersizeme.toolchain.quality import y_psnr_ssim

if TYPE_CHECKING:
    from supersizeme.service.pipeline import Upscale

# The bytes of an upload (PNG or JPEG) of a low-resolution image -> PNG bytes of its
# enlargement: the served contract.
UpscalePng = Callable[[bytes], bytes]

# {set_name: {row_name: evaluate_folder's entry}}: one input condition's results.
Results = dict[str, dict[str, dict[str, Any]]]

# Benchmark folders and how the papers spell them in their tables.
_SET_TITLES = {"set5": "Set5", "set14": "Set14", "bsd100": "BSD100", "urban100": "Urban100"}

BICUBIC = "bicubic"

# Input conditions: the LR sent as PNG, or as a JPEG of a quality, "jpeg90" (4:2:0).
PNG = "png"
_JPEG_CONDITION = re.compile(r"jpeg(\d{1,3})")
JPEG_SUBSAMPLING = "4:2:0"  # Pillow's default, and what most cameras and the web write

# The JSON key of the JPEG conditions' results, beside the PNG condition's set names.
JPEG_KEY = "jpeg"

# How long a --url row waits for one answer: the largest benchmark image on a slow CPU.
HTTP_TIMEOUT_SECONDS = 600.0

_MEDIA_TYPES = {b"\x89PNG\r\n\x1a\n": "image/png", b"\xff\xd8\xff": "image/jpeg"}


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


def jpeg_condition(quality: int) -> str:
    """The condition name of an LR sent as a JPEG of ``quality``: ``jpeg_condition(90)`` is
    ``"jpeg90"``."""
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality {quality}: need 1 <= quality <= 100")
    return f"jpeg{quality}"


def condition_quality(condition: str) -> int | None:
    """The JPEG quality of ``condition``, None for ``png``; any other name is refused here,
    so that a typo cannot quietly fall back to PNG."""
    if condition == PNG:
        return None
    match = _JPEG_CONDITION.fullmatch(condition)
    if match is None or not 1 <= int(match[1]) <= 100:
        raise ValueError(f"unknown input condition {condition!r}: png or jpeg1 ... jpeg100")
    return int(match[1])


def condition_title(condition: str) -> str:
    """How a table names the condition: ``PNG``, ``JPEG q90``."""
    quality = condition_quality(condition)
    return "PNG" if quality is None else f"JPEG q{quality}"


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def upload_bytes(lr: Image.Image, condition: str = PNG) -> bytes:
    """The bytes a user would upload of ``lr`` under ``condition``: lossless PNG, or a
    baseline JPEG of the condition's quality in 4:2:0 (``degradation.jpeg_bytes``, which
    the photo model's training uses too)."""
    quality = condition_quality(condition)
    return png_bytes(lr) if quality is None else jpeg_bytes(lr, quality, JPEG_SUBSAMPLING)


def media_type(data: bytes) -> str:
    """The Content-Type of an upload, by its magic bytes, as the service judges it."""
    for magic, name in _MEDIA_TYPES.items():
        if data.startswith(magic):
            return name
    raise ValueError("the upload is neither PNG nor JPEG")


def run_upload(
    upscale: UpscalePng, lr: Image.Image, condition: str = PNG
) -> tuple[np.ndarray, float]:
    """The enlargement of ``lr`` sent under ``condition`` as uint8 RGB, and the seconds
    ``upscale`` itself took (the encoding of the upload is the user's, not timed)."""
    data = upload_bytes(lr, condition)
    started = time.perf_counter()
    result = upscale(data)
    seconds = time.perf_counter() - started
    with Image.open(io.BytesIO(result)) as image:
        return np.asarray(image.convert("RGB")), seconds


def run_png(upscale: UpscalePng, lr: Image.Image) -> tuple[np.ndarray, float]:
    """``run_upload`` of the PNG condition, the papers' protocol."""
    return run_upload(upscale, lr, PNG)


def bicubic_png(scale: int) -> UpscalePng:
    """Pillow's bicubic enlargement, behind the same bytes-in, bytes-out contract.

    It enlarges whatever the upload decodes to: under a JPEG condition that is the JPEG's
    pixels, so the baseline carries the same artefacts the model is given.
    """

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


class ServiceError(RuntimeError):
    """A --url service answered other than 200 with a PNG: the measurement cannot go on.

    ``status`` is the HTTP status and ``code`` the JSON body's ``error`` (None when the
    body is not the service's JSON error).
    """

    def __init__(self, url: str, status: int, code: str | None, message: str) -> None:
        super().__init__(f"{url} answered {status} {code or '(no error code)'}: {message}")
        self.status = status
        self.code = code


def service_error(url: str, status: int, body: bytes) -> ServiceError:
    """The ``ServiceError`` of an answer, with the error code and message of a JSON body."""
    try:
        error = json.loads(body)
    except ValueError:
        error = None
    if not isinstance(error, dict):
        return ServiceError(url, status, None, body[:200].decode("utf-8", "replace"))
    return ServiceError(url, status, error.get("error"), str(error.get("message", "")))


def http_png(url: str, timeout: float = HTTP_TIMEOUT_SECONDS) -> UpscalePng:
    """The service at ``url`` behind the bytes-in, PNG-out contract, as a user calls it.

    Each upload is POSTed as a raw body with its own Content-Type and no query beyond the
    URL's, so the service routes it, and picks every setting, as it would a user's.
    """

    def upscale(data: bytes) -> bytes:
        request = urllib.request.Request(
            url, data=data, method="POST", headers={"Content-Type": media_type(data)}
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                status, body = response.status, response.read()
        except urllib.error.HTTPError as error:
            raise service_error(url, error.code, error.read()) from None
        if status != 200:
            raise service_error(url, status, body)
        if not body.startswith(b"\x89PNG\r\n\x1a\n"):
            raise ServiceError(url, status, None, "the answer is not a PNG")
        return body

    return upscale


def image_files(folder: str | Path) -> list[Path]:
    files = sorted(p for p in Path(folder).iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise ValueError(f"no images in {folder}")
    return files


def evaluate_folder(
    upscale_fn: UpscalePng, folder: str | Path, scale: int, condition: str = PNG
) -> dict[str, Any]:
    """Mean Y-PSNR and Y-SSIM of ``upscale_fn`` over the images of ``folder``, each LR
    uploaded under ``condition``.

    Returns ``{"psnr", "ssim", "images", "seconds", "megapixels", "seconds_per_megapixel"}``;
    the means are over images, as in the papers' tables, and the megapixels are input ones.
    """
    pairs = [load_pair(path, scale) for path in image_files(folder)]
    run_upload(upscale_fn, pairs[0].lr, condition)  # warm-up, untimed
    psnrs, ssims, seconds = [], [], 0.0
    for pair in pairs:
        sr, took = run_upload(upscale_fn, pair.lr, condition)
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
    condition: str = PNG,
) -> Results:
    """``{set_name: {row_name: evaluate_folder(...)}}`` for every row on every set."""
    condition_quality(condition)  # an unknown condition fails before any work
    suffix = "" if condition == PNG else f" [{condition_title(condition)}]"
    results: Results = {}
    for folder in sets:
        results[set_name(folder)] = per_set = {}
        for row, upscale in rows.items():
            per_set[row] = evaluate_folder(upscale, folder, scale, condition)
            if log:
                print(f"{set_name(folder)} {row}{suffix}: {format_cell(per_set[row])}", file=log)
    return results


def format_cell(entry: dict[str, Any]) -> str:
    return f"{entry['psnr']:.2f} / {entry['ssim']:.4f}"


def row_names(*results: Results) -> list[str]:
    """The rows of ``results``, in the order they were first evaluated."""
    return list(
        dict.fromkeys(row for each in results for per_set in each.values() for row in per_set)
    )


def markdown_table(results: Results) -> str:
    """One row per upscaler, a "PSNR / SSIM" column per set, and the latency over all sets.

    Latency weighs every set by its input megapixels (total seconds / total megapixels),
    so it is the rate a user sending images like these would see.
    """
    sets = list(results)
    rows = row_names(results)
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


def pooled_psnr(results: Results, row: str) -> float:
    """The mean Y-PSNR of ``row`` over every image of every set in ``results``.

    Each set's mean weighted by its image count is exactly the mean over all images, so
    a set of 100 images counts 100 times, not once as a mean of set means would count it:
    the acceptance measure pools images, not sets.
    """
    missing = [name for name, per_set in results.items() if row not in per_set]
    if missing:
        raise ValueError(f"{row} was not evaluated on {', '.join(missing)}: cannot pool it")
    entries = [per_set[row] for per_set in results.values()]
    images = sum(entry["images"] for entry in entries)
    return sum(entry["psnr"] * entry["images"] for entry in entries) / images


def pooled_gains(results: Results, baseline: str = BICUBIC) -> dict[str, dict[str, float]]:
    """``{row: {"psnr", "bicubic", "gain"}}`` pooled over all images, for every row but
    ``baseline``: the gain (row − baseline, in dB) is the acceptance measure, since the
    absolute PSNR of a compressed input says more about the JPEG than about the model."""
    reference = pooled_psnr(results, baseline)
    gains = {}
    for row in row_names(results):
        if row != baseline:
            psnr = pooled_psnr(results, row)
            gains[row] = {"psnr": psnr, "bicubic": reference, "gain": psnr - reference}
    return gains


def gain_table(by_condition: dict[str, Results], baseline: str = BICUBIC) -> str:
    """One line per input condition: the baseline's pooled Y-PSNR, and each row's pooled
    Y-PSNR and its gain over the baseline. The first cell says what was pooled."""
    first = next(iter(by_condition.values()))
    rows = [row for row in row_names(*by_condition.values()) if row != baseline]
    images = sum(per_set[baseline]["images"] for per_set in first.values())
    titles = ", ".join(_SET_TITLES.get(name.lower(), name) for name in first)
    header = [f"input ({images} images: {titles})", f"{baseline} PSNR"]
    for row in rows:
        header += [f"{row} PSNR", f"{row} gain"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for condition, results in by_condition.items():
        gains = pooled_gains(results, baseline)
        cells = [condition_title(condition), f"{pooled_psnr(results, baseline):.2f}"]
        for row in rows:
            cells += (
                [f"{gains[row]['psnr']:.2f}", f"{gains[row]['gain']:+.2f}"]
                if row in gains
                else ["–", "–"]
            )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def results_document(by_condition: dict[str, Results]) -> dict[str, Any]:
    """The JSON document of all conditions: the PNG condition's ``{set: {row: entry}}`` at
    the top, as the model cards and earlier files have it, and the JPEG conditions under
    ``"jpeg"``, by quality: ``{"jpeg": {"90": {set: {row: entry}}}}``."""
    document: dict[str, Any] = dict(by_condition.get(PNG, {}))
    jpeg = {}
    for condition, results in by_condition.items():
        quality = condition_quality(condition)
        if quality is not None:
            jpeg[str(quality)] = results
    if jpeg:
        if JPEG_KEY in document:
            raise ValueError(f"a set named {JPEG_KEY!r} would clash with the JPEG results")
        document[JPEG_KEY] = jpeg
    return document


def document_conditions(document: dict[str, Any]) -> dict[str, Results]:
    """``results_document``'s inverse: ``{condition: results}``, for a reader of the JSON
    (a file without ``"jpeg"`` is the PNG condition alone, as before the JPEG conditions)."""
    png = {name: rows for name, rows in document.items() if name != JPEG_KEY}
    by_condition = {PNG: png} if png else {}
    for quality, results in document.get(JPEG_KEY, {}).items():
        by_condition[jpeg_condition(int(quality))] = results
    return by_condition


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


def jpeg_quality(text: str) -> int:
    """argparse's reading of one --jpeg quality."""
    try:
        quality = int(text)
        jpeg_condition(quality)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: a JPEG quality is 1 ... 100") from None
    return quality


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", action="append", default=[], help="a model folder; repeatable")
    parser.add_argument("--sets", nargs="+", required=True, help="benchmark folders of HR images")
    parser.add_argument("--bicubic", action="store_true", help="add the bicubic baseline row")
    parser.add_argument("--url", help="add a row for the service at this URL (POST endpoint)")
    parser.add_argument("--url-name", help="the --url row's name; by default the URL")
    parser.add_argument(
        "--jpeg",
        nargs="+",
        type=jpeg_quality,
        default=[],
        metavar="Q",
        help="also send the LR as JPEG of these qualities (4:2:0); adds --bicubic and the "
        "gain table",
    )
    parser.add_argument("--no-png", action="store_true", help="with --jpeg: skip the PNG condition")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--precision", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--tile", type=int, default=512, help="tile side in input pixels")
    parser.add_argument("--runtime", choices=("openvino", "tensorflow"), default="openvino")
    parser.add_argument("--threads", type=int, default=0, help="inference threads; 0: all cores")
    parser.add_argument("--scale", type=int, default=2, help="scale of a run without --model")
    args = parser.parse_args(argv)
    if not (args.model or args.bicubic or args.url or args.jpeg):
        parser.error("nothing to evaluate: give --model, --url, --bicubic and/or --jpeg")
    if args.no_png and not args.jpeg:
        parser.error("--no-png leaves nothing to evaluate without --jpeg")
    if args.url_name and not args.url:
        parser.error("--url-name names the --url row: give --url")
    if args.jpeg and any(set_name(folder) == JPEG_KEY for folder in args.sets):
        parser.error(f"a set named {JPEG_KEY!r} would clash with the JPEG results' key")
    conditions = ([] if args.no_png else [PNG]) + [
        jpeg_condition(q) for q in dict.fromkeys(args.jpeg)
    ]

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
    if args.url:
        rows[args.url_name or args.url] = http_png(args.url)
    if args.bicubic or args.jpeg:
        rows = {BICUBIC: bicubic_png(scale), **rows}

    by_condition = {
        condition: evaluate_rows(rows, args.sets, scale, condition=condition)
        for condition in conditions
    }
    tables = [markdown_table(by_condition[PNG])] if PNG in by_condition else []
    if args.jpeg:
        tables.append(gain_table(by_condition))
    print("\n".join(tables), end="")
    document = results_document(by_condition)
    if args.json:
        Path(args.json).write_text(json.dumps(finite_or_none(document), indent=2) + "\n")
    return document


if __name__ == "__main__":
    main()
