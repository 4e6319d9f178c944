"""What the service tells its operators: Prometheus metrics and one JSON log line per request.

Under gunicorn every worker is its own process, so a counter kept in memory would show only
the worker that happened to answer the scrape. With ``PROMETHEUS_MULTIPROC_DIR`` set (as
gunicorn.conf.py does before forking) prometheus_client writes each process's values to
files in that directory and ``/metrics`` sums them over all workers, the dead ones included,
so that totals survive worker restarts; ``fold_dead_worker`` adds each dead worker's files
into one set for all of them, so that the directory does not grow with every worker that
ever lived. Without it (the Flask test client, a bare ``create_app``) each app keeps its own
registry in memory.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from flask import Request, Response, g
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    values,
)
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from supersizeme.modelspec import ModelFolder

MULTIPROCESS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"

# Health checks and refusals take milliseconds; an image at the pixel cap takes up to half the
# deadline, 60 s by default, and may wait as long again, so the buckets reach past a minute.
SECONDS_BUCKETS = (0.005, 0.025, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 45, 60, 90)
# From thumbnails to the 24 MP ceiling of the pixel cap (capacity.CEILING_PIXELS).
PIXEL_BUCKETS = (
    16_384, 65_536, 262_144, 500_000, 1_000_000, 2_000_000, 4_000_000, 8_000_000,
    12_500_000, 16_000_000, 24_000_000,
)  # fmt: skip

# Requests that matched no route (404, 405) share one label: a scanner trying thousands of
# paths must not create thousands of series.
UNMATCHED = "unmatched"

# Series of these types only ever add up, so every dead worker's values can be kept as
# their sum, in one file per type: "<type>_<pid>.db" becomes "<type>_dead.db".
# MultiProcessCollector reads the type from the name and ignores the rest.
_ADDITIVE_TYPES = ("counter", "histogram", "summary")
_DEAD = "dead"
# Held shared by a scrape and exclusively while a dead worker's files are folded, so that
# no scrape reads a worker's counts both in its own file and in the sum, or in neither.
_LOCK_FILE = ".fold.lock"


@dataclass
class RequestRecord:
    """Everything worth knowing about one answered request, for the log and the metrics."""

    request_id: str
    method: str
    path: str
    query: str
    endpoint: str
    status: int
    error: str | None
    detail: str | None
    bytes_in: int | None
    bytes_out: int | None
    width: int | None
    height: int | None
    stages: dict[str, float] = field(default_factory=dict)
    total: float = 0.0
    remote_addr: str | None = None
    model: str | None = None  # the model that enlarged the image (routing), once chosen
    pid: int = field(default_factory=os.getpid)

    @classmethod
    def of(cls, request: Request, response: Response) -> RequestRecord:
        """Read the request, its answer and what the handlers left on ``flask.g``."""
        size = g.get("image_size")
        timings = g.get("timings")
        return cls(
            request_id=g.get("request_id", ""),
            method=request.method,
            path=request.path,
            query=request.query_string.decode("latin-1"),
            endpoint=request.url_rule.rule if request.url_rule else UNMATCHED,
            status=response.status_code,
            error=g.get("error_code"),
            detail=g.get("error_detail"),
            bytes_in=(
                request.content_length
                if request.content_length is not None
                else g.get("body_bytes")
            ),
            bytes_out=response.content_length,
            width=size[0] if size else None,
            height=size[1] if size else None,
            # A stage that was never reached keeps its 0.0: leave it out rather than report it.
            stages={k: v for k, v in vars(timings).items() if v > 0} if timings is not None else {},
            total=time.monotonic() - g.get("started", time.monotonic()),
            remote_addr=client_address(request),
            model=g.get("model"),
        )

    @property
    def pixels(self) -> int | None:
        return self.width * self.height if self.width and self.height else None

    def log_line(self) -> str:
        """One JSON object on one line; json.dumps escapes newlines a caller might send."""
        line = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "request_id": self.request_id,
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "status": self.status,
            "error": self.error,
            "detail": self.detail,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "width": self.width,
            "height": self.height,
            "pixels": self.pixels,
            "model": self.model,
            **{f"{stage}_s": round(seconds, 4) for stage, seconds in self.stages.items()},
            "total_s": round(self.total, 4),
            "remote_addr": self.remote_addr,
            "pid": self.pid,
        }
        return json.dumps(line, separators=(",", ":"))


def client_address(request: Request) -> str | None:
    """The client's address: the peer's, or behind the front (gunicorn on its unix socket,
    where the peer has no address) the X-Real-IP that nginx sets, if it is an address."""
    if request.remote_addr:
        return request.remote_addr
    forwarded = request.headers.get("X-Real-IP", "")
    try:
        return str(ipaddress.ip_address(forwarded))
    except ValueError:
        return None


class Telemetry:
    """The service's Prometheus series, one set per app (per worker under gunicorn)."""

    def __init__(self, folders: dict[str, ModelFolder], precision: str):
        # In multiprocess mode the values live in the shared files, not in a registry: the
        # series are registered nowhere and /metrics reads the files instead.
        multiprocess = bool(os.environ.get(MULTIPROCESS_DIR_VARIABLE))
        if multiprocess and values.ValueClass is values.MutexValue:
            # Counts would stay in this process's memory and /metrics would show none.
            raise RuntimeError(
                f"{MULTIPROCESS_DIR_VARIABLE} was set after prometheus_client was imported"
            )
        self.registry = None if multiprocess else CollectorRegistry()
        registry = self.registry
        self.requests = Counter(
            "ssm_requests",
            "Requests answered, by route and HTTP status (scrapes of /metrics not counted).",
            ["endpoint", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "ssm_request_duration_seconds",
            "Time from the request's arrival in the app to its answer, by route.",
            ["endpoint"],
            buckets=SECONDS_BUCKETS,
            registry=registry,
        )
        self.stages = Histogram(
            "ssm_stage_duration_seconds",
            "Time of each completed stage of an upscale: decode, queue, inference, encode.",
            ["stage"],
            buckets=SECONDS_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "ssm_requests_in_flight",
            "Requests being handled now, summed over live workers (scrapes not counted).",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.pixels = Histogram(
            "ssm_input_pixels",
            "Pixels (width x height) of each decoded input image.",
            buckets=PIXEL_BUCKETS,
            registry=registry,
        )
        self.rejected = Counter(
            "ssm_rejected_requests",
            "Requests answered with an error, by the error code of the JSON body.",
            ["reason"],
            registry=registry,
        )
        self.upscales = Counter(
            "ssm_upscales",
            "Uploads decoded and given to a model, by the model (clean, photo or photo-low) "
            "and the HTTP status of their answer.",
            ["model", "status"],
            registry=registry,
        )
        model = Gauge(
            "ssm_model_info",
            "The models served (value 1): role (clean, photo, photo-low), folder name, trained "
            "parameter count, precision.",
            ["role", "name", "parameters", "precision"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        for role, folder in folders.items():
            count = folder.spec.get("parameter_count")
            name = folder.path.resolve().name
            model.labels(role, name, str(count or "unknown"), precision).set(1)

    def observe(self, record: RequestRecord) -> None:
        self.requests.labels(record.endpoint, str(record.status)).inc()
        self.latency.labels(record.endpoint).observe(record.total)
        if record.error:
            self.rejected.labels(record.error).inc()
        if record.pixels:
            self.pixels.observe(record.pixels)
        if record.model:
            self.upscales.labels(record.model, str(record.status)).inc()
        for stage, seconds in record.stages.items():
            self.stages.labels(stage).observe(seconds)

    def exposition(self) -> tuple[bytes, str]:
        """The Prometheus text format of every worker's series, and its content type."""
        registry = self.registry
        if registry is not None:
            return generate_latest(registry), CONTENT_TYPE_LATEST
        # A fresh registry per scrape, as prometheus_client's multiprocess mode requires.
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        with _folding_lock(Path(os.environ[MULTIPROCESS_DIR_VARIABLE]), fcntl.LOCK_SH):
            return generate_latest(registry), CONTENT_TYPE_LATEST


def fold_dead_worker(pid: int, directory: Path, wait: float = 2.0) -> bool:
    """Add a dead worker's counters, histograms and summaries into the dead workers' files.

    Its own files are then removed: the totals stay the same, and the directory keeps one
    file per type for all dead workers instead of a few for every worker that ever lived,
    each read by every scrape. Its gauges go as prometheus_client's ``mark_process_dead``
    has them go: the live ones (in-flight requests, model info) are removed, the others
    stay as they are, under the dead worker's pid.

    Returns False, leaving the counts where they were, if scrapes kept the directory
    busy for ``wait`` seconds: they count the same unfolded, and the caller, gunicorn's
    master, must not stall.
    """
    mark_process_dead(pid, str(directory))
    with _folding_lock(directory, fcntl.LOCK_EX, wait) as locked:
        if not locked:
            return False
        for kind in _ADDITIVE_TYPES:
            own = directory / f"{kind}_{pid}.db"
            if own.exists():
                _add_into(directory / f"{kind}_{_DEAD}.db", own)
                own.unlink()
    return True


def _add_into(total: Path, addition: Path) -> None:
    """Rewrite ``total`` as itself plus ``addition``, key by key, replacing it at once."""
    sums: dict[str, float] = {}
    for path in (total, addition):
        if path.exists():
            for key, value, _timestamp, _position in MmapedDict.read_all_values_from_file(
                str(path)
            ):
                sums[key] = sums.get(key, 0.0) + value
    # Not *.db, so that no scrape reads it before it is complete; MmapedDict would keep
    # the values of one left over by a master killed halfway.
    partial = total.with_name(f".{total.name}.partial")
    partial.unlink(missing_ok=True)
    written = MmapedDict(str(partial))
    try:
        for key, value in sums.items():
            written.write_value(key, value, 0.0)
    finally:
        written.close()
    os.replace(partial, total)


@contextmanager
def _folding_lock(directory: Path, operation: int, wait: float | None = None) -> Iterator[bool]:
    """flock on the directory's lock file, yielding whether it was taken.

    Without ``wait`` it waits as long as it takes (a fold takes milliseconds); with it,
    it gives up after that many seconds.
    """
    with open(directory / _LOCK_FILE, "a") as lock:
        give_up = None if wait is None else time.monotonic() + wait
        while True:
            try:
                fcntl.flock(lock, operation | (0 if give_up is None else fcntl.LOCK_NB))
                break
            except BlockingIOError:
                if time.monotonic() > give_up:
                    yield False
                    return
                time.sleep(0.01)
        try:
            yield True
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
