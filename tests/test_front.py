"""Slow clients against the service as `make serve` runs it (nginx in front of gunicorn,
started by front/serve.py) and against gunicorn alone; the front's refusals; gunicorn's own
(supersizeme/service/worker.py) and what it counts towards recycling; the launcher's life cycle.

Every slow client here is bounded in time and in connections, and talks to loopback only.
The app's upload time limit, which ends slow bodies sent straight to gunicorn, has its own
tests in test_slow_clients.py.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import select
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

import pytest
from PIL import Image

from benchmarks.gunicorn_server import (
    front_command,
    request,
    running_front,
    running_gunicorn,
    worker_pids,
)
from benchmarks.imagefactory import gradient, png
from front.serve import TEMPLATE, FrontSettings, find_nginx, nginx_config
from supersizeme.service.config import MAX_BODY_BYTES, MULTIPART_OVERHEAD_BYTES, REPO_ROOT

UPSCALE = "/supersizeme/"
HEADER_TRICKLERS, BODY_TRICKLERS = 24, 8
GAP = 2.0  # seconds between two bytes of a slow client
BODY_BYTES = 4 * 1024 * 1024
ATTACK_SECONDS = 30
HEADER_TIMEOUT = 5  # seconds: the front's header limit in these tests
MAX_UPLOADS = 12  # the front's upload slots in these tests: more than the body tricklers
# A request line and the start of a header that never ends, and a request whose 4 MiB body
# never arrives: what a slow client sends at once before trickling the rest.
SLOW_HEADERS = b"GET /healthz HTTP/1.1\r\nHost: slow\r\nX-Slow: "
SLOW_BODY = (
    f"POST {UPSCALE} HTTP/1.1\r\nHost: slow\r\nContent-Type: image/png\r\n"
    f"Content-Length: {BODY_BYTES}\r\n\r\n"
).encode()

pytestmark = pytest.mark.gunicorn  # nginx and gunicorn processes


def nginx_or_skip() -> None:
    try:
        find_nginx()
    except SystemExit as missing:
        if os.environ.get("CI"):
            pytest.fail(str(missing))
        pytest.skip(str(missing))


def picture(width: int, height: int) -> bytes:
    return png(Image.fromarray(gradient(width, height)))


def request_lines(log_text: str) -> list[dict]:
    """The JSON request lines (the app's, and the front's with "front": true)."""
    return [json.loads(line) for line in log_text.splitlines() if line.startswith("{")]


def parse_answer(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of one HTTP/1.1 answer read off a socket."""
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in header_lines)
    return int(status_line.split()[1]), headers, body


def assert_json_error(body: bytes, code: str) -> dict:
    error = json.loads(body)
    assert error["error"] == code, error
    assert error["message"] and re.fullmatch(r"[A-Za-z0-9._:-]{1,128}", error["request_id"])
    return error


@dataclass
class Cutoff:
    lasted: float  # seconds from connecting to the end of the connection
    answer: bytes  # what came back before it ended: b"" for nothing


@dataclass
class SlowClient:
    """Sends ``head`` at once, then a byte every GAP seconds, until ``until``; reading all
    the while. A connection the server ends is recorded, and replaced if ``reconnect``."""

    port: int
    head: bytes
    until: float
    reconnect: bool
    cutoffs: list[Cutoff] = field(default_factory=list)
    connections: int = 0

    def run(self) -> None:
        while time.monotonic() < self.until and self.connections < ATTACK_SECONDS:
            self.connections += 1
            cutoff = self.one_connection()
            if cutoff is None:
                return
            self.cutoffs.append(cutoff)
            if not self.reconnect:
                return

    def one_connection(self) -> Cutoff | None:
        """How the connection ended, or None if it was still open at ``until``."""
        started, answer = time.monotonic(), b""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
                sock.sendall(self.head)
                while time.monotonic() < self.until:
                    if select.select([sock], [], [], GAP)[0]:
                        chunk = sock.recv(65536)
                        if not chunk:
                            break
                        answer += chunk
                    else:
                        sock.sendall(b"a")
                else:
                    return None
        except OSError:
            pass  # reset by the server
        return Cutoff(time.monotonic() - started, answer)


def attack(port: int, until: float, reconnect: bool) -> tuple[list[SlowClient], list]:
    clients = [SlowClient(port, SLOW_HEADERS, until, reconnect) for _ in range(HEADER_TRICKLERS)]
    clients += [SlowClient(port, SLOW_BODY, until, reconnect) for _ in range(BODY_TRICKLERS)]
    threads = [threading.Thread(target=client.run, daemon=True) for client in clients]
    for thread in threads:
        thread.start()
    return clients, threads


def health_check(port: int, timeout: float) -> tuple[int | None, float]:
    started = time.monotonic()
    try:
        status = request(port, "GET", "/healthz", timeout=timeout)[0]
    except OSError:
        status = None
    return status, time.monotonic() - started


def upload_size(port: int, upload: bytes) -> tuple[int | None, tuple[int, int] | None]:
    try:
        status, _, body = request(port, "POST", UPSCALE, upload, timeout=15)
    except OSError:
        return None, None
    return status, Image.open(BytesIO(body)).size if status == 200 else None


# -- the service as `make serve` runs it ------------------------------------------------------


@pytest.fixture(scope="module")
def front(tiny_model_dir, tmp_path_factory):
    """The launcher with the tiny model: one worker asked for four request threads, as few
    as an early report of starvation had, which the launcher raises to one per upload slot
    and some to spare."""
    nginx_or_skip()
    log = tmp_path_factory.mktemp("front") / "server.log"
    env = {
        "SSM_GUNICORN_THREADS": "4",
        "SSM_MAX_WAITING": "2",
        "SSM_HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT),
        "SSM_FRONT_MAX_UPLOADS": str(MAX_UPLOADS),
        # Every slow client here comes from 127.0.0.1; the share of one address has its
        # own test (test_front_defaults.py).
        "SSM_FRONT_MAX_UPLOADS_PER_CLIENT": str(MAX_UPLOADS),
    }
    with running_front(tiny_model_dir, log, env=env) as server:
        yield server


def test_behind_the_front_slow_clients_starve_nothing(front):
    port, upload = front.port, picture(48, 32)
    until = time.monotonic() + ATTACK_SECONDS
    clients, threads = attack(port, until, reconnect=True)
    time.sleep(1)  # every slow client connected and sending

    checks, uploads = [], []
    upload_at = [until - ATTACK_SECONDS + offset for offset in (5, 15, 25)]
    while time.monotonic() < until and len(checks) < 100:
        checks.append(health_check(port, timeout=1))
        if upload_at and time.monotonic() >= upload_at[0]:
            upload_at.pop(0)
            uploads.append(upload_size(port, upload))
        time.sleep(0.5)
    for thread in threads:
        thread.join(GAP + 15)
    assert not any(thread.is_alive() for thread in threads)

    assert len(checks) >= 20
    late = [(status, round(took, 2)) for status, took in checks if status != 200 or took >= 1]
    assert not late, f"{len(late)} of {len(checks)} health checks late or failed: {late}"
    assert uploads == [(200, (96, 64))] * 3

    # The attack was real: nginx cut every header trickler off at its header limit, without
    # an answer, and each came back for more.
    header_clients, body_clients = clients[:HEADER_TRICKLERS], clients[HEADER_TRICKLERS:]
    for client in header_clients:
        assert client.cutoffs
        for cutoff in client.cutoffs:
            assert HEADER_TIMEOUT - 0.5 < cutoff.lasted < HEADER_TIMEOUT + GAP + 1, cutoff
            assert cutoff.answer == b""
    # A byte every 2 s is no 15 s stall, and 30 s is within the upload limit: the slow
    # bodies held their upload slots and a request thread each all along, and the uploads
    # and health checks had threads of their own.
    for client in body_clients:
        assert (client.connections, client.cutoffs) == (1, [])
    lines = request_lines(front.log_text())
    served = [line for line in lines if line["path"] == UPSCALE and line["status"] == 200]
    assert len(served) == 3
    cut = [line for line in lines if line.get("front") and line["status"] == 408]
    assert len(cut) >= sum(len(client.cutoffs) for client in header_clients)


def test_the_fronts_refusals_are_json_errors(front):
    port = front.port
    limit = MAX_BODY_BYTES + MULTIPART_OVERHEAD_BYTES

    # A body over the front's limit: refused by nginx, in the app's words for its own 413
    # (a raw body just over 5 MiB passes nginx's multipart allowance and meets the app's).
    status, headers, body = request(
        port, "POST", UPSCALE, bytes(limit + 1), headers={"X-Request-ID": "front-413"}
    )
    assert status == 413 and headers["Content-Type"] == "application/json"
    assert headers["X-Request-ID"] == "front-413"
    front_error = assert_json_error(body, "payload_too_large")
    assert front_error["request_id"] == "front-413"
    status, headers, body = request(port, "POST", UPSCALE, bytes(MAX_BODY_BYTES + 1))
    app_error = assert_json_error(body, "payload_too_large")
    assert status == 413 and front_error["message"] == app_error["message"]
    assert headers["X-Request-ID"] == app_error["request_id"]

    # The same limit for a chunked body, which announces no length.
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        chunks = (bytes(1024 * 1024) for _ in range(limit // (1024 * 1024) + 1))
        connection.request("POST", UPSCALE, body=chunks, encode_chunked=True)
        answer = connection.getresponse()
        assert answer.status == 413
        assert_json_error(answer.read(), "payload_too_large")
    finally:
        connection.close()

    # Requests nginx cannot take, each answered by nginx, in JSON.
    for raw, status, code in [
        (b"GARBAGE\r\n\r\n", 400, "bad_request"),
        (b"GET /healthz HTTP/1.1\r\n\r\n", 400, "bad_request"),  # no Host
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 431,
         "request_header_fields_too_large"),
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "request_uri_too_large"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501,
         "not_implemented"),
    ]:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(raw)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        got, headers, body = parse_answer(answer)
        assert (got, headers["Content-Type"]) == (status, "application/json"), answer[:200]
        assert headers["X-Request-ID"] == assert_json_error(body, code)["request_id"]

    # A client trickling its headers is cut off at the header limit, with no answer (nginx
    # gives a timed-out request none).
    client = SlowClient(port, SLOW_HEADERS, time.monotonic() + HEADER_TIMEOUT + 10, False)
    client.run()
    (cutoff,) = client.cutoffs
    assert HEADER_TIMEOUT - 0.5 < cutoff.lasted < HEADER_TIMEOUT + GAP + 1
    assert cutoff.answer == b""


def test_the_front_turns_away_uploads_beyond_its_slots_but_not_health_checks(front):
    port = front.port
    held = []
    try:
        for _ in range(MAX_UPLOADS):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            held.append(sock)
            sock.sendall(SLOW_BODY)
        time.sleep(1)  # nginx has read every header and counts every slot
        status, headers, body = request(port, "POST", UPSCALE, picture(48, 32))
        assert status == 429 and int(headers["Retry-After"]) > 0
        assert_json_error(body, "overloaded")
        assert health_check(port, timeout=1)[0] == 200
    finally:
        for sock in held:
            sock.close()
    # The slots free as soon as their clients go.
    deadline = time.monotonic() + 10
    while upload_size(port, picture(48, 32))[0] != 200:
        assert time.monotonic() < deadline, "the upload slots did not free up"
        time.sleep(0.2)


def test_request_ids_pass_through_the_front(front):
    status, headers, _ = request(
        front.port, "POST", UPSCALE, picture(40, 30), headers={"X-Request-ID": "trace-7.a"}
    )
    assert status == 200 and headers["X-Request-ID"] == "trace-7.a"
    assert any(
        line["request_id"] == "trace-7.a" and line["status"] == 200 and not line.get("front")
        for line in request_lines(front.log_text())
    )
    # One the app would not echo is replaced, by the front, before the app sees it.
    status, headers, _ = request(front.port, "GET", "/healthz", headers={"X-Request-ID": "a b"})
    assert status == 200 and re.fullmatch(r"[0-9a-f]{32}", headers["X-Request-ID"])


def test_every_refusal_in_the_config_is_a_json_error_and_nginx_accepts_it(tmp_path):
    nginx_or_skip()
    front = FrontSettings.from_environment()
    config = nginx_config(front, tmp_path, tmp_path / "gunicorn.sock")
    statuses = set()
    for codes, replaced, uri in re.findall(r"error_page ([\d ]+?) (?:=(\d+) )?(\S+);", config):
        assert uri == "/.front-error"
        statuses |= {int(replaced)} if replaced else {int(code) for code in codes.split()}
    assert statuses >= {400, 405, 408, 413, 414, 429, 431, 500, 501, 502, 503, 504, 505}
    location = re.search(r"location = /.front-error \{(.*?)\n        \}", config, re.DOTALL)
    template = re.search(r"return 200 '(.*)';", location.group(1)).group(1)
    for status in statuses:
        # What nginx's maps give for this status, put into the error's template.
        code = map_value(config, "ssm_error", status)
        message = map_value(config, "ssm_error_message", status)
        filled = (
            template.replace("$ssm_error_message", message)
            .replace("$ssm_error", code)
            .replace("$ssm_request_id", "r1")
            .replace("\\n", "")
        )
        error = json.loads(filled)
        assert error["error"] and error["message"] != "The request was refused.", status
        assert set(error) == {"error", "message", "request_id"} and error["request_id"] == "r1"
    assert "add_header X-Request-ID $ssm_request_id always;" in location.group(1)
    assert "add_header X-Content-Type-Options nosniff always;" in location.group(1)
    # The template's placeholders are all filled, and nginx takes the result.
    assert re.search(r"\{\{\w+\}\}", TEMPLATE.read_text())
    assert not re.search(r"\{\{\w+\}\}", config)
    (tmp_path / "nginx.conf").write_text(config)
    checked = subprocess.run(
        [find_nginx(), "-e", "stderr", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"),
         "-t", "-q"],
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stderr


def map_value(config: str, name: str, status: int) -> str:
    block = re.search(r"map \$status \$" + name + r" \{(.*?)\n    \}", config, re.DOTALL)
    values = dict(re.findall(r"^\s*(\w+) (.*);$", block.group(1), re.MULTILINE))
    return values.get(str(status), values["default"]).strip('"')


# -- gunicorn alone ---------------------------------------------------------------------------


def test_without_the_front_the_header_budget_ends_the_starvation(tiny_model_dir, tmp_path):
    """The same 32 slow clients straight at gunicorn, without reconnecting. Its request
    threads read headers and bodies themselves, so while the slow clients hold all four a
    health check waits: gunicorn alone cannot answer every check within 1 s, which is why
    the front exists. What its own limits guarantee: each slow client holds a thread for
    the header budget (2 s here) or the upload limit (4 s here) at most, so the starvation
    ends, every slow client gets a JSON 408, and the service is whole again."""
    env = {
        "SSM_GUNICORN_THREADS": "4",
        "SSM_MAX_WAITING": "2",
        "SSM_HEADER_TIMEOUT_SECONDS": "2",
        "SSM_UPLOAD_SECONDS": "4",
    }
    with running_gunicorn(tiny_model_dir, tmp_path / "server.log", env=env) as server:
        port = server.port
        until = time.monotonic() + 40
        clients, threads = attack(port, until, reconnect=False)
        time.sleep(1)  # the slow clients are first in line for the threads
        status, starved = health_check(port, timeout=40)
        for thread in threads:
            thread.join(max(1, until - time.monotonic()) + GAP + 5)
        assert not any(thread.is_alive() for thread in threads)

        # 24 x 2 s + 8 x 4 s of reading, on four threads: about 20 s before a check is
        # answered; far more than 1 s, and over well before the slow clients would stop.
        assert status == 200 and 1 < starved < 35, starved
        errors = []
        for client in clients:
            (cutoff,) = client.cutoffs
            got, headers, body = parse_answer(cutoff.answer)
            assert got == 408 and headers["Content-Type"] == "application/json", cutoff
            errors.append(json.loads(body))
        assert all(set(error) >= {"error", "message", "request_id"} for error in errors)
        # The worker's own 408 for the headers; the app's (upload_timeout) for the bodies.
        assert {error["error"] for error in errors[:HEADER_TRICKLERS]} == {"request_timeout"}
        assert all(health_check(port, timeout=1)[0] == 200 for _ in range(5))
        assert upload_size(port, picture(48, 32)) == (200, (96, 64))


# -- gunicorn's own refusals, and what it counts towards recycling ---------------------------


def exchange(port: int, raw: bytes) -> bytes:
    """Send ``raw`` and read until the server closes (bounded by the socket's timeout)."""
    answer = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(raw)
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def test_gunicorn_refuses_in_json_and_recycles_for_uploads_only(tiny_model_dir, tmp_path):
    # max_requests 3 (no jitter at that size): stock gthread would have recycled the worker
    # on the start-up readiness polls alone.
    env = {"SSM_MAX_REQUESTS": "3", "SSM_HEADER_TIMEOUT_SECONDS": "2"}
    with running_gunicorn(tiny_model_dir, tmp_path / "server.log", env=env) as server:
        port = server.port
        for raw, status, code in [
            (b"GARBAGE\r\n\r\n", 400, "bad_request"),
            (b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414,
             "request_uri_too_large"),
            (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-A: b\r\n" * 120 + b"\r\n", 431,
             "request_header_fields_too_large"),
            (b"GET /healthz HTTP/1.1\r\nHost: x\r\nExpect: x\r\n\r\n", 417,
             "expectation_failed"),
            # The header budget: a request line that stops halfway.
            (b"GET /heal", 408, "request_timeout"),
        ]:
            got, headers, body = parse_answer(exchange(port, raw))
            assert (got, headers["Content-Type"]) == (status, "application/json"), raw[:40]
            assert headers["X-Request-ID"] == assert_json_error(body, code)["request_id"]
        assert "Traceback" not in server.log_text()

        (worker,) = server.worker_pids()
        for path in ["/healthz", "/readyz", "/metrics", "/supersizeme/model"] * 3:
            assert request(port, "GET", path)[0] == 200
        assert server.worker_pids() == {worker}
        for _ in range(3):
            assert upload_size(port, picture(40, 30)) == (200, (80, 60))
        deadline = time.monotonic() + 90
        while server.worker_pids() in ({worker}, set()):
            assert time.monotonic() < deadline, "the worker was not recycled after 3 uploads"
            time.sleep(0.2)


# -- the launcher -----------------------------------------------------------------------------


def children_by_name(launcher: int) -> dict[str, int]:
    """The launcher's two children: gunicorn's master and nginx's."""
    named = {}
    for pid in worker_pids(launcher):
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        named["nginx" if "nginx" in command else "gunicorn"] = pid
    return named


def gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists()


def test_sigterm_stops_gunicorn_and_nginx_and_cleans_up(tiny_model_dir, tmp_path):
    nginx_or_skip()
    # Short: the unix socket's whole path must fit in 107 bytes, and pytest's are long.
    scratch = Path(tempfile.mkdtemp(prefix="ssm-"))
    env = {"SSM_FRONT_TEMP_DIR": str(scratch)}
    with running_front(tiny_model_dir, tmp_path / "server.log", env=env) as server:
        children = children_by_name(server.process.pid)
        assert children.keys() == {"gunicorn", "nginx"}
        (workdir,) = scratch.iterdir()
        assert (workdir / "gunicorn.sock").is_socket() and (workdir / "nginx.conf").exists()
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=60) == 0
    assert all(gone(pid) for pid in children.values())
    assert list(scratch.iterdir()) == []
    scratch.rmdir()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.port), timeout=5).close()


def test_when_gunicorn_dies_nginx_is_stopped_and_the_launcher_fails(tiny_model_dir, tmp_path):
    nginx_or_skip()
    with running_front(tiny_model_dir, tmp_path / "server.log") as server:
        children = children_by_name(server.process.pid)
        os.kill(children["gunicorn"], signal.SIGKILL)
        assert server.process.wait(timeout=60) != 0
    assert gone(children["nginx"])
    assert "front: gunicorn exited" in server.log_text()


def test_without_a_writable_temporary_folder_the_launcher_says_what_to_mount(tmp_path):
    nginx_or_skip()
    env = {**os.environ, "SSM_FRONT_TEMP_DIR": str(tmp_path / "missing"), "SSM_USER": "root"}
    completed = subprocess.run(
        front_command(), env=env, capture_output=True, text=True, timeout=60, cwd=REPO_ROOT
    )
    assert completed.returncode == 2
    (line,) = completed.stderr.splitlines()
    assert line.startswith("front: no writable temporary folder") and "mount one at /tmp" in line
