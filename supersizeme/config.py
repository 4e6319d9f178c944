"""Every setting of the service, in one place, with its default and environment variable.

``create_app`` reads these once; tests pass overrides instead of touching the
environment. The README's configuration table lists the same variables.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

from supersizeme.images import Limits

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = "rdn-C3-D6-G32-G032-x2"

MAX_BODY_BYTES = 5 * 1024 * 1024
# A multipart upload wraps the file in boundaries and part headers; this much extra is
# allowed on the whole request so that a file of exactly 5 MB still fits.
MULTIPART_OVERHEAD_BYTES = 64 * 1024


def env(name: str, default: Any, kind: type = str) -> Any:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    if kind is bool:
        return value.strip().lower() in ("1", "true", "yes", "on")
    return kind(value)


def cpu_count() -> int:
    """Cores this process may use: its CPU affinity, capped by a cgroup v2 CPU quota.

    In a container limited with ``--cpus`` the affinity still lists every host core; the
    quota in cpu.max is what the scheduler enforces.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cores = min(cores, max(1, int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    return cores


def hardware() -> str:
    """CPU model, usable cores and platform, e.g. ``AMD EPYC, 2 cores, Linux x86_64``."""
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {cpu_count()} cores, {platform.system()} {platform.machine()}"


def default_workers() -> int:
    return env("SSM_WORKERS", cpu_count(), int)


def from_environment() -> dict[str, Any]:
    """The service's settings: environment variables over the built-in defaults."""
    workers = default_workers()
    return {
        "MODEL_DIR": env("SSM_MODEL_DIR", str(REPO_ROOT / "models" / DEFAULT_MODEL)),
        "PRECISION": env("SSM_PRECISION", "float32"),
        "TILE": env("SSM_TILE", 512, int),
        "TF_THREADS": env("SSM_TF_THREADS", max(1, cpu_count() // workers), int),
        "MAX_BODY_BYTES": env("SSM_MAX_BODY_BYTES", MAX_BODY_BYTES, int),
        "MAX_PIXELS": env("SSM_MAX_PIXELS", Limits.max_pixels, int),
        "MIN_SIDE": env("SSM_MIN_SIDE", Limits.min_side, int),
        "DEADLINE_SECONDS": env("SSM_DEADLINE_SECONDS", 60.0, float),
        "LOAD_IN_BACKGROUND": env("SSM_LOAD_IN_BACKGROUND", False, bool),
        "MAX_WAITING": env("SSM_MAX_WAITING", 2, int),
        "RETRY_AFTER_SECONDS": env("SSM_RETRY_AFTER_SECONDS", 5, int),
    }
