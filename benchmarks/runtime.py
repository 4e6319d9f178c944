"""How fast each runtime runs the shipped model on this machine, against the cores' peak.

    .venv/bin/python -m benchmarks.runtime \\
        --out benchmarks/runtime.md --json benchmarks/runtime.json

One run on one machine, so that the ratios hold wherever the absolute times do not:

1. the machine: CPU model, usable cores, the ISA flags that matter, the host's kind;
2. the peak of each precision, 2048 x 2048 matmul GFLOP/s at one thread and at all threads:
   float32 in numpy, bfloat16 in OpenVINO (numpy has none), and float32 in OpenVINO beside
   it, so that the two libraries can be compared;
3. every runtime and precision available here (TensorFlow's graph, the same graph under
   XLA, OpenVINO; bfloat16 only on CPUs with native bfloat16), at one thread and at all:
   seconds per input megapixel on a 564 x 564 tile (a 512 tile with its overlap), the share
   of its own precision's peak, and the Y-PSNR on Set5 through the served path; Pillow's
   bicubic for scale;
4. the service over HTTP, started by ``make serve``: a 512 x 512 PNG alone and four at
   once, against the shipped weights in a one-thread TensorFlow graph on the same image
   (the reference); a 1 MP JPEG alone and four at once.

Every network row runs in a fresh process, since TensorFlow fixes its thread pools once per
process. Times are medians of ``--repeat`` runs.

``--out`` and ``--json`` keep one section per kind of host (AVX2, AVX-512 BF16, AMX): a run
replaces its own kind's section and leaves the others', each headed by the machine it ran on.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from supersizeme.machine import (
    cpu_count,
    cpu_flags,
    cpu_model,
    hardware,
    host_kind,
    native_bfloat16,
    reported_flags,
)
from supersizeme.service.config import DEFAULT_MODEL, REPO_ROOT

MODEL = REPO_ROOT / "models" / DEFAULT_MODEL
SET5 = REPO_ROOT.parent / "shared" / "datasets" / "benchmark" / "set5"
TILE_SIDE = 564  # a 512 tile plus the shipped model's overlap of 26 on each side
MATMUL_SIDE = 2048
# (name in the table, runtime, XLA, one stream per thread at all threads)
RUNTIMES = (
    ("tensorflow graph (reference)", "tensorflow", False, False),
    ("tensorflow graph + XLA", "tensorflow", True, False),
    ("openvino, one stream on all threads", "openvino", False, False),
    ("openvino, one stream per thread (served)", "openvino", False, True),
)


def median_seconds(run: Any, repeat: int) -> float:
    run()  # warm-up: kernels for this size are prepared on the first call
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def photo_like(width: int, height: int) -> np.ndarray:
    """uint8 RGB with edges and texture everywhere, so that no tile is an easy flat one."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width]
    base = 128 + 60 * np.sin(x / 7.0) * np.cos(y / 11.0)
    rgb = np.stack([base, base[::-1], base[:, ::-1]], axis=2) + rng.normal(0, 8, (height, width, 3))
    return rgb.clip(0, 255).astype(np.uint8)


def encoded(pixels: np.ndarray, image_format: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(
        buffer, image_format, **({"quality": 92} if image_format == "JPEG" else {})
    )
    return buffer.getvalue()


# Child measurements: each runs in its own process and prints one JSON line.


def child_peak(threads: int) -> dict:
    import threadpoolctl

    a = np.random.default_rng(0).random((MATMUL_SIDE, MATMUL_SIDE), np.float32)
    seconds = median_seconds(lambda: a @ a, 5)
    kernels = [info.get("architecture") for info in threadpoolctl.threadpool_info()]
    return {"gflops": 2 * MATMUL_SIDE**3 / seconds / 1e9, "kernel": ", ".join(map(str, kernels))}


def child_openvino_peak(precision: str, threads: int) -> dict:
    """OpenVINO's matmul of two 2048 x 2048 matrices in ``precision``, compiled as the
    served network is (one stream on ``threads`` threads, not pinned)."""
    import openvino
    import openvino.opset13 as ops

    from supersizeme.service.runtime import OPENVINO_PRECISION

    a = np.random.default_rng(0).random((MATMUL_SIDE, MATMUL_SIDE), np.float32)
    x = ops.parameter([MATMUL_SIDE, MATMUL_SIDE], openvino.Type.f32)
    model = openvino.Model([ops.matmul(x, ops.constant(a), False, False)], [x])
    compiled = openvino.Core().compile_model(
        model,
        "CPU",
        {
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": 1,
            "INFERENCE_NUM_THREADS": threads,
            "ENABLE_CPU_PINNING": False,
            "INFERENCE_PRECISION_HINT": OPENVINO_PRECISION[precision],
        },
    )
    request = compiled.create_infer_request()
    seconds = median_seconds(lambda: request.infer({0: a}), 5)
    computed = compiled.get_property("INFERENCE_PRECISION_HINT")
    return {
        "gflops": 2 * MATMUL_SIDE**3 / seconds / 1e9,
        "precision": "bfloat16" if computed == openvino.Type.bf16 else "float32",
    }


def measured_precisions(flags: frozenset[str]) -> list[str]:
    """bfloat16 rows only where the CPU computes it natively: elsewhere it is emulated
    (OpenVINO quietly runs float32), and its rows would measure nothing new."""
    return ["float32", "bfloat16"] if native_bfloat16(flags) else ["float32"]


def child_network(
    runtime: str, xla: bool, precision: str, threads: int, streams: int, repeat: int, psnr: bool
) -> dict:
    """Seconds per input megapixel with ``streams`` tiles at once (throughput), and the
    Set5 Y-PSNR through the served path with each image's tiles spread over the streams."""
    from supersizeme.modelspec import ModelFolder
    from supersizeme.service.runtime import load_network
    from supersizeme.service.tiling import TiledUpscaler
    from supersizeme.toolchain.evaluate import evaluate_folder, served_png

    folder = ModelFolder.open(MODEL)
    if xla:
        from supersizeme.rdn import compile_network, configure_threads, load_rdn

        configure_threads(threads)
        run = compile_network(load_rdn(folder, precision), jit_compile=True)
        in_force = precision
    else:
        network = load_network(folder, runtime, precision, threads, streams)
        run, in_force = network.run, network.precision
    tile = (photo_like(TILE_SIDE, TILE_SIDE)[None] / 255).astype(np.float32)
    with ThreadPoolExecutor(streams) as pool:
        seconds = median_seconds(lambda: list(pool.map(run, [tile] * streams)), repeat)
    row = {
        "precision": in_force,
        "streams": streams,
        "s_per_mp": seconds / streams / (TILE_SIDE**2 / 1e6),
    }
    if psnr and SET5.is_dir():
        upscaler = TiledUpscaler(run, folder.params.scale, folder.params.receptive_radius)
        upscale = functools.partial(upscaler, lanes=streams)
        result = evaluate_folder(
            served_png(upscale, folder.params.scale), SET5, folder.params.scale
        )
        row["set5_psnr"] = result["psnr"]
    return row


def child_reference_512(repeat: int) -> dict:
    """The shipped weights in a one-thread TensorFlow graph, on the 512 x 512 image."""
    from supersizeme.modelspec import ModelFolder
    from supersizeme.service.runtime import load_network

    network = load_network(ModelFolder.open(MODEL), "tensorflow", "float32", 1)
    image = (photo_like(512, 512)[None] / 255).astype(np.float32)
    return {"seconds": median_seconds(lambda: network.run(image), repeat)}


def child_bicubic(repeat: int) -> dict:
    from supersizeme.toolchain.evaluate import bicubic_png, evaluate_folder

    image = Image.fromarray(photo_like(TILE_SIDE, TILE_SIDE))
    size = (TILE_SIDE * 2, TILE_SIDE * 2)
    seconds = median_seconds(lambda: image.resize(size, Image.Resampling.BICUBIC), repeat)
    row = {"s_per_mp": seconds / (TILE_SIDE**2 / 1e6)}
    if SET5.is_dir():
        row["set5_psnr"] = evaluate_folder(bicubic_png(2), SET5, 2)["psnr"]
    return row


def in_child(threads: int, *args: str) -> dict:
    """Run one measurement in a fresh process limited to ``threads`` threads."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "OPENBLAS_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    if args[0] == "peak":
        # Some hosts set these for older OpenBLAS builds; they hold numpy's OpenBLAS to an
        # older kernel (Haswell's on AVX-512 cores), which would understate the peak.
        env.pop("OPENBLAS_CORETYPE", None)
        env.pop("OPENBLAS_L2_SIZE", None)
    command = [
        sys.executable,
        "-m",
        "benchmarks.runtime",
        "--child",
        *args,
        "--threads",
        str(threads),
    ]
    result = subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, env=env, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# The service over HTTP.


def post(port: int, data: bytes, content_type: str) -> tuple[float, int]:
    """Seconds until the answer, and its status (refusals are answers too)."""
    started = time.perf_counter()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/supersizeme/", data=data, headers={"Content-Type": content_type}
    )
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            response.read()
            status = response.status
    except urllib.error.HTTPError as refusal:
        refusal.read()
        status = refusal.code
    return time.perf_counter() - started, status


def alone(port: int, data: bytes, content_type: str, repeat: int) -> dict:
    answers = [post(port, data, content_type) for _ in range(repeat)]
    return {
        "seconds": statistics.median(seconds for seconds, _ in answers),
        "statuses": sorted(status for _, status in answers),
    }


def at_once(port: int, data: bytes, content_type: str, count: int, repeat: int) -> dict:
    """Wall time until all of ``count`` simultaneous requests are answered (median over
    ``repeat`` rounds), and every answer's status."""
    walls, statuses = [], []
    for _ in range(repeat):
        started = time.perf_counter()
        with ThreadPoolExecutor(count) as pool:
            answers = list(pool.map(lambda _: post(port, data, content_type), range(count)))
        walls.append(time.perf_counter() - started)
        statuses += [status for _, status in answers]
    return {"seconds": statistics.median(walls), "statuses": sorted(statuses)}


def wait_ready(port: int, process: subprocess.Popen, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("the service exited before it was ready")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError("the service did not become ready")


def measure_service(port: int, command: list[str], layout: str, repeat: int) -> dict:
    """The served path end to end, with the service started as ``command`` starts it, in
    ``layout`` (workers x inference threads per worker [x streams], e.g. ``1x2`` or
    ``1x2x1``; without streams, the service's default)."""
    workers, threads, *streams = layout.split("x")
    # The cap set explicitly: a layout of one-thread workers would lower its own below the
    # 1 MP photo, and this table compares speeds.
    env = {
        **os.environ,
        "PORT": str(port),
        "SSM_WORKERS": workers,
        "SSM_THREADS": threads,
        "SSM_STREAMS": streams[0] if streams else "",
        "SSM_MAX_PIXELS": "2000000",
    }
    process = subprocess.Popen(
        command,
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_ready(port, process)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/supersizeme/model") as answer:
            info = json.loads(answer.read())
        small = encoded(photo_like(512, 512), "PNG")
        photo = encoded(photo_like(1155, 866), "JPEG")  # 1.0 MP
        results = {
            "layout": layout,
            "model_info": info["runtime"],
            "max_pixels": info["limits"]["max_pixels"],
        }
        for name, data, kind in (("png512", small, "image/png"), ("jpeg1mp", photo, "image/jpeg")):
            post(port, data, kind)  # warm-up at this size
            results[f"{name}_alone"] = alone(port, data, kind, repeat)
            results[f"{name}_four"] = at_once(port, data, kind, 4, repeat)
        return results
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def best_peak(peaks: dict, precision: str) -> dict[str, float]:
    """The higher of the matmul peaks measured in ``precision`` (numpy's and OpenVINO's
    for float32), at one thread and at all."""
    same = [peak for key, peak in peaks.items() if key.split()[-1] == precision]
    return {threads: max(peak[threads] for peak in same) for threads in ("1", "all")}


PEAKS = (
    # (key, what the table calls it)
    ("float32", "float32, numpy"),
    ("bfloat16", "bfloat16, OpenVINO"),
    ("openvino float32", "float32, OpenVINO"),
)


def report(results: dict) -> str:
    """This run's section: headed by the host's kind and machine, shares against the peak
    of each row's own precision."""
    cores = results["cores"]
    peaks = results["peak"]
    lines = [
        f"## {results['host_kind']} host: {results['machine']} ({results['date']})",
        "",
        f"ISA flags detected: {', '.join(results['flags']) or 'none'}. "
        f"Model {results['model']} ({results['gflop_per_mp']:.0f} GFLOP per input megapixel), "
        f"{TILE_SIDE} x {TILE_SIDE} tile, median of {results['repeat']} runs after a warm-up; "
        f"every row in a fresh process. Load average before / after: {results['load_before']} / "
        f"{results['load_after']}.",
        "",
        f"Peak, {MATMUL_SIDE}² matmul: "
        + "; ".join(
            f"{label} {peaks[key]['1']:.1f} GFLOP/s at 1 thread, {peaks[key]['all']:.1f} at {cores}"
            for key, label in PEAKS
            if key in peaks
        )
        + f" (numpy's OpenBLAS kernel: {peaks['float32'].get('kernel', '?')}). Each row's "
        "share is against the higher peak of its own precision.",
        "",
        f"| runtime | precision | s per input MP, 1 thread | share of peak, 1 thread "
        f"| s per input MP, {cores} threads | share of peak, {cores} threads | Set5 Y-PSNR (dB) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    gflop = results["gflop_per_mp"]
    for row in results["rows"]:
        one, every = row["1"], row["all"]
        peak = best_peak(peaks, every["precision"])
        psnr = f"{every['set5_psnr']:.2f}" if "set5_psnr" in every else "–"
        lines.append(
            f"| {row['name']} | {every['precision']} | {one['s_per_mp']:.2f} "
            f"| {gflop / one['s_per_mp'] / peak['1']:.0%} | {every['s_per_mp']:.2f} "
            f"| {gflop / every['s_per_mp'] / peak['all']:.0%} | {psnr} |"
        )
    bicubic = results["bicubic"]
    psnr = f"{bicubic['set5_psnr']:.2f}" if "set5_psnr" in bicubic else "–"
    lines.append(
        f"| Pillow bicubic (scale) | uint8 | {bicubic['s_per_mp']:.3f} | – | – | – | {psnr} |"
    )
    services = results.get("service") or []
    if services:
        reference = results["reference_512"]["seconds"]
        lines += [
            "",
            f"The service over HTTP, started by `{results['serve_command']}` in each layout "
            "(workers × inference threads per worker [× streams, else one per thread]; "
            "SSM_WORKERS, SSM_THREADS, SSM_STREAMS), precision `auto`. Reference: "
            "the shipped weights in a one-thread TensorFlow graph on the same 512 x 512 image, "
            f'{reference:.2f} s. "Four" is the wall time until all four simultaneous requests '
            "were answered, against four reference times; answers other than 200 are counted "
            "in brackets.",
            "",
            "| layout | runtime, precision (warm-up s/MP) | cap in force | 512² PNG alone "
            "| four 512² PNG | 1 MP JPEG alone | four 1 MP JPEG |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for service in services:
            info = service["model_info"]
            cells = []
            for key, count in (("png512_alone", 1), ("png512_four", 4)):
                seconds = service[key]["seconds"]
                cells.append(
                    f"{seconds:.2f} s = **{seconds / (count * reference):.2f}×**"
                    f"{statuses(service[key]['statuses'])}"
                )
            for key in ("jpeg1mp_alone", "jpeg1mp_four"):
                cells.append(f"{service[key]['seconds']:.2f} s{statuses(service[key]['statuses'])}")
            lines.append(
                f"| {service['layout']} | {info['name']}, {info['precision']} "
                f"({info['seconds_per_megapixel']:.2f}) | {service['max_pixels']:,} | "
                + " | ".join(cells)
                + " |"
            )
    return "\n".join(lines) + "\n"


TITLE = """# Runtime benchmark

One section per kind of host, each from one run of `python -m benchmarks.runtime` there.
Absolute times differ between hosts and between runs on the same host; compare the ratios
within a section, not across sections.
"""
HOST_ORDER = ("AMX", "AVX-512 BF16", "AVX2", "no AVX2")


def merged(existing: str, section: str) -> str:
    """The report with ``section`` in place of the earlier one of the same host kind, the
    other kinds' sections kept as they were."""
    sections: dict[str, str] = {}
    for part in ("\n" + existing).split("\n## ")[1:]:
        kind = part.split(" host:", 1)[0]
        sections[kind] = "## " + part.rstrip("\n") + "\n"
    sections[section.split(" host:", 1)[0].removeprefix("## ")] = section
    rank = {kind: i for i, kind in enumerate(HOST_ORDER)}
    ordered = sorted(sections, key=lambda kind: rank.get(kind, len(rank)))
    return TITLE + "".join("\n" + sections[kind] for kind in ordered)


def statuses(found: list[int]) -> str:
    """Nothing when every answer was 200, else each status with its count."""
    if set(found) == {200}:
        return ""
    counts = {status: found.count(status) for status in sorted(set(found))}
    return " (" + ", ".join(f"{count} × {status}" for status, count in counts.items()) + ")"


def load_average() -> str:
    return Path("/proc/loadavg").read_text().split()[0] if Path("/proc/loadavg").exists() else "?"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", help="also write the Markdown report here")
    parser.add_argument("--json", help="also write the measurements here")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--serve", default="make serve", help="how the service is started")
    parser.add_argument("--no-service", action="store_true", help="skip the HTTP part")
    parser.add_argument(
        "--layouts",
        nargs="*",
        help="workers x threads [x streams] to serve in (default: 1 x cores, the same on "
        "one stream, cores x 1)",
    )
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "peak":
            row = child_peak(args.threads)
        elif kind == "openvino-peak":
            row = child_openvino_peak(rest[0], args.threads)
        elif kind == "network":
            runtime, xla, precision, streams, psnr = rest
            row = child_network(
                runtime,
                xla == "xla",
                precision,
                args.threads,
                int(streams),
                args.repeat,
                psnr == "psnr",
            )
        elif kind == "reference":
            row = child_reference_512(args.repeat)
        else:
            row = child_bicubic(args.repeat)
        print(json.dumps(row))
        return

    from supersizeme.modelspec import ModelFolder

    cores = cpu_count()
    flags = cpu_flags()
    params = ModelFolder.open(MODEL).params
    macs = sum(n_in * n_out * size * size for _, n_in, n_out, size in params.convolutions()[:-1])
    macs += 3 * 3 * 3 * 3 * params.scale**2  # the last convolution runs at the output size
    results: dict[str, Any] = {
        "host_kind": host_kind(flags),
        "date": time.strftime("%Y-%m-%d"),
        "machine": hardware(),
        "cpu": cpu_model(),
        "cores": cores,
        "flags": reported_flags(flags),
        "model": MODEL.name,
        "gflop_per_mp": 2 * macs * 1e6 / 1e9,
        "repeat": args.repeat,
        "load_before": load_average(),
        "serve_command": args.serve,
    }
    rep = ["--repeat", str(args.repeat)]
    precisions = measured_precisions(flags)
    peaks = {"float32": ("peak",), "openvino float32": ("openvino-peak", "float32")}
    if "bfloat16" in precisions:
        peaks["bfloat16"] = ("openvino-peak", "bfloat16")
    results["peak"] = {}
    for key, child in peaks.items():
        one, every = in_child(1, *child), in_child(cores, *child)
        results["peak"][key] = {"1": one["gflops"], "all": every["gflops"]}
        if "kernel" in one:
            results["peak"][key]["kernel"] = one["kernel"]
    rows = []
    for name, runtime, xla, per_thread in RUNTIMES:
        for precision in precisions:
            mode = "xla" if xla else "graph"
            streams = str(cores if per_thread else 1)
            rows.append(
                {
                    "name": name,
                    "1": in_child(1, "network", runtime, mode, precision, "1", "no", *rep),
                    "all": in_child(
                        cores, "network", runtime, mode, precision, streams, "psnr", *rep
                    ),
                }
            )
            print(f"{name} {precision}: {rows[-1]}", file=sys.stderr)
    results["rows"] = rows
    results["bicubic"] = in_child(1, "bicubic", *rep)
    if not args.no_service:
        results["reference_512"] = in_child(1, "reference", *rep)
        results["service"] = [
            measure_service(args.port, args.serve.split(), layout, args.repeat)
            for layout in args.layouts or [f"1x{cores}", f"1x{cores}x1", f"{cores}x1"]
        ]
    results["load_after"] = load_average()
    if args.json:
        path = Path(args.json)
        by_kind = json.loads(path.read_text()) if path.exists() else {}
        path.write_text(json.dumps({**by_kind, results["host_kind"]: results}, indent=2) + "\n")
    section = report(results)
    print(section, end="")
    if args.out:
        path = Path(args.out)
        path.write_text(merged(path.read_text() if path.exists() else "", section))


if __name__ == "__main__":
    main()
