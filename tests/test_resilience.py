"""Holding up under load and abuse, with a real gunicorn: metrics added up over workers, a
dead worker, the request deadline with a slow network, a flood, and a graceful SIGTERM.

The unit-level halves live elsewhere: the waiting room in test_admission.py, 429/503 answers
through the test client in test_api.py, the metrics of one app in test_telemetry.py.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from io import BytesIO

import pytest
from PIL import Image
from prometheus_text import parse_samples, value

from benchmarks.gunicorn_server import Server, request, running_gunicorn
from benchmarks.imagefactory import gradient, png

pytestmark = pytest.mark.gunicorn  # gunicorn workers killed and restarted

UPSCALE = "/supersizeme/"
GIF = b"GIF89a" + bytes(100)


def picture(width: int, height: int) -> bytes:
    return png(Image.fromarray(gradient(width, height)))


def size_taking(port: int, seconds: float) -> tuple[int, int]:
    """A 4:3 size whose inference takes the worker about ``seconds`` alone, by the speed it
    measured at warm-up, so that a test holds on slow and fast hosts alike (within the cap
    in force)."""
    info = json.loads(request(port, "GET", "/supersizeme/model")[2])
    pixels = seconds / info["runtime"]["seconds_per_megapixel"] * 1e6
    pixels = min(pixels, info["limits"]["max_pixels"])
    width = int((pixels * 4 / 3) ** 0.5)
    return width, int(width * 3 / 4)


def scrape(port: int) -> dict[tuple[str, frozenset], float]:
    status, _, body = request(port, "GET", "/metrics")
    assert status == 200
    return parse_samples(body.decode())


def request_lines(log_text: str) -> list[dict]:
    """The app's JSON request lines among gunicorn's own log lines."""
    return [json.loads(line) for line in log_text.splitlines() if line.startswith("{")]


def wait_for(condition, seconds: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


# -- metrics across two workers ------------------------------------------------------------


@pytest.fixture(scope="module")
def two_workers(tiny_model_dir, tmp_path_factory):
    """Two workers on the tiny RDN, in an operator's metrics directory left dirty by an
    earlier run: a counter file of 1000 successes that must not leak into this run."""
    metrics_dir = tmp_path_factory.mktemp("metrics")
    subprocess.run(
        [
            sys.executable,
            "-c",
            "from prometheus_client import Counter; "
            "Counter('ssm_requests', 'old run', ['endpoint', 'status'])"
            ".labels('/supersizeme/', '200').inc(1000)",
        ],
        env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)},
        check=True,
    )
    assert list(metrics_dir.glob("counter_*.db"))
    log = tmp_path_factory.mktemp("gunicorn") / "server.log"
    env = {
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        # Room for a whole concurrent batch in one worker: no 429 in the known sequence.
        "SSM_GUNICORN_THREADS": "10",
        "SSM_MAX_WAITING": "8",
    }
    with running_gunicorn(tiny_model_dir, log, workers=2, env=env) as server:
        yield server


def expected_totals(ok: int, unsupported: int, corrupt: int) -> dict[tuple, float]:
    """Series and labels -> the value /metrics must show after these uploads."""
    totals = {
        ("ssm_requests_total", ("endpoint", UPSCALE), ("status", "200")): ok,
        ("ssm_requests_total", ("endpoint", UPSCALE), ("status", "415")): unsupported,
        ("ssm_requests_total", ("endpoint", UPSCALE), ("status", "422")): corrupt,
        ("ssm_rejected_requests_total", ("reason", "unsupported_media_type")): unsupported,
        ("ssm_rejected_requests_total", ("reason", "corrupt_image")): corrupt,
        ("ssm_stage_duration_seconds_count", ("stage", "inference")): ok,
        ("ssm_input_pixels_count",): ok,
        ("ssm_requests_in_flight",): 0,
    }
    return {(key[0], frozenset(key[1:])): count for key, count in totals.items()}


def observed(samples: dict, expected: dict) -> dict:
    return {key: samples.get(key, 0.0) for key in expected}


def pids_serving(server, path: str) -> set[int]:
    return {line["pid"] for line in request_lines(server.log_text()) if line["path"] == path}


@contextmanager
def only_worker(server, pid: int) -> Iterator[None]:
    """The other workers paused (SIGSTOP), so that every new connection goes to ``pid``.

    The kernel hands a shared listening socket's connections to whichever worker asks
    first, and one idle worker may well take them all; a paused one cannot ask.
    """
    others = server.worker_pids() - {pid}
    for other in others:
        os.kill(other, signal.SIGSTOP)
    try:
        yield
    finally:
        for other in others:
            os.kill(other, signal.SIGCONT)


def test_metrics_add_up_over_workers_and_survive_a_dead_worker(two_workers):
    server, port = two_workers, two_workers.port
    small = picture(40, 30)
    batch = [small] * 4 + [GIF] * 2 + [small[:60]] * 2
    workers = sorted(server.worker_pids())
    assert len(workers) == 2
    # One concurrent batch served by each worker, so that the totals below can only come
    # out right if /metrics adds the workers up.
    with ThreadPoolExecutor(len(batch)) as pool:
        for pid in workers:
            with only_worker(server, pid):
                statuses = list(
                    pool.map(lambda body: request(port, "POST", UPSCALE, body)[0], batch)
                )
            assert statuses == [200] * 4 + [415] * 2 + [422] * 2
    assert pids_serving(server, UPSCALE) == set(workers)
    expected = expected_totals(ok=4 * 2, unsupported=2 * 2, corrupt=2 * 2)

    # Each worker answers /metrics from the shared files: both must show the same totals.
    for pid in workers:
        with only_worker(server, pid):
            assert observed(scrape(port), expected) == expected
    assert pids_serving(server, "/metrics") == set(workers)
    samples = scrape(port)
    (model,) = [key for key in samples if key[0] == "ssm_model_info"]
    assert samples[model] == 1 and ("name", "rdn-C1-D1-G4-G04-x2") in model[1]

    # A request stuck mid-body is in flight; then both workers die at once (SIGKILL).
    stuck = socket.create_connection(("127.0.0.1", port), timeout=30)
    stuck.sendall(
        b"POST /supersizeme/ HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + small
    )
    wait_for(lambda: value(scrape(port), "ssm_requests_in_flight") == 1, what="in flight 1")
    old = server.worker_pids()
    for pid in old:
        os.kill(pid, signal.SIGKILL)
    stuck.close()

    def replaced() -> bool:
        pids = server.worker_pids()
        return len(pids) == 2 and not pids & old and request(port, "GET", "/readyz")[0] == 200

    wait_for(replaced, 120, "two new workers")
    # The dead workers' requests still count; their in-flight request does not linger.
    assert observed(scrape(port), expected) == expected


# -- a slow network: deadline and flood -----------------------------------------------------

DEADLINE = 3


@pytest.fixture(scope="module")
def slow_worker(shipped_model_dir, tmp_path_factory):
    """One worker with the shipped model (seconds per megapixel), a 3 s deadline, small
    tiles so that the deadline is checked often, and a waiting room of one."""
    log = tmp_path_factory.mktemp("gunicorn") / "server.log"
    env = {
        "SSM_DEADLINE_SECONDS": str(DEADLINE),
        "SSM_TILE": "128",
        "SSM_MAX_WAITING": "1",
        "SSM_GUNICORN_THREADS": "4",
        # Set, so that it is kept: left unset, the worker would lower it to what fits in
        # half of this short deadline, and the large upload below would get 422.
        "SSM_MAX_PIXELS": "8000000",
    }
    with running_gunicorn(shipped_model_dir, log, env=env) as server:
        yield server


def worker_pid(server: Server) -> int:
    (pid,) = server.worker_pids()
    return pid


def test_a_request_past_its_deadline_gets_503_and_frees_the_worker(slow_worker):
    port = slow_worker.port
    pid = worker_pid(slow_worker)
    # Four times the deadline's worth of inference, by the worker's own speed.
    width, height = size_taking(port, 4 * DEADLINE)
    started = time.monotonic()
    status, late_headers, body = request(port, "POST", UPSCALE, picture(width, height))
    elapsed = time.monotonic() - started
    assert status == 503 and json.loads(body)["error"] == "deadline_exceeded"
    assert int(late_headers["Retry-After"]) > 0
    # Ended by the app at its deadline (give or take a tile), not by gunicorn's timeout
    # (deadline + 30 s) and not by running to the end.
    assert elapsed < DEADLINE + 10, elapsed
    assert "WORKER TIMEOUT" not in slow_worker.log_text()

    status, headers, body = request(port, "POST", UPSCALE, picture(48, 32))
    assert status == 200 and Image.open(BytesIO(body)).size == (96, 64)
    assert worker_pid(slow_worker) == pid
    lines = {line["request_id"]: line for line in request_lines(slow_worker.log_text())}
    late, small = lines[late_headers["X-Request-ID"]], lines[headers["X-Request-ID"]]
    assert (late["status"], late["error"], late["pid"]) == (503, "deadline_exceeded", pid)
    assert "inference_s" not in late and late["pixels"] == width * height
    assert (small["status"], small["pid"]) == (200, pid)


def test_a_flood_gets_429s_while_health_checks_still_answer(slow_worker):
    port = slow_worker.port
    pid = worker_pid(slow_worker)
    upload = picture(*size_taking(port, 1.0))  # seconds per image on one stream
    flood = 12
    start = threading.Barrier(flood + 1)
    refused = threading.Event()
    answers: list[tuple[int, dict, float]] = []

    def send() -> None:
        start.wait()
        status, headers, _ = request(port, "POST", UPSCALE, upload)
        answers.append((status, headers, time.monotonic()))
        if status == 429:
            refused.set()

    threads = [threading.Thread(target=send) for _ in range(flood)]
    for thread in threads:
        thread.start()
    start.wait()
    assert refused.wait(60), "no upload was turned away"
    # The worker is saturated (one image running, one waiting, the rest refused): a health
    # check must still get through before the images are done.
    health, _, _ = request(port, "GET", "/healthz")
    health_answered = time.monotonic()
    for thread in threads:
        thread.join(120)

    statuses = sorted(status for status, _, _ in answers)
    assert len(statuses) == flood
    assert set(statuses) <= {200, 429, 503}, statuses
    assert statuses.count(200) >= 1 and statuses.count(429) >= 1, statuses
    assert all(headers.get("Retry-After") for status, headers, _ in answers if status != 200)
    assert health == 200
    assert health_answered < max(done for status, _, done in answers if status != 429)
    assert worker_pid(slow_worker) == pid
    assert "Traceback" not in slow_worker.log_text()


# -- graceful shutdown -----------------------------------------------------------------------


def test_sigterm_lets_requests_in_flight_finish_and_refuses_new_ones(shipped_model_dir, tmp_path):
    # Deadline 20 s, so gunicorn's graceful timeout is 30 s.
    env = {"SSM_DEADLINE_SECONDS": "20", "SSM_MAX_WAITING": "2"}
    with running_gunicorn(shipped_model_dir, tmp_path / "server.log", env=env) as server:
        port = server.port
        # Seconds each, so that all three are still in flight when the signal comes.
        width, height = size_taking(port, 3.0)
        upload = picture(width, height)
        with ThreadPoolExecutor(3) as pool:
            uploads = [pool.submit(request, port, "POST", UPSCALE, upload) for _ in range(3)]
            wait_for(lambda: value(scrape(port), "ssm_requests_in_flight") == 3, what="3 uploads")
            stopped = time.monotonic()
            server.process.send_signal(signal.SIGTERM)

            def refused() -> bool:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=5).close()
                except ConnectionRefusedError:
                    return True
                return False

            wait_for(refused, 10, "connections to be refused")
            # Refused while the uploads still run, not only once the worker has gone.
            assert not all(upload.done() for upload in uploads)
            answers = [upload.result() for upload in uploads]
        assert server.process.wait(timeout=40) == 0
        took = time.monotonic() - stopped
    assert [status for status, _, _ in answers] == [200, 200, 200]
    assert all(Image.open(BytesIO(body)).size == (2 * width, 2 * height) for _, _, body in answers)
    assert took < 30, took  # within the graceful timeout: nobody was killed
    log = server.log_text()
    assert "WORKER TIMEOUT" not in log and "SIGKILL" not in log
