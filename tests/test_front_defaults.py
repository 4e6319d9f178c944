"""The service as `make serve` starts it, with every default (the shipped models, the front's
limits), probed from loopback addresses of its own (127.0.0.2, 127.0.0.3, ...) as several
clients would: slow uploads from one address, a load from several, results sent back, the
protocol's edges, headers and what the answers tell, and whom the processes run as.

Every client here is bounded in time and talks to loopback only.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin
from test_front import assert_json_error, nginx_or_skip, parse_answer, request_lines

from benchmarks.gunicorn_server import front_command, running_front
from benchmarks.imagefactory import gradient, png
from front.serve import Account, FrontSettings, served_paths
from supersizeme.service.api import DEMO_PAGE_POLICY
from supersizeme.service.config import REPO_ROOT, from_environment

UPSCALE = "/supersizeme/"
TRICKLER, UPLOADER = "127.0.0.2", "127.0.0.3"
TRICKLES, TRICKLE_GAP = 32, 5.0  # as the probe: a byte every 5 s
STALL_SECONDS = 15  # the front's longest pause within a body (SSM_STALL_TIMEOUT_SECONDS)

pytestmark = pytest.mark.gunicorn  # nginx and gunicorn processes


def service_user() -> str:
    """Started as root, the service's own user (nobody) when it can read what it serves;
    else root, and the test of the switch says why it cannot run."""
    account = Account.for_service()
    return "root" if account is None or account.cannot_read(served_paths()) else account.name


@pytest.fixture(scope="module")
def served(
    shipped_model_dir, shipped_photo_model_dir, shipped_photo_low_model_dir, tmp_path_factory
):
    nginx_or_skip()
    log = tmp_path_factory.mktemp("front-defaults") / "server.log"
    env = {"SSM_USER": service_user()}
    with running_front(
        shipped_model_dir,
        log,
        env=env,
        photo_model_dir=shipped_photo_model_dir,
        photo_low_model_dir=shipped_photo_low_model_dir,
    ) as server:
        yield server


def connect(port: int, source: str, timeout: float = 10) -> socket.socket:
    sock = socket.socket()
    sock.settimeout(timeout)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def exchange(port: int, raw: bytes, source: str = UPLOADER) -> bytes:
    """What comes back for ``raw`` until the server closes."""
    with connect(port, source) as sock:
        sock.sendall(raw)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
    return answer


def post(
    port: int, body: bytes, source: str = UPLOADER, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection(
        "127.0.0.1", port, timeout=120, source_address=(source, 0)
    )
    try:
        connection.request("POST", UPSCALE, body=body, headers=headers or {})
        answer = connection.getresponse()
        return answer.status, dict(answer.getheaders()), answer.read()
    finally:
        connection.close()


def get(port: int, path: str, headers: dict[str, str] | None = None):
    connection = http.client.HTTPConnection(
        "127.0.0.1", port, timeout=30, source_address=(UPLOADER, 0)
    )
    try:
        connection.request("GET", path, headers=headers or {})
        answer = connection.getresponse()
        return answer.status, dict(answer.getheaders()), answer.read()
    finally:
        connection.close()


def picture(width: int, height: int) -> bytes:
    return png(Image.fromarray(gradient(width, height)))


def jpeg(width: int, height: int, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(gradient(width, height)).save(buffer, "JPEG", quality=85, **options)
    return buffer.getvalue()


# -- slow uploads ------------------------------------------------------------------------------


@dataclass
class Trickle:
    """An upload declaring 1,000,000 bytes and sending one every TRICKLE_GAP seconds, from
    its own address, until an answer arrives or ``give_up`` seconds have passed."""

    port: int
    give_up: float
    answer: bytes = b""
    lasted: float = 0.0

    def run(self) -> None:
        started = time.monotonic()
        head = (
            f"POST {UPSCALE} HTTP/1.1\r\nHost: trickle\r\nContent-Type: image/png\r\n"
            "Content-Length: 1000000\r\n\r\n"
        ).encode()
        try:
            with connect(self.port, TRICKLER) as sock:
                sock.sendall(head)
                while time.monotonic() - started < self.give_up:
                    if select.select([sock], [], [], TRICKLE_GAP)[0]:
                        chunk = sock.recv(65536)
                        if not chunk:
                            break
                        self.answer += chunk
                        if b"\r\n\r\n" in self.answer and self.answer.endswith(b"}\n"):
                            break
                    else:
                        sock.sendall(b"a")
        except OSError:
            pass  # reset after the answer
        self.lasted = time.monotonic() - started


def test_one_address_trickling_holds_only_its_share_and_each_trickle_ends_in_408(served):
    port = served.port
    share = FrontSettings.from_environment().max_uploads_per_client
    upload_limit = from_environment()["UPLOAD_SECONDS"]
    trickles = [Trickle(port, upload_limit + STALL_SECONDS + 20) for _ in range(TRICKLES)]
    threads = [threading.Thread(target=trickle.run, daemon=True) for trickle in trickles]
    for thread in threads:
        thread.start()
    time.sleep(2)  # every trickle connected: its share holds slots, the rest are refused

    # For 30 s of trickling, another address is served, and so are health checks.
    served_uploads, checks = [], []
    until = time.monotonic() + 30
    while time.monotonic() < until:
        status, _, body = post(port, picture(48, 32))
        served_uploads.append(status)
        checks.append(get(port, "/healthz")[0])
        time.sleep(3)
    assert set(served_uploads) == {200} and len(served_uploads) >= 5
    assert set(checks) == {200}

    for thread in threads:
        thread.join(upload_limit + STALL_SECONDS + 30)
    answers = [parse_answer(trickle.answer) for trickle in trickles]
    refused = [t for t, (status, _, _) in zip(trickles, answers, strict=True) if status == 429]
    timed_out = [t for t, (status, _, _) in zip(trickles, answers, strict=True) if status == 408]
    assert (len(refused), len(timed_out)) == (TRICKLES - share, share)
    for status, headers, body in answers:
        error = assert_json_error(body, "overloaded" if status == 429 else "upload_timeout")
        assert headers["X-Request-ID"] == error["request_id"]
    # Refused at once; ended by the upload limit, well before the next pause could.
    assert all(trickle.lasted < TRICKLE_GAP + 2 for trickle in refused)
    for trickle in timed_out:
        assert upload_limit - 1 < trickle.lasted < upload_limit + STALL_SECONDS, trickle.lasted


# -- refusals under load -----------------------------------------------------------------------


def test_under_load_every_answer_is_200_429_or_503_and_never_a_502(served):
    port = served.port
    limits = json.loads(get(port, "/supersizeme/model")[2])["limits"]
    # A photo of about a megapixel, as the load, or the largest this worker takes.
    side = int(min(1_000_000, limits["max_pixels"]) ** 0.5)
    upload = jpeg(side * 4 // 3, side * 3 // 4)
    statuses: Counter = Counter()
    bodies: list[tuple[int, bytes]] = []
    until = time.monotonic() + 30

    def client(source: str) -> None:
        while time.monotonic() < until:
            status, _, body = post(port, upload, source, {"Content-Type": "image/jpeg"})
            statuses[status] += 1
            if status != 200:
                bodies.append((status, body))
                time.sleep(0.2)

    sources = [f"127.0.0.{10 + number}" for number in range(8)]
    threads = [threading.Thread(target=client, args=(source,)) for source in sources]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(200)
    assert set(statuses) <= {200, 429, 503}, statuses
    assert statuses[200] >= 1 and statuses[429] >= 1, statuses  # the load was real
    for status, body in bodies:
        error = json.loads(body)
        assert error["request_id"] and error["error"] in {
            "overloaded",
            "insufficient_memory",
            "deadline_exceeded",
        }, (status, error)


# -- results sent back -------------------------------------------------------------------------


def test_a_result_carrying_the_largest_metadata_accepted_is_accepted_back(served):
    port = served.port
    limit = PngImagePlugin.MAX_TEXT_CHUNK
    # Random bytes: a profile that does not shrink when the PNG result deflates it.
    largest = np.random.default_rng(3).integers(0, 256, limit, dtype=np.uint8).tobytes()
    status, _, result = post(port, jpeg(64, 48, icc_profile=largest))
    assert status == 200
    with Image.open(io.BytesIO(result)) as image:
        assert image.info["icc_profile"] == largest
    status, _, again = post(port, result, headers={"Content-Type": "image/png"})
    assert status == 200 and Image.open(io.BytesIO(again)).size == (256, 192)
    status, _, body = post(port, jpeg(64, 48, icc_profile=largest + b"\0"))
    assert status == 422 and assert_json_error(body, "too_much_metadata")


# -- the protocol's edges ----------------------------------------------------------------------


def test_every_method_and_protocol_edge_is_answered_in_json_with_a_request_id(served):
    port = served.port
    many_headers = b"".join(b"X-H%d: v\r\n" % number for number in range(200))
    for raw, status, code in [
        (b"TRACE / HTTP/1.1\r\nHost: x\r\n\r\n", 405, "method_not_allowed"),
        (b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com\r\n\r\n", 400, "bad_request"),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 431,
         "request_header_fields_too_large"),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + many_headers + b"\r\n",
         431, "request_header_fields_too_large"),
    ]:
        got, headers, body = parse_answer(exchange(port, raw))
        assert (got, headers["Content-Type"]) == (status, "application/json"), raw[:40]
        error = assert_json_error(body, code)
        assert headers["X-Request-ID"] == error["request_id"]
        assert headers["X-Content-Type-Options"] == "nosniff"
        if status == 431:
            # One shape, whichever layer refused: the same error, the same sentence.
            assert error["message"] == "The request headers are too large."

    status, headers, body = parse_answer(
        exchange(port, b"OPTIONS /supersizeme/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    )
    assert status == 200 and headers["Allow"] == "OPTIONS, POST"
    assert json.loads(body)["allow"] == ["OPTIONS", "POST"]

    # HTTP/0.9 has no status line or headers: it is closed unanswered.
    assert exchange(port, b"GET /\r\n") == b""

    # An arithmetic-coded JPEG, which the decoder lacks, is named as such.
    data = bytearray(jpeg(48, 32))
    frame = data.index(b"\xff\xc0")
    data[frame + 1] = 0xC9
    status, _, body = post(port, bytes(data))
    assert status == 415 and "arithmetic-coded" in assert_json_error(
        body, "unsupported_media_type"
    )["message"]

    # A form of 20,000 small fields is told what is wrong with it.
    boundary = "b0undary"
    fields = b"".join(
        b'--%s\r\nContent-Disposition: form-data; name="f%d"\r\n\r\nx\r\n' % (boundary.encode(), n)
        for n in range(20_000)
    )
    form = fields + f"--{boundary}--\r\n".encode()
    status, _, body = post(
        port, form, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    assert status == 400 and "parts" in assert_json_error(body, "expected_one_file")["message"]


# -- headers and what the answers tell ---------------------------------------------------------


def walk_keys(value) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {key for item in value.values() for key in walk_keys(item)}
    if isinstance(value, list):
        return {key for item in value for key in walk_keys(item)}
    return set()


def test_every_answer_carries_its_security_headers_and_no_internals(served):
    port = served.port
    for path, policy in [
        ("/", DEMO_PAGE_POLICY),
        ("/static/index.html", DEMO_PAGE_POLICY),
        ("/healthz", None),
        ("/supersizeme/model", None),
        ("/no-such-page", None),
    ]:
        status, headers, _ = get(port, path)
        assert headers["X-Content-Type-Options"] == "nosniff", path
        assert headers["Cache-Control"] in ("no-store", "no-cache"), path
        if policy:
            assert headers["Content-Security-Policy"] == policy, path
    status, headers, _ = post(port, picture(48, 32))
    assert status == 200 and headers["Cache-Control"] == "no-store"
    assert headers["X-Content-Type-Options"] == "nosniff"

    assert json.loads(get(port, "/healthz")[2]) == {"status": "ok"}
    keys = walk_keys(json.loads(get(port, "/supersizeme/model")[2]))
    assert not keys & {"pid", "data_path", "checkpoint", "command"}

    # No redirect is built from the client's Host.
    status, headers, _ = get(port, "//supersizeme//model", {"Host": "evil.example"})
    assert not 300 <= status < 400 and "evil.example" not in json.dumps(headers)


def test_the_request_log_names_the_client_that_the_front_saw(served):
    port = served.port
    status, headers, _ = post(port, picture(48, 32), headers={"X-Real-IP": "6.6.6.6"})
    assert status == 200
    request_id = headers["X-Request-ID"]
    time.sleep(0.5)
    (line,) = [
        line for line in request_lines(served.log_text()) if line["request_id"] == request_id
    ]
    assert line["remote_addr"] == UPLOADER


# -- whom it runs as ---------------------------------------------------------------------------


def process_tree(pid: int) -> list[int]:
    children = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        children.extend(int(child) for child in (task / "children").read_text().split())
    return [pid] + [below for child in children for below in process_tree(child)]


def uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])  # the real uid; effective and saved follow
    raise AssertionError(pid)


def command_of(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def interpreter_for(account: Account) -> tuple[str, dict[str, str]] | None:
    """A Python the service's user can run, with what this one imports on its path: this
    one if it can read it, else the system's of the same version (one under /root, as
    pyenv installs it, is out of its reach)."""
    if not account.cannot_read([Path(sys.executable)]):
        return sys.executable, {}
    system = Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")
    if not system.exists() or account.cannot_read([system]):
        return None
    packages = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    return str(system), {"PYTHONPATH": os.pathsep.join([*sorted(packages), str(REPO_ROOT)])}


def test_started_as_root_gunicorn_and_nginxs_workers_run_unprivileged(tiny_model_dir, tmp_path):
    nginx_or_skip()
    if os.geteuid() != 0:
        pytest.skip("started unprivileged: there is nothing to drop")
    account = Account.for_service()
    found = interpreter_for(account)
    if found is None:
        pytest.skip(f"{account.name} can run no Python here")
    python, env = found
    # A model folder the service's user may enter (pytest's own directory is root's alone).
    shared = Path(tempfile.mkdtemp(prefix="ssm-drop-"))
    try:
        model = shutil.copytree(tiny_model_dir, shared / tiny_model_dir.name)
        for path in [shared, model, *model.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        env = {**env, "SSM_USER": account.name}
        log = tmp_path / "server.log"
        with running_front(model, log, env=env, python=python) as server:
            assert post(server.port, picture(48, 32))[0] == 200
            processes = {
                pid: (command_of(pid), uid_of(pid))
                for pid in process_tree(server.process.pid)[1:]
            }
    finally:
        shutil.rmtree(shared)
    gunicorns = [uid for command, uid in processes.values() if "gunicorn" in command]
    workers = [uid for command, uid in processes.values() if "nginx: worker" in command]
    masters = [uid for command, uid in processes.values() if "nginx: master" in command]
    assert len(gunicorns) == 2 and workers, processes  # gunicorn's master and its worker
    assert set(gunicorns + workers) == {account.uid}
    assert masters == [0]  # nginx's master, as always, which only reads its configuration


def test_started_as_root_it_refuses_a_user_who_cannot_read_what_it_serves(tmp_path):
    nginx_or_skip()
    if os.geteuid() != 0:
        pytest.skip("started unprivileged: there is nothing to drop")
    hidden = tmp_path / "model"  # under pytest's directory, which only root may enter
    hidden.mkdir()
    environment = {**os.environ, "SSM_USER": "nobody", "SSM_MODEL_DIR": str(hidden)}
    started = subprocess.run(
        front_command(), cwd=REPO_ROOT, env=environment, capture_output=True, text=True,
        timeout=60,
    )
    assert started.returncode == 2
    assert "runs as nobody, who cannot read" in started.stderr and str(hidden) in started.stderr
