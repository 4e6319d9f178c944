"""Every setting of the service, in one place, with its default and environment variable.

``create_app`` reads these once; tests pass overrides instead of touching the
environment. docs/operations.md's configuration table lists the same variables.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from supersizeme.machine import cpu_count
from supersizeme.service.images import Limits
from supersizeme.service.routing import CLEAN, PHOTO, PHOTO_LOW

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = "rdn-C3-D6-G32-G032-x2"
# The same network trained for JPEG-compressed inputs, one per band of qualities
# (service/routing.py).
DEFAULT_PHOTO_MODEL = "rdn-C3-D6-G32-G032-x2-jpeg-high"
DEFAULT_PHOTO_LOW_MODEL = "rdn-C3-D6-G32-G032-x2-jpeg-low"
# SSM_PHOTO_MODEL_DIR=none serves every upload with the clean model;
# SSM_PHOTO_LOW_MODEL_DIR=none every JPEG below the clean model's band with the photo model.
NO_MODEL = "none"
# Each model's setting, by role; a photo-low model is served only beside a photo model.
MODEL_SETTINGS = {CLEAN: "MODEL_DIR", PHOTO: "PHOTO_MODEL_DIR", PHOTO_LOW: "PHOTO_LOW_MODEL_DIR"}

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


def default_workers() -> int:
    """One worker per replica, with an inference stream on every core.

    Its streams run concurrent requests side by side and a lone request's tiles on every
    core (benchmarks/runtime.md compares this with one worker per core); it also holds one
    copy of the model instead of one per core.
    """
    return env("SSM_WORKERS", 1, int)


def optional_model_dir(variable: str, default: str) -> str | None:
    value = env(variable, str(REPO_ROOT / "models" / default))
    return None if value.strip().lower() == NO_MODEL else value


def model_dirs(config: dict[str, Any]) -> dict[str, str]:
    """The folders of the models a worker serves, by role (routing), from its settings."""
    dirs = {role: config.get(key) for role, key in MODEL_SETTINGS.items()}
    if not dirs[PHOTO]:
        dirs[PHOTO_LOW] = None
    return {role: folder for role, folder in dirs.items() if folder}


def from_environment() -> dict[str, Any]:
    """The service's settings: environment variables over the built-in defaults."""
    workers = default_workers()
    return {
        "MODEL_DIR": env("SSM_MODEL_DIR", str(REPO_ROOT / "models" / DEFAULT_MODEL)),
        # The models for JPEG uploads (routing.JPEG_BANDS); None: none, the model of the
        # band above serves them.
        "PHOTO_MODEL_DIR": optional_model_dir("SSM_PHOTO_MODEL_DIR", DEFAULT_PHOTO_MODEL),
        "PHOTO_LOW_MODEL_DIR": optional_model_dir(
            "SSM_PHOTO_LOW_MODEL_DIR", DEFAULT_PHOTO_LOW_MODEL
        ),
        "RUNTIME": env("SSM_RUNTIME", "openvino"),
        "PRECISION": env("SSM_PRECISION", "auto"),
        "TILE": env("SSM_TILE", 512, int),
        "THREADS": env("SSM_THREADS", max(1, cpu_count() // workers), int),
        # Tiles computed at once, sharing the threads; 0: one per thread (OpenVINO).
        "STREAMS": env("SSM_STREAMS", 0, int),
        "MAX_BODY_BYTES": env("SSM_MAX_BODY_BYTES", MAX_BODY_BYTES, int),
        # Input pixel cap at x2. An operator's cap is kept as set; left unset (None), each
        # worker decides its own from its measured speed and memory (capacity.decide_cap).
        "MAX_PIXELS": env("SSM_MAX_PIXELS", None, int),
        # The replica's memory, which the workers share: by default its cgroup's limit.
        "MEMORY_BYTES": env("SSM_MEMORY_BYTES", None, int),
        "WORKERS": workers,
        "MIN_SIDE": env("SSM_MIN_SIDE", Limits.min_side, int),
        "DEADLINE_SECONDS": env("SSM_DEADLINE_SECONDS", 60.0, float),
        "UPLOAD_SECONDS": env("SSM_UPLOAD_SECONDS", 60.0, float),
        "LOAD_IN_BACKGROUND": env("SSM_LOAD_IN_BACKGROUND", False, bool),
        "MAX_WAITING": env("SSM_MAX_WAITING", 4, int),
        "RETRY_AFTER_SECONDS": env("SSM_RETRY_AFTER_SECONDS", 5, int),
    }
