"""Whole camera photos through the service as a new user starts it: `make serve`, no settings.

    python -m benchmarks.photo --out benchmarks/photo.md --json benchmarks/photo.json

Starts ``--serve`` (``make serve``) with nothing set, so that the worker chooses its own
precision, layout and pixel cap, and reads them from /supersizeme/model. Then it posts a
4032 x 3024 camera-like JPEG (benchmarks/imagefactory.camera_jpeg, 4-5 MB) alone, ``--repeat``
times, and two at once. Every answer is recorded: status (or error code), the result's size,
the wall time, and the Server-Timing stages (decode, queue, inference, encode) with encode's
share of the wall time. Prints a Markdown report with the machine named; medians for the
photo alone.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from io import BytesIO
from pathlib import Path

from PIL import Image

from benchmarks.imagefactory import camera_jpeg
from benchmarks.memory import free_port, parse
from benchmarks.runtime import wait_ready
from supersizeme.machine import hardware
from supersizeme.service.config import REPO_ROOT

PHOTO = (4032, 3024)


def post(port: int, data: bytes) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/supersizeme/", data=data, headers={"Content-Type": "image/jpeg"}
    )
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            body, status = response.read(), response.status
            timing = parse(response.headers.get("Server-Timing") or "")
    except urllib.error.HTTPError as refusal:
        body, status, timing = refusal.read(), refusal.code, {}
    wall = time.perf_counter() - started
    answer = {
        "status": status,
        "wall_s": wall,
        "stages_s": {k: v / 1000 for k, v in timing.items()},
    }
    if status == 200:
        answer["size"] = list(Image.open(BytesIO(body)).size)
        answer["bytes"] = len(body)
    else:
        answer["error"] = json.loads(body).get("error")
    return answer


def measure(port: int, photo: bytes, repeat: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/supersizeme/model") as answer:
        info = json.loads(answer.read())
    alone = [post(port, photo) for _ in range(repeat)]
    with ThreadPoolExecutor(2) as pool:
        started = time.perf_counter()
        together = list(pool.map(lambda _: post(port, photo), range(2)))
        together_wall = time.perf_counter() - started
    return {
        "machine": hardware(),
        "date": time.strftime("%Y-%m-%d"),
        "photo_bytes": len(photo),
        "runtime": info["runtime"],
        "limits": info["limits"],
        "alone": alone,
        "together": together,
        "together_wall_s": together_wall,
    }


def row(label: str, answer: dict) -> str:
    stages = answer["stages_s"]
    if answer["status"] != 200:
        return f"| {label} | {answer['status']} `{answer['error']}` | {answer['wall_s']:.1f} |" + (
            " – |" * 6
        )
    return (
        f"| {label} | 200, {answer['size'][0]} × {answer['size'][1]}, "
        f"{answer['bytes'] / 1e6:.1f} MB | {answer['wall_s']:.1f} | {stages['decode']:.2f} "
        f"| {stages['queue']:.2f} | {stages['inference']:.1f} | {stages['encode']:.2f} "
        f"| {stages['encode'] / answer['wall_s']:.0%} "
        f"| {stages['inference'] / (PHOTO[0] * PHOTO[1] / 1e6):.2f} |"
    )


def report(results: dict) -> str:
    runtime, limits = results["runtime"], results["limits"]
    alone = [a for a in results["alone"] if a["status"] == 200]
    lines = [
        "# Whole photos through `make serve`",
        "",
        f"Machine: {results['machine']}; {results['date']}. The service as `make serve` "
        f"starts it with no settings: {runtime['name']} in {runtime['precision']} "
        f"({runtime['precision_reason']}), {runtime['threads']} threads, {runtime['streams']} "
        f"streams; warm-up estimate {runtime['seconds_per_megapixel']:.2f} s of inference per "
        f"input MP; pixel cap {limits['max_pixels']:,}, decided by "
        f"{limits['max_pixels_decided_by']}; {limits['memory_for_images_bytes'] / 2**20:,.0f} "
        f"MiB for images. The photo: a {PHOTO[0]} × {PHOTO[1]} camera-like JPEG of "
        f"{results['photo_bytes'] / 1e6:.2f} MB (benchmarks/imagefactory.camera_jpeg). "
        "Produced by `python -m benchmarks.photo`.",
        "",
        "| request | answer | wall s | decode | queue | inference | encode | encode share "
        "| inference s per input MP |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    lines += [row(f"alone, run {i + 1}", a) for i, a in enumerate(results["alone"])]
    lines += [row(f"two at once, {i + 1}", a) for i, a in enumerate(results["together"])]
    if alone:
        wall = statistics.median(a["wall_s"] for a in alone)
        encode = statistics.median(a["stages_s"]["encode"] for a in alone)
        inference = statistics.median(a["stages_s"]["inference"] for a in alone)
        per_mp = inference / (PHOTO[0] * PHOTO[1] / 1e6)
        lines += [
            "",
            f"Alone, medians: {wall:.1f} s wall, {inference:.1f} s inference ({per_mp:.2f} s "
            f"per input MP; the warm-up estimate {runtime['seconds_per_megapixel']:.2f} is "
            f"{runtime['seconds_per_megapixel'] / per_mp - 1:+.0%} off), {encode:.2f} s encode "
            f"({encode / wall:.0%} of the wall time). Two at once: all answered in "
            f"{results['together_wall_s']:.1f} s.",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--serve", default="make serve", help="how the service is started")
    parser.add_argument("--out", type=Path, help="also write the Markdown report here")
    parser.add_argument("--json", type=Path, help="also write the measurements here")
    args = parser.parse_args()
    port = free_port()
    environment = {name: value for name, value in os.environ.items() if not name.startswith("SSM_")}
    process = subprocess.Popen(
        args.serve.split(),
        cwd=REPO_ROOT,
        env={**environment, "PORT": str(port)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_ready(port, process)
        results = measure(port, camera_jpeg(*PHOTO), args.repeat)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=120)
    text = report(results)
    print(text, end="")
    if args.out:
        args.out.write_text(text)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
