"""The serving image, built from the Dockerfile and run with podman (``make test-container``).

The image runs as Docker would run it hardened: ``--read-only`` without podman's own tmpfs
mounts (Docker's ``--read-only`` has none), every capability dropped, no new privileges,
and SSM_BIND on a port other than the default, so the HEALTHCHECK must follow it. What
these machines need of podman is kept here, not in the Dockerfile: the runc runtime (crun
refuses their hybrid cgroups), explicit open-file and process limits (their sandbox refuses
others), the Docker image format (podman's OCI format drops HEALTHCHECK), and a stand-in
base image (tests/container/stand-in-base.sh) where the official one cannot be pulled.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from PIL import Image

from benchmarks.gunicorn_server import free_port, request
from benchmarks.imagefactory import camera_jpeg, gradient, png
from supersizeme.service.config import REPO_ROOT

pytestmark = pytest.mark.container

IMAGE = "localhost/supersizeme:container-test"
PODMAN = ["podman", "--runtime", "runc"]
LIMITS = ["--ulimit", "nofile=20000:20000", "--ulimit", "nproc=32768:32768"]
HARDENED = [
    "--read-only",
    "--read-only-tmpfs=false",
    "--cap-drop=ALL",
    "--security-opt",
    "no-new-privileges",
]
PORT_INSIDE = 9000
# gunicorn's graceful timeout with the default SSM_DEADLINE_SECONDS (60 + 10, gunicorn.conf.py).
DRAIN_SECONDS = 70


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*PODMAN, *args], capture_output=True, text=True, timeout=timeout, check=check
    )


@pytest.fixture(scope="module")
def image() -> str:
    if shutil.which("podman") is None:
        pytest.fail("podman is missing: `make test-container` installs it")
    subprocess.run(
        ["sh", str(REPO_ROOT / "tests" / "container" / "stand-in-base.sh")], check=True, timeout=900
    )
    podman("build", "--format", "docker", "-t", IMAGE, str(REPO_ROOT), timeout=1200)
    return IMAGE


@dataclass
class Container:
    name: str
    port: int

    def inspect(self, template: str) -> str:
        return podman("inspect", "--format", template, self.name).stdout.strip()


@pytest.fixture(scope="module")
def container(image) -> Iterator[Container]:
    name = f"ssm-test-{free_port()}"
    port = free_port()
    podman(
        "run", "-d", "--name", name, *LIMITS, *HARDENED,
        "-e", f"SSM_BIND=0.0.0.0:{PORT_INSIDE}",
        "-p", f"127.0.0.1:{port}:{PORT_INSIDE}",
        image,
    )  # fmt: skip
    running = Container(name, port)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if request(port, "GET", "/readyz", timeout=5)[0] == 200:
                    break
            except OSError:
                pass
            assert running.inspect("{{.State.Running}}") == "true", podman("logs", name).stderr
            time.sleep(1)
        else:
            pytest.fail("not ready in 180 s:\n" + podman("logs", name, check=False).stderr)
        yield running
    finally:
        podman("rm", "-f", name, check=False)


def test_serving_image_has_no_toolchain(image):
    probe = (
        "import importlib.util as u; "
        "print([m for m in ('tensorflow', 'keras', 'ISR', 'torch') if u.find_spec(m)])"
    )
    found = podman("run", "--rm", *LIMITS, image, "python", "-c", probe).stdout.strip()
    assert found == "[]"
    size = int(podman("image", "inspect", "--format", "{{.Size}}", image).stdout)
    print(f"\nserving image: {size / 1e6:.0f} MB")


def test_upscales_as_an_unprivileged_user_on_a_read_only_root(container):
    source = gradient(96, 64)
    status, _, body = request(
        container.port, "POST", "/supersizeme/", png(Image.fromarray(source)),
        {"Content-Type": "image/png"},
    )  # fmt: skip
    assert status == 200, body[:300]
    result = Image.open(io.BytesIO(body))
    assert (result.format, result.size) == ("PNG", (192, 128))
    users = podman("top", container.name, "user").stdout.split()[1:]
    assert users and set(users) == {"supersizeme"}
    assert container.inspect("{{.Config.User}}") == "10001"
    touched = podman("exec", container.name, "touch", "/app/written", check=False)
    assert touched.returncode != 0
    # /tmp is the image's volume, writable under --read-only.
    assert podman("exec", container.name, "touch", "/tmp/written", check=False).returncode == 0


def test_healthcheck_follows_ssm_bind(container):
    test = json.loads(container.inspect("{{json .Config.Healthcheck.Test}}"))
    assert test == ["CMD", "python", "-m", "front.healthcheck"]
    assert podman("healthcheck", "run", container.name, check=False).returncode == 0
    assert container.inspect("{{.State.Health.Status}}") == "healthy"


def test_without_a_writable_tmp_it_says_what_to_mount(image):
    started = time.monotonic()
    completed = podman(
        "run", "--rm", *LIMITS, *HARDENED, "--tmpfs", "/tmp:ro", image, timeout=60, check=False
    )
    assert completed.returncode == 2
    assert time.monotonic() - started < 30
    lines = [line for line in completed.stderr.splitlines() if line.startswith("front:")]
    assert len(lines) == 1 and "mount one at /tmp" in lines[0], completed.stderr


def test_stop_lets_an_upscale_in_flight_finish(container):
    """Last in the module: it stops the container."""
    photo = camera_jpeg(1200, 900)
    answers: list[tuple[int, bytes, float]] = []

    def upscale() -> None:
        status, _, body = request(
            container.port, "POST", "/supersizeme/", photo, {"Content-Type": "image/jpeg"},
            timeout=DRAIN_SECONDS,
        )  # fmt: skip
        answers.append((status, body, time.monotonic()))

    client = threading.Thread(target=upscale)
    client.start()
    time.sleep(1.0)  # the body is in and the upscale under way
    started = time.monotonic()
    podman("stop", "-t", str(DRAIN_SECONDS + 10), container.name, timeout=DRAIN_SECONDS + 30)
    stopped_in = time.monotonic() - started
    client.join(10)
    assert answers, "no answer"
    status, body, answered = answers[0]
    assert status == 200, body[:300]
    assert answered > started, "the upscale ended before the stop: nothing was drained"
    assert Image.open(io.BytesIO(body)).size == (2400, 1800)
    assert container.inspect("{{.State.ExitCode}}") == "0"
    assert stopped_in < DRAIN_SECONDS
