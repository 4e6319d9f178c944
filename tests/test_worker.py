"""The gunicorn worker's own answers, without a gunicorn process: the statuses it gives the
requests it refuses, their JSON bodies, and the header read budget on a real socket pair.
(tests/test_front.py drives the same worker inside gunicorn and behind nginx.)"""

from __future__ import annotations

import json
import socket
import threading
import time
from types import SimpleNamespace

import pytest
from gunicorn.config import Config
from gunicorn.http import errors
from gunicorn.http.message import Request
from gunicorn.http.parser import RequestParser
from gunicorn.http.unreader import SocketUnreader

from supersizeme.service.errors import UploadTimedOut
from supersizeme.service.worker import (
    BudgetedUnreader,
    RequestReadTimeout,
    drain_body,
    json_refusal,
    refusal_status,
    request_id_of,
)


@pytest.mark.parametrize(
    "exc,status",
    [
        (RequestReadTimeout(), 408),
        (errors.LimitRequestLine(9000, 4094), 414),
        (errors.LimitRequestHeaders("too many"), 431),
        (errors.InvalidRequestLine("GET"), 400),
        (errors.ExpectationFailed("x"), 417),
        (errors.UnsupportedTransferCoding("gzip"), 501),
        (errors.InvalidResponseHeader("X"), 500),
        (errors.InvalidResponseHeaderName("X\n"), 500),
        (RuntimeError("anything else"), 500),
    ],
)
def test_refusals_get_gunicorns_statuses(exc, status):
    assert refusal_status(exc) == status


def test_a_refusal_is_a_whole_http_answer_with_the_services_json_error():
    answer = json_refusal(431, "abc123")
    head, body = answer.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0] == "HTTP/1.1 431 Request Header Fields Too Large"
    assert "Content-Type: application/json" in lines and "Connection: close" in lines
    assert f"Content-Length: {len(body)}" in lines and "X-Request-ID: abc123" in lines
    assert "X-Content-Type-Options: nosniff" in lines and "Cache-Control: no-store" in lines
    assert json.loads(body) == {
        "error": "request_header_fields_too_large",
        "message": "The request headers are too large.",
        "request_id": "abc123",
    }


def test_the_callers_request_id_is_kept_only_when_it_is_a_short_token():
    given = SimpleNamespace(headers=[("X-REQUEST-ID", "order-17")])
    assert request_id_of(given) == "order-17"
    hostile = SimpleNamespace(headers=[("X-REQUEST-ID", "x" * 500)])
    assert request_id_of(hostile) != "x" * 500
    assert len(request_id_of(None)) == 32


@pytest.mark.parametrize(
    ("headers_in", "sent", "raised"),
    [(False, b"GET / HT", RequestReadTimeout), (True, b"part of a body", UploadTimedOut)],
    ids=["headers", "body"],
)
def test_a_read_past_its_deadline_ends_at_the_deadline(headers_in, sent, raised):
    """Headers past their budget are the worker's 408; a body past the upload limit is
    the app's, told by UploadTimedOut."""
    near, far = socket.socketpair()
    with near, far:
        near.sendall(sent)  # and then nothing more
        deadline = time.monotonic() + 0.3
        connection = SimpleNamespace(
            read_deadline=None if headers_in else deadline,
            body_deadline=deadline if headers_in else None,
            timed_out=False,
        )
        reader = BudgetedUnreader(connection, SocketUnreader(far))
        assert reader.chunk() == sent
        started = time.monotonic()
        with pytest.raises(raised):
            reader.chunk()
        assert time.monotonic() - started < 1
        assert connection.timed_out is not headers_in
        assert far.gettimeout() is None  # the socket's own timeout is given back
        # The socket was never shut: the peer can still send, and read an answer.
        near.sendall(b"more")
        far.sendall(b"answer")
        assert near.recv(100) == b"answer"


def parsed_request(sock: socket.socket) -> Request:
    """The next request on ``sock`` as gunicorn parses it, its body not yet read."""
    return next(RequestParser(Config(), sock, ("127.0.0.1", 1)))


@pytest.mark.parametrize("declared", [200_000, None])
def test_an_unread_body_is_drained_whole_up_to_the_limit(declared):
    near, far = socket.socketpair()
    with near, far:
        body = b"b" * 200_000
        framing = (
            f"Content-Length: {declared}\r\n".encode()
            if declared
            else b"Transfer-Encoding: chunked\r\n"
        )
        near.sendall(b"POST /supersizeme/ HTTP/1.1\r\nHost: x\r\n" + framing + b"\r\n")
        sent = body if declared else b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
        sender = threading.Thread(target=near.sendall, args=(sent,))
        sender.start()
        req = parsed_request(far)
        drain_body(req, max_bytes=300_000)
        sender.join(5)
        assert not sender.is_alive()
        far.setblocking(False)
        with pytest.raises(BlockingIOError):
            far.recv(1)  # nothing of the body is left unread


def test_a_body_declared_over_the_limit_is_not_drained():
    near, far = socket.socketpair()
    with near, far:
        near.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b"x" * 1000)
        req = parsed_request(far)
        drain_body(req, max_bytes=100)
        assert req.body.read() == b"x" * 1000  # all still there: the drain read nothing
