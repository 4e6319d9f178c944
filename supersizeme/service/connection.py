"""What the app can learn from a request's connection: whether its client is still there,
and a time limit on reading its body.

gunicorn hands the app the client's socket as ``environ["gunicorn.socket"]``. Without one
(Flask's test client, whose body is already in memory), or with one that other requests
share (HTTP/2), the client counts as always there and the body as always read in time.
Behind a proxy the socket's peer is the proxy, which closes its upstream connection when its
own client goes (nginx does by default).
"""

from __future__ import annotations

import select
import socket
import threading
from collections.abc import Callable
from contextlib import suppress
from functools import partial
from types import TracebackType
from typing import Any

from supersizeme.service.tiling import never_gone

SOCKET_KEY = "gunicorn.socket"


def client_gone(sock: socket.socket) -> bool:
    """Whether the peer has closed the connection, told without consuming anything.

    Asked once the body has been read, when the client has nothing left to send: an
    end-of-stream (or a reset) means it hung up; no data means it is waiting for its
    answer; data means it already sent its next request (pipelining), so it is there too.
    A client that half-closes its side after sending counts as gone, as nginx counts it.
    """
    # poll() first: Python waits for readability before a recv() on a socket that has a
    # timeout, MSG_DONTWAIT or not, and this check must never wait.
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    if not poller.poll(0):
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except ValueError:
        # A TLS socket takes no recv() flags: its client cannot be watched this way.
        return False
    except OSError:
        return True


def own_socket(environ: dict[str, Any]) -> socket.socket | None:
    """The request's connection, if the request has it to itself.

    Under HTTP/2 many requests share one connection: its state is not one request's client,
    and shutting its reading side would cut off the others.
    """
    if not environ.get("SERVER_PROTOCOL", "").startswith("HTTP/1."):
        return None
    return environ.get(SOCKET_KEY)


def client_watch(environ: dict[str, Any]) -> Callable[[], bool]:
    """The check that tells whether this request's client has hung up."""
    sock = own_socket(environ)
    return never_gone if sock is None else partial(client_gone, sock)


class UploadClock:
    """Ends the reading of a request body that takes longer than ``seconds`` in all.

    A socket timeout bounds each recv(), not the whole body: a client sending a byte now and
    then would never trip it. Instead a timer shuts the socket's reading side when the time
    is up, which makes the blocked read return at once with what has arrived; the writing
    side stays open for the answer. ``expired`` then says why the body ended early.
    """

    def __init__(self, environ: dict[str, Any], seconds: float):
        self._sock = own_socket(environ)
        self._seconds = seconds
        self._timer: threading.Timer | None = None
        # Held while the timer fires and while reading ends, so that a socket is never shut
        # after its body was read (it may carry the client's next request).
        self._lock = threading.Lock()
        self._reading = False
        self.expired = False

    def __enter__(self) -> UploadClock:
        self._reading = True
        if self._sock is not None:
            self._timer = threading.Timer(self._seconds, self._expire, (self._sock,))
            self._timer.daemon = True
            self._timer.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        with self._lock:
            self._reading = False
        if self._timer is not None:
            self._timer.cancel()

    def _expire(self, sock: socket.socket) -> None:
        with self._lock:
            if not self._reading:
                return
            self.expired = True
            # An OSError means the socket is already closed: the read has ended anyway.
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RD)
