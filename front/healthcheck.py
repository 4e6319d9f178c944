"""The container's health check: ``GET /readyz`` on the address the front listens on.

The address is ``SSM_BIND``, as nginx's ``listen`` takes it (front/serve.py): ``host:port``,
a port alone, ``[v6]:port`` or ``unix:/path``. An address that listens on every interface
(``0.0.0.0``, ``*``, ``[::]``) is probed on the loopback of its family. Exits 0 when the
service answers 200, 1 otherwise; the Dockerfile's HEALTHCHECK runs it.

    python -m front.healthcheck
"""

from __future__ import annotations

import http.client
import socket
import sys

from supersizeme.service import config as settings

TIMEOUT_SECONDS = 4.0
ANY_ADDRESS = {"": "127.0.0.1", "*": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}


def probe_address(listen: str) -> tuple[str, int] | str:
    """Where to reach a front that listens on ``listen``: ``(host, port)``, or a unix
    socket's path."""
    if listen.startswith("unix:"):
        return listen[len("unix:") :]
    if listen.isdigit():
        return "127.0.0.1", int(listen)
    if listen.startswith("["):
        host, _, rest = listen[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else "80"
    elif ":" in listen:
        host, _, port = listen.rpartition(":")
    else:
        host, port = listen, "80"
    if not port.isdigit():
        raise ValueError(f"SSM_BIND {listen!r} has no port nginx would listen on")
    return ANY_ADDRESS.get(host, host), int(port)


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


def ready(listen: str, timeout: float = TIMEOUT_SECONDS) -> bool:
    """Whether the front on ``listen`` answers ``/readyz`` with 200 within ``timeout``."""
    address = probe_address(listen)
    if isinstance(address, str):
        connection: http.client.HTTPConnection = UnixConnection(address, timeout)
    else:
        connection = http.client.HTTPConnection(*address, timeout=timeout)
    try:
        connection.request("GET", "/readyz")
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


def main() -> int:
    return 0 if ready(settings.env("SSM_BIND", "0.0.0.0:8000")) else 1


if __name__ == "__main__":
    sys.exit(main())
