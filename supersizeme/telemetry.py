"""What the service tells its operators: Prometheus metrics and one JSON log line per request.

Under gunicorn every worker is its own process, so a counter kept in memory would show only
the worker that happened to answer the scrape. With ``PROMETHEUS_MULTIPROC_DIR`` set (as
gunicorn.conf.py does before forking) prometheus_client writes each process's values to
files in that directory and ``/metrics`` sums them over all workers, the dead ones included,
so that totals survive worker restarts. Without it (the Flask test client, a bare
``create_app``) each app keeps its own registry in memory.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

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
from prometheus_client.multiprocess import MultiProcessCollector

from supersizeme.modelspec import ModelFolder

MULTIPROCESS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"

# Health checks and refusals take milliseconds; an image at the pixel cap takes about 27 s on
# one core and the deadline is 60 s by default, so the buckets reach past a minute.
SECONDS_BUCKETS = (0.005, 0.025, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 45, 60, 90)
# From thumbnails to above the default 2 MP cap (an operator may raise it).
PIXEL_BUCKETS = (16_384, 65_536, 262_144, 500_000, 1_000_000, 1_500_000, 2_000_000, 4_000_000)

# Requests that matched no route (404, 405) share one label: a scanner trying thousands of
# paths must not create thousands of series.
UNMATCHED = "unmatched"


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
            remote_addr=request.remote_addr,
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
            **{f"{stage}_s": round(seconds, 4) for stage, seconds in self.stages.items()},
            "total_s": round(self.total, 4),
            "remote_addr": self.remote_addr,
            "pid": self.pid,
        }
        return json.dumps(line, separators=(",", ":"))


class Telemetry:
    """The service's Prometheus series, one set per app (per worker under gunicorn)."""

    def __init__(self, folder: ModelFolder, precision: str):
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
        model = Gauge(
            "ssm_model_info",
            "The model served (value 1): name, trained parameter count, precision.",
            ["name", "parameters", "precision"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        count = folder.spec.get("parameter_count")
        model.labels(folder.params.name, str(count or "unknown"), precision).set(1)

    def observe(self, record: RequestRecord) -> None:
        self.requests.labels(record.endpoint, str(record.status)).inc()
        self.latency.labels(record.endpoint).observe(record.total)
        if record.error:
            self.rejected.labels(record.error).inc()
        if record.pixels:
            self.pixels.observe(record.pixels)
        for stage, seconds in record.stages.items():
            self.stages.labels(stage).observe(seconds)

    def exposition(self) -> tuple[bytes, str]:
        """The Prometheus text format of every worker's series, and its content type."""
        registry = self.registry
        if registry is None:
            # A fresh registry per scrape, as prometheus_client's multiprocess mode requires.
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
