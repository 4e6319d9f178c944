"""The gunicorn worker's own answers, without a gunicorn process: the statuses it gives the
requests it refuses, their JSON bodies, and the header read budget on a real socket pair.
(tests/test_front.py drives the same worker inside gunicorn and behind nginx.)"""

from __future__ import annotations

import json
import socket
import time
from types import SimpleNamespace

import pytest
from gunicorn.http import errors
from gunicorn.http.unreader import SocketUnreader

from supersizeme.service.worker import (
    BudgetedUnreader,
    RequestReadTimeout,
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


def test_a_header_read_past_its_budget_times_out():
    near, far = socket.socketpair()
    with near, far:
        near.sendall(b"GET / HT")  # and then nothing more
        connection = SimpleNamespace(read_deadline=time.monotonic() + 0.3, timed_out=False)
        reader = BudgetedUnreader(connection, SocketUnreader(far))
        assert reader.chunk() == b"GET / HT"
        started = time.monotonic()
        with pytest.raises(RequestReadTimeout):
            reader.chunk()
        assert time.monotonic() - started < 1
        assert connection.timed_out
        assert far.gettimeout() is None  # the socket's own timeout is given back
