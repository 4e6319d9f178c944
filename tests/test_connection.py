"""service/connection.py on real loopback TCP sockets: telling a client that hung up from
one that waits."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest
from loopback import connected_pair
from turns import hold_turn

from supersizeme.service.admission import WAIT_SLICE_SECONDS, InferenceGate
from supersizeme.service.connection import SOCKET_KEY, client_gone, client_watch
from supersizeme.service.tiling import ClientGone, Stop, never_gone


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    with connected_pair() as ends:
        yield ends


def test_a_waiting_client_is_there(pair):
    _, server = pair
    assert not client_gone(server)


def test_a_client_that_closed_is_gone(pair):
    client, server = pair
    client.close()
    wait_until(lambda: client_gone(server))


def test_a_client_that_reset_the_connection_is_gone(pair):
    client, server = pair
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()  # linger 0: a reset instead of an orderly close
    wait_until(lambda: client_gone(server))


def test_a_pipelined_request_means_there_and_is_not_consumed(pair):
    client, server = pair
    client.sendall(b"GET /healthz HTTP/1.1\r\n\r\n")
    time.sleep(0.1)
    assert not client_gone(server)
    assert server.recv(100).startswith(b"GET /healthz")


def test_the_check_never_waits_on_a_socket_with_a_timeout(pair):
    _, server = pair
    server.settimeout(5)  # recv() on such a socket waits for data, MSG_DONTWAIT or not
    started = time.monotonic()
    assert not client_gone(server)
    assert time.monotonic() - started < 0.5


def test_without_a_socket_the_client_is_always_there(pair):
    assert client_watch({}) is never_gone
    client, server = pair
    watch = client_watch(http1(server))
    assert not watch()
    client.close()
    wait_until(watch)


def test_a_connection_shared_by_http2_streams_is_left_alone(pair):
    client, server = pair
    shared = {SOCKET_KEY: server, "SERVER_PROTOCOL": "HTTP/2.0"}
    client.close()
    time.sleep(0.1)
    assert client_watch(shared) is never_gone


def test_the_gate_lets_a_waiter_go_when_its_socket_closes(pair):
    client, server = pair
    gate, release = InferenceGate(max_waiting=1), threading.Event()
    holder = hold_turn(gate, release)
    threading.Timer(0.3, client.close).start()
    started = time.monotonic()
    with pytest.raises(ClientGone), gate.turn(Stop(client_gone=client_watch(http1(server)))):
        pass
    assert time.monotonic() - started < 0.3 + WAIT_SLICE_SECONDS + 0.5
    release.set()
    holder.join()


def http1(sock: socket.socket) -> dict:
    """The environ keys of an HTTP/1.1 request on ``sock``, as gunicorn sets them."""
    return {SOCKET_KEY: sock, "SERVER_PROTOCOL": "HTTP/1.1"}


def wait_until(condition, seconds: float = 2) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)
