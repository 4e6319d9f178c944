"""Load and soak: a real gunicorn under N concurrent clients for a while, memory watched.

    python -m benchmarks.load --model models/rdn-C3-D6-G32-G032-x2 --minutes 10 --load 1 3

For each load factor it starts gunicorn (or targets ``--url``), waits until every worker
answers, and runs ``factor x capacity`` clients for ``--minutes``, where capacity is the
number of images the workers run at once (one inference slot per worker). Each client
sends a fixed mix of real PNG and JPEG images (128, 256 and 512 pixels square) back to
back, honouring Retry-After on 429/503. Every answer's status and latency is recorded,
and every few seconds the RSS of the master and of each worker is read from /proc.
Writes a Markdown table and JSON (``--out`` without extension) with the machine named,
and the container sizing that follows from the measurements (rule in ``sizing``), together
with the worst case under concurrency that benchmarks/memory.py measures.

    python -m benchmarks.load --resize --workers 1

recomputes only the sizing of an existing ``--out`` JSON from its recorded runs and the
current benchmarks/memory.json and memory-float32.json, without running the soak again.
"""

from __future__ import annotations

import http.client
import io
import json
import math
import shlex
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.arguments import benchmark_parser
from benchmarks.gunicorn_server import running_gunicorn, worker_pids
from benchmarks.latency import photo_like
from supersizeme.machine import cpu_count, hardware
from supersizeme.service.config import default_workers, env, from_environment

HERE = Path(__file__).resolve().parent

# (side, format): every client cycles through this list, each from its own offset.
MIX = [(128, "PNG"), (256, "JPEG"), (512, "PNG"), (128, "JPEG"), (256, "PNG"), (512, "JPEG")]
# Sizing rule (docs/operations.md "Scale-out and sizing"): memory = (workers x per-worker peak RSS
# + gunicorn master + the front's processes) x (1 + margin), rounded up to 128 MiB. The
# per-worker peak is the larger of this soak's and the worst case of MEMORY_WORST_CASES (an upload
# at the pixel cap in inference while hostile uploads decode next to it), since that can
# happen to any worker at any time; the front (nginx and the launcher that starts it and
# gunicorn) runs in the same container. The margin covers fragmentation, slow growth
# between worker recycles (max_requests) and the in-memory /tmp. cpu = workers x inference
# threads per worker: the cores the measurements ran on, which the pixel cap's speed and
# the runtime's per-thread buffers both assume.
# One worst case per arithmetic a host computes in: bfloat16 (AVX-512 BF16, AMX) and float32
# (AVX2 only, or SSM_PRECISION=float32), whose inference buffers are twice as large. A pod
# may land on either kind of node, so the larger sizes it.
MEMORY_WORST_CASES = (HERE / "memory.json", HERE / "memory-float32.json")
MEMORY_MARGIN = 0.25
MEMORY_ROUND_MIB = 128
RSS_INTERVAL_S = 5.0
# Memory counts as flat when the second half of a run adds at most this share of the peak.
FLAT_TOLERANCE = 0.02


@dataclass
class Answer:
    seconds: float
    status: int
    code: str  # the error code, or "" for a 200
    pixels: int


@dataclass
class MemoryTrace:
    """RSS samples (MiB) of one process, in order."""

    role: str
    samples: list[float] = field(default_factory=list)

    def summary(self) -> dict:
        half = len(self.samples) // 2
        peak = max(self.samples)
        # RSS rises and falls with each image, so compare peaks, not single samples: by
        # the second half the model, TensorFlow's pools and the largest image of the mix
        # have been through the worker, and a steady worker peaks no higher than before.
        growth = max(self.samples[half:]) - max(self.samples[: max(half, 1)])
        return {
            "role": self.role,
            "start_mib": round(self.samples[0], 1),
            "peak_mib": round(peak, 1),
            "end_mib": round(self.samples[-1], 1),
            "second_half_growth_mib": round(growth, 1),
            "flat": growth <= FLAT_TOLERANCE * peak,
            "samples": len(self.samples),
        }


def images() -> list[tuple[bytes, str, int]]:
    """The mix as (bytes, Content-Type, pixels)."""
    made = []
    for side, image_format in MIX:
        data = photo_like(side, side)
        if image_format == "JPEG":
            buffer = io.BytesIO()
            Image.open(io.BytesIO(data)).save(buffer, "JPEG", quality=90)
            data = buffer.getvalue()
        made.append((data, f"image/{image_format.lower()}", side * side))
    return made


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile with linear interpolation between ranks; None for no values."""
    return float(np.percentile(values, q)) if values else None


def summarise(answers: list[Answer], wall_seconds: float) -> dict:
    """Counts, throughput and latency percentiles of one run.

    Throughput and latency count only 200s: a refusal (429, 503) is quick by design and
    would make a saturated server look fast.
    """
    ok = [a for a in answers if a.status == 200]
    latencies = [a.seconds for a in ok]
    return {
        "requests": len(answers),
        "ok": len(ok),
        "statuses": dict(sorted(Counter(f"{a.status} {a.code}".strip() for a in answers).items())),
        "requests_per_s": len(ok) / wall_seconds if wall_seconds else 0.0,
        "input_mp_per_s": sum(a.pixels for a in ok) / 1e6 / wall_seconds if wall_seconds else 0.0,
        "latency_s": {
            "p50": percentile(latencies, 50),
            "p95": percentile(latencies, 95),
            "p99": percentile(latencies, 99),
            "mean": statistics.fmean(latencies) if latencies else None,
            "max": max(latencies, default=None),
        },
    }


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None  # the process ended between listing and reading
    return None


class MemoryWatch(threading.Thread):
    """Samples the RSS of a gunicorn master and its workers until stopped."""

    def __init__(self, master_pid: int, interval: float) -> None:
        super().__init__(daemon=True)
        self.master_pid, self.interval = master_pid, interval
        self.traces: dict[int, MemoryTrace] = {}
        self.stopped = threading.Event()

    def sample(self) -> None:
        roles = {self.master_pid: "master", **dict.fromkeys(worker_pids(self.master_pid), "worker")}
        for pid, role in roles.items():
            mib = rss_mib(pid)
            if mib is not None:
                self.traces.setdefault(pid, MemoryTrace(role)).samples.append(mib)

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            self.sample()

    def stop(self) -> dict[str, dict]:
        self.stopped.set()
        self.join()
        self.sample()
        return {str(pid): trace.summary() for pid, trace in self.traces.items()}


def post(host: str, port: int, data: bytes, content_type: str) -> tuple[int, str | None, bytes]:
    """One upload: status, Retry-After and body."""
    connection = http.client.HTTPConnection(host, port, timeout=180)
    try:
        connection.request("POST", "/supersizeme/", data, {"Content-Type": content_type})
        response = connection.getresponse()
        return response.status, response.getheader("Retry-After"), response.read()
    finally:
        connection.close()


def error_code(body: bytes) -> str:
    try:
        return str(json.loads(body)["error"])
    except (ValueError, KeyError, TypeError):
        return "not_json"


def client(
    address: tuple[str, int],
    mix: list[tuple[bytes, str, int]],
    offset: int,
    until: float,
    answers: list[Answer],
) -> None:
    """Sends the mix back to back, from ``offset`` on, until the run's end."""
    turn = offset
    while time.monotonic() < until:
        data, content_type, pixels = mix[turn % len(mix)]
        turn += 1
        started = time.monotonic()
        try:
            status, retry_after, body = post(*address, data, content_type)
        except OSError:
            # No answer at all (refused, reset, timed out): counted, and not retried at once.
            status, retry_after, body = 0, "1", b""
        code = "" if status == 200 else "no_answer" if status == 0 else error_code(body)
        answers.append(Answer(time.monotonic() - started, status, code, pixels))
        if retry_after is not None:
            time.sleep(max(0.0, min(float(retry_after), until - time.monotonic())))


def wait_for_workers(address: tuple[str, int], workers: int, seconds: float = 300) -> None:
    """Until /readyz has said 200 four times per worker in a row: a worker that is still
    loading its model says 503, and the connections spread over the workers."""
    in_a_row = 0
    deadline = time.monotonic() + seconds
    while in_a_row < 4 * workers:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the {workers} workers did not all become ready")
        connection = http.client.HTTPConnection(*address, timeout=10)
        try:
            connection.request("GET", "/readyz")
            ready = connection.getresponse().status == 200
        except OSError:
            ready = False
        finally:
            connection.close()
        in_a_row = in_a_row + 1 if ready else 0
        if not ready:
            time.sleep(0.5)


def drive(
    address: tuple[str, int], concurrency: int, minutes: float, master_pid: int | None
) -> dict:
    """One run: ``concurrency`` clients for ``minutes``, memory sampled if the pid is known."""
    watch = MemoryWatch(master_pid, RSS_INTERVAL_S) if master_pid else None
    if watch:
        watch.sample()
        watch.start()
    mix = images()
    answers: list[Answer] = []
    began = time.monotonic()
    until = began + minutes * 60
    threads = [
        threading.Thread(target=client, args=(address, mix, i, until, answers))
        for i in range(concurrency)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.monotonic() - began
    return {
        "concurrency": concurrency,
        "duration_s": round(wall, 1),
        **summarise(answers, wall),
        "memory": watch.stop() if watch else {},
    }


def run_local(model: Path, workers: int, concurrency: int, minutes: float) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        log = Path(folder) / "gunicorn.log"
        # The clean model asked for, beside the photo models a default service holds.
        service = from_environment()
        photo, photo_low = (service[key] for key in ("PHOTO_MODEL_DIR", "PHOTO_LOW_MODEL_DIR"))
        with running_gunicorn(
            model,
            log,
            workers=workers,
            photo_model_dir=Path(photo) if photo else None,
            photo_low_model_dir=Path(photo_low) if photo_low else None,
        ) as server:
            address = ("127.0.0.1", server.port)
            wait_for_workers(address, workers)
            result = drive(address, concurrency, minutes, server.process.pid)
            text = server.log_text()
    result["log"] = {
        "tracebacks": text.count("Traceback"),
        "worker_timeouts": text.count("WORKER TIMEOUT"),
    }
    return result


def worst_case() -> dict | None:
    """The worst peaks under concurrency (worker, master, front) from benchmarks/memory.py,
    of whichever report in MEMORY_WORST_CASES has the highest worker peak, with where and in
    what precision it was measured; None if none has been run."""
    reports = [json.loads(path.read_text()) for path in MEMORY_WORST_CASES if path.exists()]
    if not reports:
        return None
    report = max(reports, key=lambda r: r["worst"]["worker_peak_mib"])
    where = f"{report['machine']}, {report['date']}"
    if precision := report.get("settings", {}).get("precision"):
        where += f", {precision}"
    return {**report["worst"], "measured": where}


def cap_peak_rss_mib() -> float | None:
    """A worker's worst peak RSS with an upload at the pixel cap in inference and hostile
    uploads decoding next to it (MEMORY_WORST_CASES); None if not measured."""
    worst = worst_case()
    return worst["worker_peak_mib"] if worst else None


def sizing(runs: list[dict], workers: int, threads: int = 1) -> dict:
    """Container requests and limits from the measurements, by the rule at the top, for
    ``workers`` gunicorn workers of ``threads`` inference threads each."""
    traces = [t for run in runs for t in run["memory"].values()]
    soak_worker = max((t["peak_mib"] for t in traces if t["role"] == "worker"), default=0.0)
    soak_master = max((t["peak_mib"] for t in traces if t["role"] == "master"), default=0.0)
    worst = worst_case() or {}
    at_cap = cap_peak_rss_mib() or 0.0
    per_worker = max(soak_worker, at_cap)
    master = max(soak_master, worst.get("master_peak_mib", 0.0))
    front = worst.get("front_peak_mib", 0.0)
    needed = (workers * per_worker + master + front) * (1 + MEMORY_MARGIN)
    memory = math.ceil(needed / MEMORY_ROUND_MIB) * MEMORY_ROUND_MIB
    return {
        "rule": (
            f"memory = (workers x max(soak worker peak, worst-case worker peak) + master peak "
            f"+ front peak) x {1 + MEMORY_MARGIN:g}, rounded up to {MEMORY_ROUND_MIB} MiB; "
            "worst case and front from the larger of benchmarks/memory.json (bfloat16) and "
            "benchmarks/memory-float32.json; request = limit; "
            "cpu = workers x inference threads per worker"
        ),
        "workers": workers,
        "threads": threads,
        "soak_worker_peak_mib": round(soak_worker, 1),
        "worst_case_worker_peak_mib": round(at_cap, 1),
        "worst_case_measured": worst.get("measured"),
        "master_peak_mib": round(master, 1),
        "front_peak_mib": round(front, 1),
        "memory_request_mib": memory,
        "memory_limit_mib": memory,
        "cpu_request": workers * threads,
        "cpu_limit": workers * threads,
    }


def markdown(report: dict) -> str:
    lines = [
        f"# Load and soak: {report['label']}",
        "",
        f"Machine: {report['machine']}; model {report['model']}; {report['workers']} workers "
        f"(capacity {report['capacity']} images at once); command `{report['command']}`",
        "",
        "| load | clients | duration (s) | requests | 200 | 200s/s | input MP/s "
        "| p50 (s) | p95 (s) | p99 (s) | statuses |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for run in report["runs"]:
        latency = run["latency_s"]
        cells = [
            f"{run['load']:g}x",
            run["concurrency"],
            f"{run['duration_s']:.0f}",
            run["requests"],
            run["ok"],
            f"{run['requests_per_s']:.3f}",
            f"{run['input_mp_per_s']:.3f}",
            *(
                f"{latency[q]:.2f}" if latency[q] is not None else "-"
                for q in ("p50", "p95", "p99")
            ),
            ", ".join(f"{k}: {v}" for k, v in run["statuses"].items()),
        ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines += [
        "",
        f"RSS per process (MiB), sampled every {RSS_INTERVAL_S:g} s; growth = second half's "
        f"peak minus first half's; flat = growth at most {FLAT_TOLERANCE:.0%} of the peak. "
        "A worker's first 512 x 512 image raises its RSS once; in a run of a minute or two "
        "that can fall in the second half and read as growth, so judge flatness on long runs:",
        "",
        "| load | pid | role | start | peak | end | second-half growth | flat | samples |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for run in report["runs"]:
        for pid, m in run["memory"].items():
            lines.append(
                f"| {run['load']:g}x | {pid} | {m['role']} | {m['start_mib']:.0f} "
                f"| {m['peak_mib']:.0f} | {m['end_mib']:.0f} "
                f"| {m['second_half_growth_mib']:+.0f} | {'yes' if m['flat'] else 'no'} "
                f"| {m['samples']} |"
            )
    s = report["sizing"]
    lines += [
        "",
        f"Sizing for {s['workers']} worker(s) of {s['threads']} inference thread(s) "
        f"({s['rule']}): memory {s['memory_limit_mib']} MiB, cpu {s['cpu_limit']} (worker "
        f"peak: this soak {s['soak_worker_peak_mib']:.0f} MiB, worst case "
        f"{s['worst_case_worker_peak_mib']:.0f} MiB, measured "
        f"{s['worst_case_measured'] or 'never (no benchmarks/memory*.json)'}; "
        f"master {s['master_peak_mib']:.0f} MiB; front {s['front_peak_mib']:.0f} MiB).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument(
        "--load", type=float, nargs="+", default=[1, 3], help="clients as multiples of capacity"
    )
    parser.add_argument("--url", help="drive this server instead of starting one")
    parser.add_argument("--master-pid", type=int, help="with --url: its gunicorn master, for RSS")
    parser.add_argument("--label", default="soak", help='e.g. "smoke" for a short trial run')
    parser.add_argument("--out", type=Path, default=HERE / "load", help="writes OUT.md, OUT.json")
    parser.add_argument(
        "--resize",
        action="store_true",
        help="only recompute OUT.json's sizing for --workers from its runs and memory*.json",
    )
    args = parser.parse_args()
    # Inference threads per worker as the service (and the soak's gunicorn) reads them.
    threads = env("SSM_THREADS", max(1, cpu_count() // args.workers), int)
    if args.resize:
        report = json.loads(args.out.with_suffix(".json").read_text())
        report["sizing"] = sizing(report["runs"], args.workers, threads)
        write(report, args.out)
        print(json.dumps(report["sizing"], indent=2))
        return

    capacity = args.workers  # one inference slot per worker
    runs = []
    for load in args.load:
        concurrency = max(1, round(load * capacity))
        if args.url:
            parsed = urllib.parse.urlsplit(args.url)
            address = (parsed.hostname or "127.0.0.1", parsed.port or 80)
            wait_for_workers(address, args.workers)
            run = drive(address, concurrency, args.minutes, args.master_pid)
        else:
            run = run_local(args.model, args.workers, concurrency, args.minutes)
        runs.append({"load": load, **run})
        print(json.dumps(runs[-1], indent=2), flush=True)
    report = {
        "label": args.label,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": hardware(),
        "model": args.url or args.model.name,
        "workers": args.workers,
        "capacity": capacity,
        "minutes": args.minutes,
        "mix": [f"{side}x{side} {fmt}" for side, fmt in MIX],
        "command": shlex.join(["python", "-m", "benchmarks.load", *sys.argv[1:]]),
        "runs": runs,
        "sizing": sizing(runs, args.workers, threads),
    }
    write(report, args.out)
    print(markdown(report))


def write(report: dict, out: Path) -> None:
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(report))


if __name__ == "__main__":
    main()
