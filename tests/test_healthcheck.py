"""front/healthcheck.py: the address it probes for each form of SSM_BIND, and its answer."""

from __future__ import annotations

import http.server
import socket
import socketserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from front import healthcheck
from front.healthcheck import probe_address, ready


@pytest.mark.parametrize(
    ("listen", "address"),
    [
        ("0.0.0.0:8000", ("127.0.0.1", 8000)),
        ("*:9000", ("127.0.0.1", 9000)),
        ("9000", ("127.0.0.1", 9000)),
        ("127.0.0.2:8080", ("127.0.0.2", 8080)),
        ("[::]:8000", ("::1", 8000)),
        ("[::1]:8001", ("::1", 8001)),
        ("localhost", ("localhost", 80)),
        ("unix:/run/ssm.sock", "/run/ssm.sock"),
    ],
)
def test_probe_address(listen, address):
    assert probe_address(listen) == address


def test_an_address_without_a_port_number_is_refused():
    with pytest.raises(ValueError, match="no port"):
        probe_address("127.0.0.1:http")


class Readiness(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/readyz" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def serving(server: socketserver.BaseServer) -> Iterator[None]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


class UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def get_request(self):  # BaseHTTPRequestHandler wants a client address tuple
        connection, _ = super().get_request()
        return connection, ("local", 0)


@pytest.mark.parametrize("status", [200, 503])
def test_ready_over_tcp_on_an_any_address(status, monkeypatch):
    monkeypatch.setattr(Readiness, "status", status)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Readiness)
    with serving(server):
        listen = f"0.0.0.0:{server.server_address[1]}"
        assert ready(listen) is (status == 200)
        monkeypatch.setenv("SSM_BIND", listen)
        assert healthcheck.main() == (0 if status == 200 else 1)


def test_ready_over_a_unix_socket(tmp_path):
    path = tmp_path / "front.sock"
    with serving(UnixServer(str(path), Readiness)):
        assert ready(f"unix:{path}")


def test_not_ready_when_nothing_listens(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound but not listening: connections are refused
        assert not ready(f"127.0.0.1:{port}", timeout=2)
    assert not ready(f"unix:{tmp_path / 'missing.sock'}", timeout=2)
