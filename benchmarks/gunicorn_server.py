"""A real gunicorn serving the app, for the end-to-end, corpus and load tests and the benchmarks."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from supersizeme.service.config import REPO_ROOT


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 60,
) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


@dataclass
class Server:
    port: int
    log: Path
    process: subprocess.Popen

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def worker_pids(self) -> set[int]:
        return worker_pids(self.process.pid)


def worker_pids(master_pid: int) -> set[int]:
    """The gunicorn master's child processes (its workers), from Linux's /proc."""
    children = set()
    for task in Path(f"/proc/{master_pid}/task").glob("*"):
        children.update(int(pid) for pid in (task / "children").read_text().split())
    return children


def gunicorn_command() -> list[str]:
    return [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py", "app:app"]


@contextmanager
def running_gunicorn(
    model_dir: Path,
    log: Path,
    workers: int = 1,
    env: dict[str, str] | None = None,
    photo_model_dir: Path | None = None,
    photo_low_model_dir: Path | None = None,
) -> Iterator[Server]:
    """gunicorn on a free port, yielded once /readyz says 200; SIGTERM and wait after.

    ``model_dir`` is the clean model; ``photo_model_dir`` and ``photo_low_model_dir`` the
    photo models, or None for none (their JPEG uploads then go to the model of the band
    above, service/routing.py)."""
    models = (model_dir, photo_model_dir, photo_low_model_dir)
    with running(gunicorn_command(), "gunicorn", models, log, workers, env) as server:
        yield server


def front_command(python: str = sys.executable) -> list[str]:
    """The launcher `make serve` and the Docker image run: nginx in front of gunicorn."""
    return [python, "-m", "front.serve"]


@contextmanager
def running_front(
    model_dir: Path,
    log: Path,
    workers: int = 1,
    env: dict[str, str] | None = None,
    photo_model_dir: Path | None = None,
    photo_low_model_dir: Path | None = None,
    python: str = sys.executable,
) -> Iterator[Server]:
    """The service as `make serve` starts it (nginx on a free loopback port, gunicorn on a
    unix socket behind it), yielded once /readyz through nginx says 200; SIGTERM and wait
    after. ``process`` is the launcher; the models as for ``running_gunicorn``.

    Started as root, the service stays root (``SSM_USER=root``) unless ``env`` names its
    user: a test's model folders lie under pytest's private temporary directory, which no
    other user may enter."""
    env = {"SSM_USER": "root", **(env or {})}
    models = (model_dir, photo_model_dir, photo_low_model_dir)
    with running(front_command(python), "the front", models, log, workers, env) as server:
        yield server


@contextmanager
def running(
    command: list[str],
    name: str,
    models: tuple[Path, Path | None, Path | None],
    log: Path,
    workers: int,
    env: dict[str, str] | None,
) -> Iterator[Server]:
    port = free_port()
    model_dir, photo_model_dir, photo_low_model_dir = models
    environment = {
        **os.environ,
        "SSM_BIND": f"127.0.0.1:{port}",
        "SSM_WORKERS": str(workers),
        "SSM_MODEL_DIR": str(model_dir),
        "SSM_PHOTO_MODEL_DIR": str(photo_model_dir) if photo_model_dir else "none",
        "SSM_PHOTO_LOW_MODEL_DIR": str(photo_low_model_dir) if photo_low_model_dir else "none",
        **(env or {}),
    }
    with open(log, "wb") as output:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=environment, stdout=output, stderr=subprocess.STDOUT
        )
    server = Server(port, log, process)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited:\n" + server.log_text())
            try:
                if request(port, "GET", "/readyz", timeout=5)[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        else:
            raise RuntimeError(f"{name} did not become ready:\n" + server.log_text())
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=90)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
