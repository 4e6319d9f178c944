"""What the app can learn from a request's connection: whether its client is still there.

gunicorn hands the app the client's socket as ``environ["gunicorn.socket"]``. Without one
(Flask's test client, whose body is already in memory), or with one that other requests
share (HTTP/2), the client counts as always there.
Behind a proxy the socket's peer is the proxy, which closes its upstream connection when its
own client goes (nginx does by default).
"""

from __future__ import annotations

import select
import socket
from collections.abc import Callable
from functools import partial
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
