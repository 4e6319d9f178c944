"""gunicorn's gthread worker, changed where it meets slow or broken clients, in what it
counts towards ``max_requests``, and in how it stops (``worker_class`` in gunicorn.conf.py).

Header budget. gthread reads a request's line and headers with blocking reads in one of
the worker's few request threads, without a time limit, so a client that trickles them
holds a thread as long as it likes. Here they must arrive within
``SSM_HEADER_TIMEOUT_SECONDS`` of a thread taking the connection, else the answer is 408 and
the connection closes. The body must then arrive within ``SSM_UPLOAD_SECONDS`` in all: each
read waits only for what is left of that time, and one past it raises UploadTimedOut into the
app, which answers 408 ``upload_timeout``. A slow client can still hold a thread, but not for
ever. The front (front/nginx.conf) keeps slow headers away from gunicorn altogether and
passes bodies on as they arrive, so that this limit ends them there too; nothing here ever
shuts the socket early, which would fail the front's next write and turn the answer into its
502.

Refusals. gunicorn answers a request it cannot parse with an HTML page; here the answer is
the service's JSON error, with the same status.

``max_requests``. gthread counts every request, so health probes and scrapes alone (a
Kubernetes pod gets about twenty a minute) would recycle a worker, and reload its model,
within the hour; here only uploads count, the work whose slow growth recycling bounds.

Unread bodies. An answer may come before its body was read (a full worker's 429, a 503 while
the model loads): then the rest of the body is read and dropped before the connection closes,
up to the largest body the service takes and within the app's upload limit. gthread's own
close reads 64 KiB at most; closing on more unread bytes makes the kernel reset the
connection, and a peer still sending (the front above all) loses the answer with it: a 502
instead of the refusal.

Stopping. A stopping gthread worker stops accepting but keeps its copy of the listening
socket open until its last request is answered. When the whole server is stopping, the
master has already closed its copy, so nobody will ever accept a connection made in that
window: the kernel still completes the handshake and the client waits, for up to the
graceful timeout, before it is reset. Closing the worker's copy as soon as it stops
accepting makes such connections fail at once with "connection refused", which a client or
a load balancer retries elsewhere. While the server runs on (a recycled worker, a reload)
the master and the other workers still hold the socket, so nothing changes for new
connections.
"""

from __future__ import annotations

import errno
import json
import re
import socket
import time
import uuid
from contextlib import suppress
from http import HTTPStatus
from typing import Any

from gunicorn import util
from gunicorn.http import errors
from gunicorn.http.message import Request
from gunicorn.http.unreader import SocketUnreader
from gunicorn.workers.gthread import TConn, ThreadWorker

from supersizeme.service import config as settings
from supersizeme.service.errors import UploadTimedOut

# The upload endpoint, with and without its trailing slash (the app takes both).
UPLOAD_PATHS = frozenset({"/supersizeme/", "/supersizeme"})

# A caller's X-Request-ID is echoed only if it is a short token, as supersizeme/service/api.py does
# (not imported here: this module is loaded by the master, which must not load the app).
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

# Status, error code and message of each refusal; the codes are those the front
# (front/nginx.conf) gives for the same statuses.
_REFUSALS = {
    400: ("bad_request", "The request is not valid HTTP."),
    403: ("forbidden", "The request is forbidden."),
    408: ("request_timeout", "The request line and headers did not arrive in time."),
    414: ("request_uri_too_large", "The request line is too long."),
    417: ("expectation_failed", "Only the expectation 100-continue is supported."),
    431: ("request_header_fields_too_large", "The request headers are too large."),
    500: ("internal_error", "The server failed to process this request."),
    501: ("not_implemented", "The transfer coding of the request is not supported."),
}

# How long a connection closed for missing its budget may take to read its answer and close.
LINGER_SECONDS = 1.0


def header_timeout_seconds() -> float:
    """Seconds a client has to send a request's line and headers (the front's limit too)."""
    return settings.env("SSM_HEADER_TIMEOUT_SECONDS", 10.0, float)


class RequestReadTimeout(Exception):
    """A request's line and headers did not arrive within their budget.

    Not an OSError: gthread would take one for a broken socket and close it without an
    answer; this reaches ``handle_error``, which answers 408.
    """


class BudgetedConnection(TConn):
    """gthread's connection, with the deadline its request line and headers must meet (None
    once they are in), whether they missed it, and the deadline of its request's body."""

    read_deadline: float | None = None
    timed_out = False
    body_deadline: float | None = None

    def init(self) -> None:
        super().init()
        unreader = getattr(self.parser, "unreader", None)
        # HTTP/1 over a plain socket (HTTP/2 reads its own way); init() may run again on a
        # connection that is already set up.
        if type(unreader) is SocketUnreader:
            self.parser.unreader = BudgetedUnreader(self, unreader)


class BudgetedUnreader(SocketUnreader):
    """gunicorn's socket reader, each read limited to what is left of the connection's budget."""

    def __init__(self, connection: BudgetedConnection, replaced: SocketUnreader) -> None:
        super().__init__(replaced.sock, replaced.mxchunk)
        self.buf = replaced.buf
        self.connection = connection

    def chunk(self, size_hint: int | None = None) -> bytes:
        headers_by = self.connection.read_deadline
        deadline = headers_by if headers_by is not None else self.connection.body_deadline
        if deadline is None:
            return super().chunk(size_hint)
        remaining = deadline - time.monotonic()
        blocking = self.sock.gettimeout()
        try:
            if remaining <= 0:
                raise TimeoutError
            self.sock.settimeout(remaining)
            return super().chunk(size_hint)
        except TimeoutError:
            if headers_by is None:
                raise UploadTimedOut from None
            self.connection.timed_out = True
            raise RequestReadTimeout from None
        finally:
            self.sock.settimeout(blocking)


def refusal_status(exc: BaseException) -> int:
    """The status gunicorn gives a request it refuses (gunicorn.workers.base.handle_error)."""
    if isinstance(exc, RequestReadTimeout):
        return 408
    # A bad header the app tried to send is the app's fault, not the client's.
    if isinstance(exc, errors.InvalidResponseHeader | errors.InvalidResponseHeaderName):
        return 500
    specific = {
        errors.LimitRequestLine: 414,
        errors.LimitRequestHeaders: 431,
        errors.ExpectationFailed: 417,
        errors.UnsupportedTransferCoding: 501,
        errors.ForbiddenProxyRequest: 403,
        errors.ConfigurationProblem: 500,
    }
    for kind, status in specific.items():
        if isinstance(exc, kind):
            return status
    return 400 if isinstance(exc, errors.ParseException) else 500


def request_id_of(req: Request | None) -> str:
    """The caller's X-Request-ID if the headers were read and it is a short token, else new."""
    for name, value in getattr(req, "headers", None) or ():
        if name == "X-REQUEST-ID" and _REQUEST_ID.match(value):
            return value
    return uuid.uuid4().hex


def json_refusal(status: int, request_id: str) -> bytes:
    """A whole HTTP/1.1 answer carrying the service's JSON error for ``status``."""
    code, message = _REFUSALS[status]
    body = json.dumps({"error": code, "message": message, "request_id": request_id}).encode()
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
        "Connection: close\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        # The headers every answer of the app carries (api.SECURITY_HEADERS and its cache
        # policy), written out: this module must not import the app.
        "X-Content-Type-Options: nosniff\r\n"
        "X-Frame-Options: DENY\r\n"
        "Cache-Control: no-store\r\n"
        "Content-Security-Policy: default-src 'none'; frame-ancestors 'none'; base-uri 'none'\r\n"
        f"X-Request-ID: {request_id}\r\n\r\n"
    )
    return head.encode("latin-1") + body


def declared_length(req: Request) -> int | None:
    for name, value in req.headers:
        if name == "CONTENT-LENGTH":
            return int(value)  # gunicorn has checked that it is a number
    return None


def drain_body(req: Request, max_bytes: int) -> None:
    """Read and drop what is left of ``req``'s body, at most ``max_bytes`` (none if more is
    declared); the body's deadline bounds the time."""
    length = declared_length(req)
    if length is not None and length > max_bytes:
        return
    drained = 0
    # The client gone, its chunked framing broken or its time up: nothing left to keep.
    with suppress(OSError, errors.ParseException, UploadTimedOut):
        while drained <= max_bytes and (chunk := req.body.read(65536)):
            drained += len(chunk)


class StoppingThreadWorker(ThreadWorker):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout = header_timeout_seconds()
        service = settings.from_environment()
        self.upload_seconds = float(service["UPLOAD_SECONDS"])
        self.max_body_bytes = service["MAX_BODY_BYTES"] + settings.MULTIPART_OVERHEAD_BYTES

    def accept(self, listener: socket.socket) -> None:
        # gthread's accept, making a BudgetedConnection instead of a TConn.
        try:
            client, address = listener.accept()
            self.nr_conns += 1
            client.setblocking(True)
            self.enqueue_req(BudgetedConnection(self.cfg, client, address, listener.getsockname()))
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise

    def handle(self, conn: BudgetedConnection) -> Any:
        # A thread takes the connection for its next request: the line and headers must
        # arrive within the header budget, counted from now.
        conn.read_deadline = time.monotonic() + self.header_timeout
        conn.timed_out = False
        try:
            keepalive = super().handle(conn)
        finally:
            conn.read_deadline = None
        if conn.timed_out:
            # gthread closes a connection politely on its main thread: it waits up to 2 s
            # for the client to stop sending, which a trickling client does not, and
            # meanwhile no other connection of the worker is accepted or served. This one is
            # closed here, in its request thread, after a shorter wait.
            util.close_graceful(conn.sock, timeout=LINGER_SECONDS)
            return False
        return keepalive

    def handle_request(self, req: Request, conn: BudgetedConnection) -> bool:
        # The line and headers are in: the body's time limit starts.
        conn.read_deadline = None
        conn.body_deadline = time.monotonic() + self.upload_seconds
        if not (req.method == "POST" and req.path in UPLOAD_PATHS):
            # gthread adds one to nr for every request and recycles the worker when it
            # reaches max_requests; taking one off first leaves this request uncounted.
            self.nr -= 1
        try:
            keepalive = super().handle_request(req, conn)
            if not keepalive:
                # A connection kept alive has its body read by gthread's parser, before
                # the next request's.
                drain_body(req, self.max_body_bytes)
        finally:
            conn.body_deadline = None
        return keepalive

    def handle_error(
        self, req: Request | None, client: socket.socket, addr: Any, exc: BaseException
    ) -> None:
        req = req or getattr(exc, "req", None)
        status = refusal_status(exc)
        request_id = request_id_of(req)
        peer = addr[0] if isinstance(addr, tuple) else addr
        if status == 500:
            self.log.exception("request_id=%s error handling a request from %s", request_id, peer)
        else:
            self.log.warning(
                "request_id=%s refused with %d, from %s: %r", request_id, status, peer, exc
            )
        try:
            # As gunicorn does: never block on a client that does not read.
            util.write_nonblock(client, json_refusal(status, request_id))
        except OSError:
            self.log.debug("Failed to send error message.")

    def set_accept_enabled(self, enabled: bool) -> None:
        super().set_accept_enabled(enabled)
        # Busy workers also stop accepting for a while; only a stopping one lets go.
        if not enabled and not self.alive:
            for listener in self.sockets:
                listener.close()
