"""Super Size Me: a Flask service that enlarges PNG and JPEG images 2x with an RDN."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from flask import Flask

from supersizeme.modelspec import ModelFolder
from supersizeme.service import config as settings
from supersizeme.service.admission import InferenceGate
from supersizeme.service.capacity import memory_limit_bytes
from supersizeme.service.upscaler import LoadSettings, ModelSlot, PixelCap

log = logging.getLogger("supersizeme")


def _exit_worker(slot: ModelSlot) -> None:
    # Exit status 3 is gunicorn's "worker failed to boot": the master stops instead of
    # forking replacement workers that would fail the same way.
    log.critical("models %s failed to load: %s; stopping", _paths(slot), slot.error)
    logging.shutdown()
    os._exit(3)


def _paths(slot: ModelSlot) -> str:
    return ", ".join(str(folder.path) for folder in slot.folders.values())


def _log_through_gunicorn() -> None:
    """Send the app's log lines to gunicorn's error log, with its level and format.

    The one-per-request JSON lines go to standard output on their own, with no prefix, so
    that a log collector can parse every line of that stream as JSON; they are the access
    log, written whatever gunicorn's log level.
    """
    server_log = logging.getLogger("gunicorn.error")
    if server_log.handlers and not log.handlers:
        log.handlers = server_log.handlers
        log.setLevel(server_log.level)
        log.propagate = False
        request_log = logging.getLogger("supersizeme.requests")
        request_log.handlers = [logging.StreamHandler(sys.stdout)]
        request_log.setLevel(logging.INFO)
        request_log.propagate = False


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """The application factory: one app per gunicorn worker, created after the fork.

    The model is loaded here, before the worker accepts its first connection, so that a
    missing or mismatched weights file stops start-up with a clear message and a fresh
    worker (after a restart or max_requests) never answers "not ready" while the other
    workers could have served. With SSM_LOAD_IN_BACKGROUND the folder is still checked
    here, but the network loads in a thread while /healthz answers and /readyz says 503
    (for platforms that probe a worker while it starts).
    """
    _log_through_gunicorn()
    app = Flask(__name__)
    # werkzeug would answer "//supersizeme//model" with a redirect to an absolute URL built
    # from the request's Host header; without merging, such a path is simply not found.
    app.url_map.merge_slashes = False
    app.config.from_mapping(settings.from_environment())
    if test_config:
        app.config.from_mapping(test_config)
    app.config["MAX_CONTENT_LENGTH"] = (
        app.config["MAX_BODY_BYTES"] + settings.MULTIPART_OVERHEAD_BYTES
    )

    config = app.config
    folders = {role: ModelFolder.open(path) for role, path in settings.model_dirs(config).items()}
    slot = ModelSlot(
        folders,
        LoadSettings(
            runtime=config["RUNTIME"],
            precision=config["PRECISION"],
            tile=config["TILE"],
            threads=config["THREADS"],
            streams=config["STREAMS"],
        ),
        PixelCap(
            config["MAX_PIXELS"],
            config["DEADLINE_SECONDS"],
            config["MEMORY_BYTES"] or memory_limit_bytes(),
            config["WORKERS"],
        ),
    )
    app.extensions["supersizeme.model"] = slot
    app.extensions["supersizeme.gate"] = InferenceGate(
        config["MAX_WAITING"], slot.settings.tiles_at_once
    )
    # Imported here, not at the top: gunicorn's master imports this package with its config,
    # and prometheus_client must not be imported there before gunicorn.conf.py has set
    # PROMETHEUS_MULTIPROC_DIR (it picks its storage once, at import).
    from supersizeme.service.telemetry import Telemetry

    app.extensions["supersizeme.service.telemetry"] = Telemetry(slot.folders, slot.precision)
    if app.config["LOAD_IN_BACKGROUND"]:
        slot.load_in_background(on_failure=_exit_worker)
    else:
        try:
            slot.load()
        except Exception:
            log.critical("models %s failed to load: %s; stopping", _paths(slot), slot.error)
            raise

    from supersizeme.service.api import bp

    app.register_blueprint(bp)
    return app
