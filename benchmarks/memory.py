"""Worst-case memory of one replica: whole photos, and large uploads beside hostile ones.

    .venv/bin/python -m benchmarks.memory --repeat 2

Starts the service as `make serve` and the container do (``python -m front.serve``: nginx on
a loopback port, gunicorn behind it) with the shipped models (all three, as the service
ships: the 12 MP camera JPEG goes to the photo model), one gunicorn worker, the pixel cap set
to a 12 MP photo's (``SSM_MAX_PIXELS``, so that every scenario runs whatever this machine's
speed) and the replica's memory set to the pod's limit (``SSM_MEMORY_BYTES``,
``--memory-mib``), so that the worker's memory ledger refuses what it would refuse in a pod.
Every other setting comes from the environment: on a host slower than the one the 12 MP cap
was set for, raise ``SSM_DEADLINE_SECONDS`` so that the photos run to their end rather than
stop at the deadline before they have touched all their memory.
Then, scenario by scenario, it sends the uploads below and watches every process of the
replica: the launcher, nginx's master and worker, gunicorn's master and worker. Their
RSS is sampled from /proc every 0.1 s, and the kernel's own high-water mark (VmHWM, reset
through clear_refs when the scenario starts) catches any peak between two samples.

The hostile uploads are the accepted files of benchmarks/decode_bounds.py whose decode
costs the most memory. They are sent while the main upload is in inference; each is
decoded at once in its own request thread, then waits for the worker's inference turn (and
holds its decoded image while it waits) or is refused, both fine here; every request runs to
its own end (answer, refusal or deadline). The scenarios run in order, ``--repeat`` times
over in the same service, so each carries what the ones before it left in the worker's
heap, as a long-running worker would, and the second pass shows whether that keeps growing.
Writes benchmarks/memory.md and benchmarks/memory.json; with ``SSM_PRECISION=float32`` and
``--out benchmarks/memory-float32``, the float32 case that hosts without bfloat16 compute
(benchmarks/load.py's sizing takes the larger).
"""

from __future__ import annotations

import http.client
import io
import json
import os
import runpy
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.arguments import benchmark_parser
from benchmarks.decode_bounds import accepted_files
from benchmarks.imagefactory import camera_jpeg
from benchmarks.latency import photo_like
from front.serve import die_with_parent
from supersizeme.machine import hardware
from supersizeme.service import config as settings
from supersizeme.service.config import MAX_BODY_BYTES, REPO_ROOT
from supersizeme.service.images import Limits

HERE = Path(__file__).resolve().parent
PHOTO_SIZE = (4032, 3024)  # a 12 MP phone photo
CAP = PHOTO_SIZE[0] * PHOTO_SIZE[1]  # SSM_MAX_PIXELS, so that the photo is served anywhere
TWO_MP = (1632, 1224)  # 1,997,568 pixels, the size decode_bounds.py uses
X4_SIZE = (730, 547)  # 399,310 pixels at x4: 6.4 MP out
# The replica's memory: the limit of k8s/deployment.yaml, which the worker reads from its cgroup.
MEMORY_MIB = 6016
# The three accepted files whose decode had the highest peak RSS in benchmarks/decode-bounds.md
# (92, 91 and 84 MiB above the process's size; of the two RGBA files at 91, the one with the
# larger body). The RGBA one also keeps an alpha plane while it waits, the ICC one a 5 MB
# profile, and every one its body.
HOSTILE = (
    "JPEG, 5 MB ICC profile",
    "PNG RGBA, noise in one channel (reference)",
    "PNG, 10,000 chunks before the image data",
)
# Long enough for the main upload to be decoded and in inference, so that the hostile
# uploads decode next to the network rather than before it (checked afterwards, "during").
HOSTILE_DELAY_S = 1.0
SAMPLE_INTERVAL_S = 0.1
IDLE_S = 3.0
# Every request here is answered within the 60 s deadline plus the encode; past this the
# service is broken, and the benchmark stops rather than wait.
REQUEST_TIMEOUT_S = 180.0
READY_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 90.0
# The processes of one replica as the launcher starts them; the front is all but gunicorn's.
ROLES = ("gunicorn worker", "gunicorn master", "nginx master", "nginx worker", "launcher")
FRONT_ROLES = ("nginx master", "nginx worker", "launcher")


@dataclass(frozen=True)
class Upload:
    """One image as the benchmark posts it, and the scale it asks for."""

    label: str
    data: bytes
    content_type: str
    scale: int = 2


@dataclass(frozen=True)
class Scenario:
    name: str
    main: Upload | None
    hostile: int  # hostile uploads sent while ``main`` is in inference
    copies: int = 1  # of ``main``, sent at once


@dataclass
class Answer:
    label: str
    status: int
    code: str
    sent_s: float
    answered_s: float
    timing_ms: dict[str, float] = field(default_factory=dict)


# --- the uploads ---------------------------------------------------------------------------


def noisy_png(width: int, height: int, limit: int) -> bytes:
    """A PNG of ``width`` x ``height`` whose body is just under ``limit`` bytes: random
    pixels, which PNG cannot compress, in as many top rows as fit, flat grey below."""
    rng = np.random.default_rng(2)
    rows = height
    for _ in range(10):
        pixels = np.full((height, width, 3), 120, np.uint8)
        pixels[:rows] = rng.integers(0, 256, (rows, width, 3), np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "PNG", compress_level=1)
        if buffer.tell() <= limit:
            return buffer.getvalue()
        rows = rows * limit // buffer.tell() - 1
    raise ValueError("no noisy PNG fits the body")


def hostile_uploads() -> list[Upload]:
    files = accepted_files()
    return [
        Upload(name, files[name], "image/png" if name.startswith("PNG") else "image/jpeg")
        for name in HOSTILE
    ]


def scenarios(request_threads: int) -> list[Scenario]:
    two = Upload("2 MP photo PNG, x2", photo_like(*TWO_MP), "image/png")
    x4 = Upload("0.4 MP photo PNG, x4", photo_like(*X4_SIZE), "image/png", scale=4)
    body = Upload("2 MP noise PNG of 5 MiB, x2", noisy_png(*TWO_MP, MAX_BODY_BYTES), "image/png")
    photo = camera_jpeg(*PHOTO_SIZE)
    camera = Upload(f"12 MP photo JPEG of {len(photo) / 1e6:.1f} MB, x2", photo, "image/jpeg")
    return [
        Scenario("idle", None, 0),
        Scenario("one 2 MP upload", two, 0),
        Scenario(f"2 MP + {len(HOSTILE)} hostile uploads", two, len(HOSTILE)),
        Scenario(f"0.4 MP at x4 + {len(HOSTILE)} hostile uploads", x4, len(HOSTILE)),
        Scenario("one 5 MiB body of 2 MP", body, 0),
        # What gunicorn's threads allow at most: every one but the inference's decoding.
        Scenario(f"2 MP + {request_threads - 1} hostile uploads", two, request_threads - 1),
        Scenario("one 12 MP photo", camera, 0),
        Scenario("two 12 MP photos at once", camera, 0, copies=2),
    ]


# --- the replica's processes ---------------------------------------------------------------


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            continue  # the thread ended while we looked
    return found


def processes(launcher: int) -> dict[int, str]:
    """pid -> role, for the launcher and the process trees of gunicorn and nginx under it."""
    roles = {launcher: "launcher"}
    for child in children(launcher):
        try:
            command = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        name = "gunicorn" if b"gunicorn" in command else "nginx"
        roles[child] = f"{name} master"
        roles.update(dict.fromkeys(children(child), f"{name} worker"))
    return roles


def status_mib(pid: int, key: str) -> float | None:
    """VmRSS (resident now) or VmHWM (its peak) of ``pid``, None once it has ended."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class Watch(threading.Thread):
    """The peak RSS of each role of a replica, from the moment it starts until stopped, and
    when the gunicorn worker's sampled peak came."""

    def __init__(self, launcher: int, longest_s: float) -> None:
        super().__init__(daemon=True)
        self.launcher = launcher
        self.began = time.monotonic()
        self.deadline = self.began + longest_s
        self.stopped = threading.Event()
        self.peaks: dict[str, float] = {}
        self.worker_peak_at_s = 0.0
        self.start_mib = {
            role: status_mib(pid, "VmRSS") for pid, role in processes(launcher).items()
        }
        for pid in processes(launcher):
            # Linux's clear_refs 5 resets VmHWM to the current RSS. A process that ended
            # between listing and writing has nothing left to measure.
            with suppress(FileNotFoundError, ProcessLookupError):
                Path(f"/proc/{pid}/clear_refs").write_text("5")

    def sample(self, key: str) -> None:
        for pid, role in processes(self.launcher).items():
            mib = status_mib(pid, key)
            if mib is None:
                continue
            if role == "gunicorn worker" and key == "VmRSS" and mib > self.peaks.get(role, 0):
                self.worker_peak_at_s = time.monotonic() - self.began
            self.peaks[role] = max(self.peaks.get(role, 0.0), mib)

    def run(self) -> None:
        while not self.stopped.wait(SAMPLE_INTERVAL_S) and time.monotonic() < self.deadline:
            self.sample("VmRSS")

    def stop(self) -> dict[str, float]:
        self.stopped.set()
        self.join()
        self.sample("VmHWM")
        return self.peaks


# --- the service ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get(port: int, path: str, timeout: float) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


@contextmanager
def running_front(environment: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    """``python -m front.serve`` until /readyz through nginx says 200; SIGTERM and wait after,
    whatever happens in between."""
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "front.serve"],
            cwd=REPO_ROOT,
            env=environment,
            stdout=output,
            stderr=subprocess.STDOUT,
            # Stopped (SIGTERM) even if this process is killed outright.
            preexec_fn=die_with_parent,
        )
    port = int(environment["SSM_BIND"].rsplit(":", 1)[1])
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if process.poll() is not None:
                raise RuntimeError("the front exited:\n" + log.read_text(errors="replace"))
            if time.monotonic() > deadline:
                raise RuntimeError(
                    "the front did not become ready:\n" + log.read_text(errors="replace")
                )
            try:
                if get(port, "/readyz", timeout=5) == 200:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                # Its children get SIGTERM when it dies (front.serve's die_with_parent).
                process.kill()
                process.wait()


def model_info(port: int) -> dict:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", "/supersizeme/model")
        return json.loads(connection.getresponse().read())
    finally:
        connection.close()


def post(port: int, upload: Upload, began: float, answers: list[Answer]) -> None:
    sent = time.monotonic() - began
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT_S)
    try:
        connection.request(
            "POST",
            f"/supersizeme/?scale={upload.scale}",
            upload.data,
            {"Content-Type": upload.content_type},
        )
        response = connection.getresponse()
        body = response.read()
        status, timing = response.status, response.getheader("Server-Timing") or ""
    except OSError as exc:
        status, body, timing = 0, repr(exc).encode(), ""
    finally:
        connection.close()
    code = "" if status == 200 else error_code(body)
    answers.append(
        Answer(upload.label, status, code, sent, time.monotonic() - began, parse(timing))
    )


def error_code(body: bytes) -> str:
    try:
        return str(json.loads(body)["error"])
    except (ValueError, KeyError, TypeError):
        return body[:80].decode(errors="replace")


def parse(server_timing: str) -> dict[str, float]:
    """``decode;dur=12.3, queue;dur=0.0, ...`` -> {"decode": 12.3, "queue": 0.0, ...}."""
    stages = {}
    for part in server_timing.split(","):
        name, _, duration = part.strip().partition(";dur=")
        if duration:
            stages[name] = float(duration)
    return stages


def during_inference(answers: list[Answer], main_label: str) -> bool:
    """Whether every hostile upload was sent while the main upload was in inference, by the
    main answer's Server-Timing (its encode ended just before it was answered)."""
    main = next(a for a in answers if a.label == main_label)
    if main.status != 200:
        return False
    ended = main.answered_s - main.timing_ms["encode"] / 1000
    started = ended - main.timing_ms["inference"] / 1000
    return all(started <= a.sent_s <= ended for a in answers if a.label != main_label)


def run_scenario(
    port: int, launcher: int, scenario: Scenario, hostile: list[Upload]
) -> dict[str, object]:
    watch = Watch(launcher, longest_s=2 * REQUEST_TIMEOUT_S)
    watch.start()
    answers: list[Answer] = []
    threads = []
    try:
        if scenario.main is None:
            time.sleep(IDLE_S)
        else:
            copies = [scenario.main] * scenario.copies
            uploads = [*copies, *(hostile[i % len(hostile)] for i in range(scenario.hostile))]
            for i, upload in enumerate(uploads):
                if i == scenario.copies:
                    time.sleep(HOSTILE_DELAY_S)
                thread = threading.Thread(target=post, args=(port, upload, watch.began, answers))
                thread.start()
                threads.append(thread)
    finally:
        for thread in threads:
            thread.join(REQUEST_TIMEOUT_S + 10)
        peaks = watch.stop()
    return {
        "peak_mib": {role: round(peaks.get(role, 0.0), 1) for role in ROLES},
        "worker_start_mib": round(watch.start_mib.get("gunicorn worker") or 0.0, 1),
        "worker_peak_at_s": round(watch.worker_peak_at_s, 1),
        "seconds": round(time.monotonic() - watch.began, 1),
        "answers": [vars(answer) for answer in sorted(answers, key=lambda a: a.sent_s)],
        "hostile_during_inference": (
            during_inference(answers, scenario.main.label) if scenario.hostile else None
        ),
    }


# --- the report ----------------------------------------------------------------------------


def combine(name: str, runs: list[dict]) -> dict[str, object]:
    """One scenario over its repetitions: the largest peak of each role, every status."""
    peaks = {role: max(run["peak_mib"][role] for run in runs) for role in ROLES}
    statuses = Counter(
        f"{a['label']}: {a['status']} {a['code']}".strip() for run in runs for a in run["answers"]
    )
    return {
        "name": name,
        "peak_mib": peaks,
        "front_mib": round(sum(peaks[role] for role in FRONT_ROLES), 1),
        "replica_mib": round(sum(peaks.values()), 1),
        "statuses": dict(sorted(statuses.items())),
        "runs": runs,
    }


def worst(rows: list[dict]) -> dict[str, object]:
    """The largest peak of each role over every scenario: what sizing must hold."""
    by_worker = max(rows, key=lambda row: row["peak_mib"]["gunicorn worker"])
    return {
        "worker_peak_mib": by_worker["peak_mib"]["gunicorn worker"],
        "worker_scenario": by_worker["name"],
        "master_peak_mib": max(row["peak_mib"]["gunicorn master"] for row in rows),
        "front_peak_mib": max(row["front_mib"] for row in rows),
    }


def passes(row: dict, key: str, form: str = "{:.0f}") -> str:
    """One value of each pass over the scenarios, e.g. "1405 / 1433"."""
    return " / ".join(form.format(run[key]) for run in row["runs"])


def markdown(report: dict) -> str:
    s = report["settings"]
    lines = [
        "# Worst-case memory of one replica",
        "",
        f"Machine: {report['machine']}; model {report['model']}; {report['date']}; command "
        f"`{report['command']}`"
        + (f", run at nice {report['niceness']}" if report["niceness"] else "")
        + f". Load average (1, 5, 15 min) before: {report['load_before']}; after: "
        f"{report['load_after']}: on a shared machine the times (and so which waiting "
        "uploads reach their deadline) vary, the memory much less.",
        "",
        f"The service as `make serve` runs it (nginx in front, gunicorn behind): "
        f"{s['workers']} gunicorn worker with {s['inference_threads']} inference threads, "
        f"{s['request_threads']} request threads, a waiting room of {s['max_waiting']}, "
        f"pixel cap {s['max_pixels']:,} (x4: {s['max_pixels'] // 5:,}), deadline "
        f"{s['deadline_s']:g} s, precision {s['precision']}, replica memory "
        f"{s['memory_mib']:,} MiB (SSM_MEMORY_BYTES), of which the worker's images may take "
        f"{s['memory_for_images_mib']:,.0f} MiB (its memory ledger, from /supersizeme/model). "
        f"The scenarios ran in this order, {report['repeat']} passes "
        "over them in the same service, so each starts with what the ones before it left in "
        "the worker. RSS in MiB: the peak is the larger of samples every "
        f"{SAMPLE_INTERVAL_S:g} s and the kernel's high-water mark (VmHWM, reset as the "
        "scenario starts); *at* is when the sampled peak came, in seconds from the "
        "scenario's start. Two numbers are the passes' (so *idle* is right after the "
        "model's warm-up, then after a pass); one number is the larger."
        + (f" Allocator settings: {report['malloc']}." if report["malloc"] else ""),
        "",
        "Hostile uploads: benchmarks/decode_bounds.py's accepted files that cost the most to "
        f"decode, sent round robin {HOSTILE_DELAY_S:g} s after the main upload, while it is "
        "in inference (checked by its Server-Timing: *during*): "
        + "; ".join(f"{h['name']} ({h['bytes'] / 1e6:.2f} MB)" for h in report["hostile"])
        + ".",
        "",
        "| scenario | worker at start | **worker peak** | at (s) | gunicorn master "
        "| nginx master | nginx worker | launcher | replica (sum of peaks) | during "
        "| answers (all passes) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for row in report["scenarios"]:
        peak = row["peak_mib"]
        during = [run["hostile_during_inference"] for run in row["runs"]]
        cells = [
            row["name"],
            passes(row, "worker_start_mib"),
            "**"
            + " / ".join(f"{run['peak_mib']['gunicorn worker']:.0f}" for run in row["runs"])
            + "**",
            passes(row, "worker_peak_at_s", "{:.1f}"),
            *(f"{peak[role]:.0f}" for role in ROLES[1:]),
            f"{row['replica_mib']:.0f}",
            "-" if None in during else ("yes" if all(during) else "no"),
            "; ".join(f"{k} ×{v}" for k, v in row["statuses"].items()) or "-",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    w = report["worst"]
    lines += [
        "",
        f"Worst: gunicorn worker {w['worker_peak_mib']:.0f} MiB ({w['worker_scenario']}), "
        f"gunicorn master {w['master_peak_mib']:.0f} MiB, the front (nginx master and worker "
        f"and the launcher) {w['front_peak_mib']:.0f} MiB. benchmarks/load.py's sizing takes "
        "these (`python -m benchmarks.load --resize` recomputes it).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--repeat", type=int, default=2, help="passes over the scenarios")
    parser.add_argument(
        "--memory-mib", type=int, default=MEMORY_MIB, help="the replica's memory (MiB)"
    )
    parser.add_argument("--out", type=Path, default=HERE / "memory", help="writes OUT.md, OUT.json")
    args = parser.parse_args()
    # SIGTERM unwinds like Ctrl-C, so that the service is stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    environment = {
        "SSM_BIND": f"127.0.0.1:{free_port()}",
        "SSM_WORKERS": "1",
        "SSM_MODEL_DIR": str(args.model.resolve()),
        "SSM_MAX_PIXELS": str(CAP),
        "SSM_MEMORY_BYTES": str(args.memory_mib * 2**20),
    }
    # This process reads the settings the service will: the app's and gunicorn's.
    os.environ.update(environment)
    service = settings.from_environment()
    request_threads = runpy.run_path(str(REPO_ROOT / "gunicorn.conf.py"))["threads"]
    if Limits(max_pixels=CAP, scale=4).pixel_cap < X4_SIZE[0] * X4_SIZE[1]:
        raise SystemExit(f"{X4_SIZE} is over the x4 cap")
    hostile = hostile_uploads()
    plan = scenarios(request_threads)
    port = int(environment["SSM_BIND"].rsplit(":", 1)[1])
    runs: dict[str, list[dict]] = {scenario.name: [] for scenario in plan}
    load_before = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    with (
        tempfile.TemporaryDirectory() as folder,
        running_front(dict(os.environ), Path(folder) / "front.log") as launcher,
    ):
        model = model_info(port)
        for repetition in range(args.repeat):
            for scenario in plan:
                run = run_scenario(port, launcher.pid, scenario, hostile)
                runs[scenario.name].append(run)
                print(
                    f"pass {repetition + 1}, {scenario.name} ({run['seconds']:.0f} s): "
                    + json.dumps(run["peak_mib"]),
                    flush=True,
                )
    rows = [combine(name, scenario_runs) for name, scenario_runs in runs.items()]
    report = {
        "machine": hardware(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": shlex.join(["python", "-m", "benchmarks.memory", *sys.argv[1:]]),
        "model": args.model.name,
        "repeat": args.repeat,
        "niceness": os.nice(0),
        "load_before": load_before,
        "load_after": ", ".join(f"{x:.2f}" for x in os.getloadavg()),
        "settings": {
            "workers": settings.default_workers(),
            "inference_threads": service["THREADS"],
            "request_threads": request_threads,
            "max_waiting": service["MAX_WAITING"],
            "max_pixels": CAP,
            "precision": model["precision"],
            "memory_mib": args.memory_mib,
            "memory_for_images_mib": model["limits"]["memory_for_images_bytes"] / 2**20,
            "max_body_bytes": service["MAX_BODY_BYTES"],
            "deadline_s": service["DEADLINE_SECONDS"],
        },
        # glibc's allocator settings, which change how much a worker keeps after a request.
        "malloc": " ".join(f"{k}={v}" for k, v in os.environ.items() if k.startswith("MALLOC_")),
        "hostile": [{"name": h.label, "bytes": len(h.data)} for h in hostile],
        "scenarios": rows,
        "worst": worst(rows),
    }
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    args.out.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
