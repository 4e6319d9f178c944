"""Metrics and request log lines of supersizeme/service/telemetry.py, through the Flask test client.

The multiprocess side (several gunicorn workers adding up) is in test_resilience.py.
"""

from __future__ import annotations

import fcntl
import io
import json
import logging
import os
import subprocess
import sys
import threading
import time

import pytest
from PIL import Image
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_text import parse_samples, value

from benchmarks.imagefactory import gradient, png
from supersizeme.service import telemetry
from supersizeme.service.admission import InferenceGate
from supersizeme.service.tiling import Stop

SMALL = png(Image.fromarray(gradient(40, 30)))
GIF = b"GIF89a" + bytes(100)
CORRUPT = SMALL[:60]


def scrape(client) -> dict[tuple[str, frozenset], float]:
    """Every sample of /metrics, keyed by its name and its labels."""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    return parse_samples(response.get_data(as_text=True))


def post(client, data: bytes, query: str = ""):
    return client.post(f"/supersizeme/{query}", data=data, content_type="image/png")


def test_a_known_sequence_gives_exact_counts(app, client):
    for _ in range(3):
        assert post(client, SMALL).status_code == 200
    for _ in range(2):
        assert post(client, GIF).status_code == 415
    assert post(client, CORRUPT).status_code == 422
    assert client.get("/nope").status_code == 404
    app.config["DEADLINE_SECONDS"] = 0.0
    assert post(client, SMALL).status_code == 503  # decoded, then out of time
    app.config["DEADLINE_SECONDS"] = 60.0
    scrape(client)  # scrapes count nowhere

    samples = scrape(client)
    upscale = "/supersizeme/"
    assert value(samples, "ssm_requests_total", endpoint=upscale, status="200") == 3
    assert value(samples, "ssm_requests_total", endpoint=upscale, status="415") == 2
    assert value(samples, "ssm_requests_total", endpoint=upscale, status="422") == 1
    assert value(samples, "ssm_requests_total", endpoint=upscale, status="503") == 1
    assert value(samples, "ssm_requests_total", endpoint="unmatched", status="404") == 1
    assert not [key for key in samples if ("endpoint", "/metrics") in key[1]]

    assert value(samples, "ssm_rejected_requests_total", reason="unsupported_media_type") == 2
    assert value(samples, "ssm_rejected_requests_total", reason="corrupt_image") == 1
    assert value(samples, "ssm_rejected_requests_total", reason="deadline_exceeded") == 1
    assert value(samples, "ssm_rejected_requests_total", reason="not_found") == 1

    assert value(samples, "ssm_request_duration_seconds_count", endpoint=upscale) == 7
    # Four images were decoded; only the three that finished were run and encoded.
    assert value(samples, "ssm_stage_duration_seconds_count", stage="decode") == 4
    # All four got their inference turn at once (a queue time, however short).
    assert value(samples, "ssm_stage_duration_seconds_count", stage="queue") == 4
    assert value(samples, "ssm_stage_duration_seconds_count", stage="inference") == 3
    assert value(samples, "ssm_stage_duration_seconds_count", stage="encode") == 3
    assert value(samples, "ssm_input_pixels_count") == 4
    assert value(samples, "ssm_input_pixels_sum") == 4 * 40 * 30
    # 1200 pixels fall under the first bound.
    assert value(samples, "ssm_input_pixels_bucket", le="16384.0") == 4

    assert value(samples, "ssm_requests_in_flight") == 0
    model = {"name": "rdn-C1-D1-G4-G04-x2", "parameters": "unknown", "precision": "float32"}
    assert value(samples, "ssm_model_info", role="clean", **model) == 1
    photo = {**model, "name": "rdn-C1-D1-G4-G04-x2-jpeg"}
    assert value(samples, "ssm_model_info", role="photo", **photo) == 1


def test_each_app_counts_on_its_own(app, client, tiny_model_dir):
    from supersizeme.service.app import create_app

    assert post(client, SMALL).status_code == 200
    other = create_app(
        {"TESTING": True, "MODEL_DIR": str(tiny_model_dir), "PHOTO_MODEL_DIR": None}
    ).test_client()
    samples = scrape(other)
    assert value(samples, "ssm_requests_total", endpoint="/supersizeme/", status="200") == 0


def test_a_waiting_upload_is_in_flight_and_logs_its_queue_time(app, client, caplog):
    caplog.set_level(logging.INFO, logger="supersizeme.requests")
    gate = InferenceGate(max_waiting=1)
    app.extensions["supersizeme.gate"] = gate
    statuses = []
    with gate.turn(Stop(deadline=time.monotonic() + 30)):
        waiter = threading.Thread(target=lambda: statuses.append(post(client, SMALL).status_code))
        waiter.start()
        for _ in range(200):
            if value(scrape(client), "ssm_requests_in_flight") == 1:
                break
            time.sleep(0.05)
        assert value(scrape(client), "ssm_requests_in_flight") == 1
        time.sleep(0.3)  # the upload decodes in a millisecond, then waits for its turn
    waiter.join(30)
    assert statuses == [200]
    assert value(scrape(client), "ssm_requests_in_flight") == 0
    (line,) = [line for line in request_lines(caplog) if line["path"] == "/supersizeme/"]
    assert 0.2 < line["queue_s"] < line["total_s"]


def request_lines(caplog) -> list[dict]:
    lines = [r for r in caplog.records if r.name == "supersizeme.requests"]
    assert all("\n" not in r.getMessage() for r in lines)
    return [json.loads(r.getMessage()) for r in lines]


def test_one_json_line_per_request_with_its_fields(client, caplog):
    caplog.set_level(logging.INFO, logger="supersizeme.requests")
    ok = post(client, SMALL, "?scale=2")
    refused = post(client, CORRUPT)
    health = client.get("/healthz")

    first, second, third = request_lines(caplog)
    assert first["request_id"] == ok.headers["X-Request-ID"]
    assert (first["method"], first["path"], first["query"]) == ("POST", "/supersizeme/", "scale=2")
    assert first["status"] == 200 and first["error"] is None
    assert first["bytes_in"] == len(SMALL) and first["bytes_out"] == len(ok.data)
    assert (first["width"], first["height"], first["pixels"]) == (40, 30, 1200)
    stages = [first[key] for key in ("decode_s", "inference_s", "encode_s")]
    assert all(seconds > 0 for seconds in stages)
    assert first["total_s"] >= sum(stages) - 0.001  # each is rounded to 0.1 ms
    assert first["pid"] == os.getpid()

    assert second["request_id"] == refused.headers["X-Request-ID"]
    assert second["status"] == 422 and second["error"] == "corrupt_image"
    assert second["detail"]  # the decoder's complaint, kept out of the answer
    assert second["detail"] not in refused.get_data(as_text=True)
    assert second["width"] is None and "inference_s" not in second

    assert third["path"] == "/healthz" and third["status"] == 200
    assert third["bytes_out"] == len(health.data)


@pytest.mark.parametrize(
    ("peer", "real_ip", "logged"),
    [
        ("", "203.0.113.7", "203.0.113.7"),  # behind the front, on the unix socket
        ("", "not an address", None),
        ("198.51.100.2", "203.0.113.7", "198.51.100.2"),  # a direct peer is not overruled
    ],
)
def test_the_client_address_comes_from_the_front_only(client, caplog, peer, real_ip, logged):
    caplog.set_level(logging.INFO, logger="supersizeme.requests")
    client.get("/healthz", headers={"X-Real-IP": real_ip}, environ_overrides={"REMOTE_ADDR": peer})
    (line,) = request_lines(caplog)
    assert line["remote_addr"] == logged


def test_a_chunked_upload_logs_the_bytes_that_arrived(client, caplog):
    caplog.set_level(logging.INFO, logger="supersizeme.requests")
    response = client.post(
        "/supersizeme/",
        input_stream=io.BytesIO(SMALL),
        headers={"Transfer-Encoding": "chunked", "Content-Type": "image/png"},
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert response.status_code == 200
    (line,) = request_lines(caplog)
    assert line["bytes_in"] == len(SMALL)


def test_a_hostile_path_stays_on_one_line(client, caplog):
    caplog.set_level(logging.INFO, logger="supersizeme.requests")
    client.get("/x%0A{%22status%22:200}")
    (line,) = request_lines(caplog)
    assert line["path"] == '/x\n{"status":200}' and line["status"] == 404


# -- the metric files of dead workers --------------------------------------------------------

# A worker in miniature: one series of each kind, ``requests`` counted, then it exits.
FAKE_WORKER = """
import os, sys
from prometheus_client import Counter, Gauge, Histogram, Summary
requests = int(sys.argv[1])
Counter("ssm_requests", "answered", ["status"]).labels("200").inc(requests)
Histogram("ssm_seconds", "time", buckets=(1, 10)).observe(requests)
Summary("ssm_pixels", "pixels").observe(requests)
Gauge("ssm_in_flight", "now", multiprocess_mode="livesum").set(1)
if "all" in sys.argv:
    Gauge("ssm_last", "last seen", multiprocess_mode="all").set(requests)
print(os.getpid())
"""


def fake_worker(directory, requests: int, *options: str) -> int:
    """The pid of a process that counted ``requests`` in ``directory``'s files and exited."""
    completed = subprocess.run(
        [sys.executable, "-c", FAKE_WORKER, str(requests), *options],
        env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return int(completed.stdout)


def merged(directory) -> dict[tuple[str, frozenset], float]:
    """What /metrics shows for ``directory``, read as a worker's scrape reads it."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))
    return parse_samples(generate_latest(registry).decode())


def test_a_dead_worker_s_counts_stay_in_the_totals_but_not_in_its_files(tmp_path):
    alive = fake_worker(tmp_path, 5)
    dead = fake_worker(tmp_path, 3, "all")
    assert telemetry.fold_dead_worker(dead, tmp_path)

    samples = merged(tmp_path)
    assert value(samples, "ssm_requests_total", status="200") == 3 + 5
    assert value(samples, "ssm_seconds_count") == 2 and value(samples, "ssm_seconds_sum") == 8
    assert value(samples, "ssm_seconds_bucket", le="1.0") == 0
    assert value(samples, "ssm_seconds_bucket", le="10.0") == 2
    assert value(samples, "ssm_pixels_count") == 2 and value(samples, "ssm_pixels_sum") == 8
    # Gauges as prometheus_client's mark_process_dead leaves them: a live-sum loses the
    # dead worker, an "all" gauge keeps its last value under its pid.
    assert value(samples, "ssm_in_flight") == 1
    assert value(samples, "ssm_last", pid=str(dead)) == 3
    left = sorted(path.name for path in tmp_path.glob(f"*_{dead}.db"))
    assert left == [f"gauge_all_{dead}.db"]
    assert (tmp_path / f"counter_{alive}.db").exists()


def test_the_files_do_not_grow_with_the_number_of_dead_workers(tmp_path):
    fake_worker(tmp_path, 5)  # alive throughout
    assert telemetry.fold_dead_worker(fake_worker(tmp_path, 1), tmp_path)
    files = sorted(path.name for path in tmp_path.glob("*.db"))
    assert "counter_dead.db" in files and len(files) == 7  # 4 of the live worker's, 3 sums
    for requests in range(2, 11):
        assert telemetry.fold_dead_worker(fake_worker(tmp_path, requests), tmp_path)
        assert sorted(path.name for path in tmp_path.glob("*.db")) == files
    samples = merged(tmp_path)
    assert value(samples, "ssm_requests_total", status="200") == 5 + sum(range(1, 11))
    assert value(samples, "ssm_seconds_count") == 11
    assert value(samples, "ssm_in_flight") == 1


def test_a_fold_waits_for_scrapes_and_gives_up_rather_than_stall_the_master(tmp_path):
    dead = fake_worker(tmp_path, 3)
    with telemetry._folding_lock(tmp_path, fcntl.LOCK_SH):  # a scrape under way
        started = time.monotonic()
        assert not telemetry.fold_dead_worker(dead, tmp_path, wait=0.2)
        assert 0.2 <= time.monotonic() - started < 5
    assert (tmp_path / f"counter_{dead}.db").exists()
    assert value(merged(tmp_path), "ssm_requests_total", status="200") == 3
    assert value(merged(tmp_path), "ssm_in_flight") == 0  # live gauges go at once

    with telemetry._folding_lock(tmp_path, fcntl.LOCK_SH):
        folding = threading.Thread(target=telemetry.fold_dead_worker, args=(dead, tmp_path))
        folding.start()
        time.sleep(0.3)
        assert folding.is_alive() and (tmp_path / f"counter_{dead}.db").exists()
    folding.join(10)
    assert not (tmp_path / f"counter_{dead}.db").exists()
    assert value(merged(tmp_path), "ssm_requests_total", status="200") == 3
