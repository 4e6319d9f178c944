"""Slow and vanishing clients against a real gunicorn, over loopback sockets written by hand:
clients that hang up stop their work, a full worker refuses before the body is read, the
deadline starts after the upload, and an upload slower than its limit gets 408.

The unit-level halves live elsewhere: the stop checks in test_tiling.py and
test_pipeline.py, the gate in test_admission.py, the socket checks and the upload clock in
test_connection.py, the answers through the test client in test_api.py.
"""

from __future__ import annotations

import http.client
import json
import math
import socket
import threading
import time
from contextlib import suppress
from io import BytesIO

import numpy as np
import pytest
from PIL import Image
from prometheus_text import parse_samples, value

from benchmarks.gunicorn_server import Server, request, running_gunicorn
from benchmarks.imagefactory import gradient, png
from supersizeme.service.admission import WAIT_SLICE_SECONDS
from supersizeme.service.tiling import tile_spans

pytestmark = pytest.mark.gunicorn  # a real gunicorn with the shipped model

UPSCALE = "/supersizeme/"


def picture(width: int, height: int) -> bytes:
    return png(Image.fromarray(gradient(width, height)))


def noise(width: int, height: int) -> bytes:
    """A PNG that does not compress: about 3 bytes per pixel on the wire."""
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return png(Image.fromarray(pixels))


def open_upload(port: int, headers: dict[str, str]) -> socket.socket:
    """A connection that has sent a POST's request line and headers, and no body yet."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    lines = [f"POST {UPSCALE} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: image/png"]
    lines += [f"{name}: {content}" for name, content in headers.items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    return sock


def read_answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    answer = http.client.HTTPResponse(sock)
    answer.begin()
    return answer.status, dict(answer.getheaders()), answer.read()


def request_lines(log_text: str) -> dict[str, dict]:
    """The app's JSON request lines, by request id."""
    lines = [json.loads(line) for line in log_text.splitlines() if line.startswith("{")]
    return {line["request_id"]: line for line in lines}


def worker_pid(server: Server) -> int:
    (pid,) = server.worker_pids()
    return pid


def scrape(port: int) -> dict:
    return parse_samples(request(port, "GET", "/metrics")[2].decode())


def wait_until_idle(port: int, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while value(scrape(port), "ssm_requests_in_flight"):
        assert time.monotonic() < deadline, "the worker is still busy"
        time.sleep(0.1)


# -- clients that go away, on the shipped model (a tile takes a measurable time) -----------

TILE = 128
SIDE = 1000  # the abandoned uploads: 1 MP at least, more where tiles are fast
STREAMS, WAITING = 2, 2  # room for two images running (a stream each) and two waiting
HANG_UP = 2.0  # seconds after which the abandoning clients close
SPAN = tile_spans(SIDE, TILE)[0][1]  # the tiles' kept core (125)


@pytest.fixture(scope="module")
def shipped_worker(shipped_model_dir, tmp_path_factory):
    """One worker with the shipped model in small tiles, room for STREAMS images running
    and WAITING waiting, and threads to spare for the clients of these tests."""
    log = tmp_path_factory.mktemp("gunicorn") / "server.log"
    env = {
        "SSM_TILE": str(TILE),
        "SSM_THREADS": str(STREAMS),
        "SSM_STREAMS": str(STREAMS),
        "SSM_MAX_WAITING": str(WAITING),
        "SSM_GUNICORN_THREADS": "8",
        # Set, so that it is kept: the worker would choose its own from its speed.
        "SSM_MAX_PIXELS": "8000000",
    }
    with running_gunicorn(shipped_model_dir, log, env=env) as server:
        yield server


def lasting_side(tile: float, seconds: float) -> int:
    """The side, in whole tiles of SPAN and at least SIDE, of a square upload that keeps one
    stream busy for ``seconds`` at ``tile`` seconds a tile: on fast hosts, larger."""
    return SPAN * max(SIDE // SPAN, math.ceil(math.sqrt(seconds / tile)))


def seconds_per_tile(port: int) -> float:
    """One tile's inference time, measured now on 3 x 3 tiles of every shape that the 1 MP
    uploads are cut into (the same core, with context on 0, 1 or 2 sides), which also
    prepares the runtime for each of those shapes. Alone, the image's tiles run a stream
    each, so the nine take ceil(9 / STREAMS) rounds."""
    spans = tile_spans(3 * SPAN, TILE)
    assert [end - start for start, end in spans] == [SPAN] * 3
    started = time.monotonic()
    status, _, _ = request(port, "POST", UPSCALE, picture(3 * SPAN, 3 * SPAN))
    assert status == 200
    return (time.monotonic() - started) / math.ceil(len(spans) ** 2 / STREAMS)


def send_and_hang_up(port: int, body: bytes, request_id: str, after: float) -> None:
    sock = open_upload(port, {"Content-Length": str(len(body)), "X-Request-ID": request_id})
    # Refused before its body was read, an upload may find the connection closed early.
    with suppress(OSError):
        sock.sendall(body)
    time.sleep(after)
    sock.close()


def test_clients_that_hang_up_free_the_worker_within_a_tile(shipped_worker):
    port = shipped_worker.port
    wait_until_idle(port)
    pid = worker_pid(shipped_worker)
    tile = seconds_per_tile(port)
    # Uploads of dozens of tiles each (five times the hang-up's worth on one stream), one
    # more than the room holds, hung up on after two seconds (time for every one to be read
    # and decoded on a busy machine): the last finds the room full. Without stopping, the
    # worker would stay busy with whole images and turn the next upload away.
    count = STREAMS + WAITING + 1
    side = lasting_side(tile, 5 * HANG_UP)
    upload, names = picture(side, side), [f"abandoned-{index}" for index in range(count)]
    clients = [
        threading.Thread(target=send_and_hang_up, args=(port, upload, name, HANG_UP))
        for name in names
    ]
    for client in clients:
        client.start()
    for client in clients:
        client.join(30)
    time.sleep(3 * WAIT_SLICE_SECONDS)  # the waiting ones notice within a slice

    started = time.monotonic()
    status, _, body = request(port, "POST", UPSCALE, picture(48, 32))
    took = time.monotonic() - started
    assert status == 200, body
    assert Image.open(BytesIO(body)).size == (96, 64)
    # At most the rest of the tile that was running, then its own (a few milliseconds);
    # twice the measured tile and a second allow for a busy machine.
    assert took < 2 * tile + 1, (took, tile)
    # With a stream free, that upload did not wait for every abandoned image to stop: the
    # last of them may still be finishing its tile, and logs its line when it has.
    wait_until_idle(port, seconds=2 * tile + 5)

    lines = request_lines(shipped_worker.log_text())
    abandoned = [lines[name] for name in names]
    assert sorted(line["status"] for line in abandoned) == [429] + [499] * (count - 1)
    for line in abandoned:
        if line["status"] == 499:
            assert line["error"] == "client_closed_request" and "inference_s" not in line
            # Hung up, and stopped within a tile of it.
            assert line["total_s"] < HANG_UP + 2 * tile + 1, (line, tile)
    closed = value(scrape(port), "ssm_rejected_requests_total", reason="client_closed_request")
    assert closed >= count - 1
    assert worker_pid(shipped_worker) == pid
    assert "Traceback" not in shipped_worker.log_text()


def test_a_full_worker_answers_429_before_the_body_is_read(shipped_worker):
    port = shipped_worker.port
    wait_until_idle(port)
    # Fillers that hold the room for longer than the probes below take.
    side = lasting_side(seconds_per_tile(port), 20.0)
    upload = picture(side, side)
    fillers = []
    try:
        for _ in range(STREAMS + WAITING):  # the room is full
            filler = open_upload(port, {"Content-Length": str(len(upload))})
            filler.sendall(upload)
            fillers.append(filler)
        # Headers only, never a body: the answer can only come without reading one. Until
        # the fillers are decoded and queued there is room, and the server waits for the
        # body instead; such a probe is given up and the next one tried.
        answer = None
        for _ in range(40):
            probe = open_upload(port, {"Content-Length": str(len(upload))})
            probe.settimeout(0.25)
            try:
                answer = read_answer(probe)
                break
            except TimeoutError:
                pass
            finally:
                probe.close()
        assert answer is not None, "never refused before the body"
        status, headers, body = answer
        assert status == 429 and json.loads(body)["error"] == "overloaded"
        assert int(headers["Retry-After"]) > 0

        # No length to go by: refused alike.
        chunked = open_upload(port, {"Transfer-Encoding": "chunked"})
        chunked.settimeout(5)
        with chunked:
            status, _, body = read_answer(chunked)
        assert status == 429 and json.loads(body)["error"] == "overloaded"
    finally:
        for filler in fillers:
            filler.close()
    wait_until_idle(port)  # the fillers hung up: their work stops
    assert "Traceback" not in shipped_worker.log_text()


# -- slow uploads, on the tiny model --------------------------------------------------------


def send_paced(sock: socket.socket, body: bytes, bytes_per_second: int, piece: int) -> None:
    started = time.monotonic()
    for index, offset in enumerate(range(0, len(body), piece)):
        time.sleep(max(0.0, started + index * piece / bytes_per_second - time.monotonic()))
        sock.sendall(body[offset : offset + piece])


def test_a_slow_upload_to_an_idle_server_is_served_not_refused(tiny_model_dir, tmp_path):
    # The 2 MB body takes 20 s at 100 KB/s, twice the deadline: only a deadline that starts
    # once the body has arrived lets it through.
    # The pixel cap set, so that it is kept: left unset, a worker measured slow at start-up
    # would lower it to what fits in half of this short deadline.
    env = {"SSM_DEADLINE_SECONDS": "10", "SSM_MAX_PIXELS": "2000000"}
    with running_gunicorn(tiny_model_dir, tmp_path / "server.log", env=env) as server:
        side = 820
        body = noise(side, side)
        assert len(body) > 2_000_000
        sock = open_upload(server.port, {"Content-Length": str(len(body))})
        with sock:
            started = time.monotonic()
            send_paced(sock, body, bytes_per_second=100_000, piece=10_000)
            uploaded = time.monotonic() - started
            status, _, answer = read_answer(sock)
        assert uploaded > 19
        assert status == 200, answer
        assert Image.open(BytesIO(answer)).size == (2 * side, 2 * side)


UPLOAD_SECONDS = 2


@pytest.fixture(scope="module")
def short_upload_limit(tiny_model_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("gunicorn") / "server.log"
    env = {"SSM_UPLOAD_SECONDS": str(UPLOAD_SECONDS)}
    with running_gunicorn(tiny_model_dir, log, env=env) as server:
        yield server


def trickle(sock: socket.socket, pieces: list[bytes], until: float) -> None:
    """Send a piece every 0.2 s until ``until``: data keeps coming, so no single read
    waits long, but the body as a whole is far too slow."""
    for piece in pieces:
        if time.monotonic() + 0.2 > until:
            return
        time.sleep(0.2)
        sock.sendall(piece)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_an_upload_slower_than_its_limit_gets_408(short_upload_limit, chunked):
    server, port = short_upload_limit, short_upload_limit.port
    pid = worker_pid(server)
    body = noise(100, 100)  # about 30 KB: a minute at this pace
    pieces = [body[offset : offset + 100] for offset in range(0, len(body), 100)]
    if chunked:
        framing = {"Transfer-Encoding": "chunked"}
        pieces = [b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces]
    else:
        framing = {"Content-Length": str(len(body))}
    sock = open_upload(port, {**framing, "X-Request-ID": f"trickle-{chunked}"})
    with sock:
        started = time.monotonic()
        # Up to just before the limit, then nothing: the answer must come at the limit,
        # not a read timeout's length after the last piece.
        trickle(sock, pieces, until=started + UPLOAD_SECONDS)
        status, _, answer = read_answer(sock)
        took = time.monotonic() - started
    assert status == 408
    error = json.loads(answer)
    assert error["error"] == "upload_timeout" and f"{UPLOAD_SECONDS:g} s" in error["message"]
    # A limit per read would only end it a whole limit after the last piece.
    assert UPLOAD_SECONDS <= took < UPLOAD_SECONDS + 1.5, took
    line = request_lines(server.log_text())[f"trickle-{chunked}"]
    assert (line["status"], line["error"]) == (408, "upload_timeout")
    # The worker goes on serving.
    status, _, _ = request(port, "POST", UPSCALE, picture(48, 32))
    assert status == 200 and worker_pid(server) == pid
    assert "Traceback" not in server.log_text()
