"""gunicorn settings for Super Size Me (``gunicorn --config gunicorn.conf.py app:app``).

Each setting is read from the environment (see supersizeme/service/config.py and docs/operations.md)
so that a container or a Makefile can change it without editing this file.
"""

import os
import shutil
import tempfile
from pathlib import Path

from gunicorn.arbiter import Arbiter
from gunicorn.workers.base import Worker

from supersizeme.service import config as settings

_service = settings.from_environment()
_deadline = float(_service["DEADLINE_SECONDS"])

bind = settings.env("SSM_BIND", "0.0.0.0:8000")

# One worker by default, whose runtime spreads each image over every core (SSM_THREADS =
# cores // workers): a lone request gets the whole replica, and requests that arrive
# together queue for it instead of splitting the same cores (config.default_workers).
# More workers each load their own model after the fork (nothing shared, no --preload).
workers = settings.default_workers()

# gthread: a few threads per worker so that /healthz, /readyz and quick refusals are
# answered while a long inference runs; no more images compute at once than the runtime
# has streams (supersizeme/service/admission.py), so threads do not oversubscribe the cores.
# docs/operations.md says why not sync or gevent. Our subclass (supersizeme/service/worker.py)
# bounds the time a request line and headers may take, answers gunicorn's own refusals
# in JSON, counts only upscales towards max_requests and refuses new connections at once
# while stopping.
worker_class = "supersizeme.service.worker.StoppingThreadWorker"
# One image per stream runs (a stream per inference thread by default, so per core),
# SSM_MAX_WAITING (4) wait for their turn, and at least three more answer probes, scrapes
# and refusals, however many cores the host gives.
_images = (_service["STREAMS"] or _service["THREADS"]) + _service["MAX_WAITING"]
threads = settings.env("SSM_GUNICORN_THREADS", max(8, _images + 3), int)

# The app ends every request at its own deadline (503); gunicorn's timeout is a
# backstop above it for a worker that stops responding altogether.
timeout = int(_deadline) + 30
# On SIGTERM, requests in flight get up to one deadline to finish. Behind the front (nginx,
# front/) every body arrives whole at loopback speed, so the deadline is all they need; a
# gunicorn exposed directly may also be waiting on uploads (SSM_UPLOAD_SECONDS) and cut them.
graceful_timeout = int(_deadline) + 10
keepalive = 5

# Recycle workers after this many upscales (probes and scrapes do not count) to bound any
# slow growth (allocator fragmentation); the jitter keeps workers from restarting together.
max_requests = settings.env("SSM_MAX_REQUESTS", 1000, int)
max_requests_jitter = max_requests // 10

preload_app = False

# The app writes one JSON line per request to standard output (supersizeme/service/telemetry.py),
# with the request id, the error code and the timings that gunicorn's access line lacks;
# a second line per request would only double the volume. `--access-logfile -` on the
# command line brings gunicorn's back.
accesslog = None
errorlog = "-"
loglevel = settings.env("SSM_LOG_LEVEL", "info")

# gunicorn 27's control socket lives under $HOME/.gunicorn; the container's user has no
# home, and nothing here uses the socket, so it is off.
control_socket_disable = True


# Prometheus: each worker writes its series to files in PROMETHEUS_MULTIPROC_DIR, and
# /metrics adds up the files of all workers (supersizeme/service/telemetry.py). prometheus_client
# picks its storage when it is first imported, so the variable must be set in the master
# before any worker is forked, and nothing here may import prometheus_client before that.
_METRICS_DIR = "PROMETHEUS_MULTIPROC_DIR"


def on_starting(server: Arbiter) -> None:
    """Give the workers an empty directory for their metric files.

    An operator's own directory is kept but emptied: files left by an earlier run would
    add its counts to this one's. Without one, a private temporary directory is made and
    removed again at exit.
    """
    chosen = os.environ.get(_METRICS_DIR)
    if chosen:
        Path(chosen).mkdir(parents=True, exist_ok=True)
        for stale in Path(chosen).glob("*.db"):
            stale.unlink()
    else:
        os.environ[_METRICS_DIR] = server.ssm_metrics_dir = tempfile.mkdtemp(
            prefix="supersizeme-metrics-"
        )


def child_exit(server: Arbiter, worker: Worker) -> None:
    """A dead worker's requests stay counted, folded into one set of files for all dead
    workers (supersizeme/service/telemetry.py); its in-flight gauge and model info go."""
    from supersizeme.service.telemetry import fold_dead_worker

    try:
        folded = fold_dead_worker(worker.pid, Path(os.environ[_METRICS_DIR]))
    except Exception:
        # The master must outlive any trouble with a metric file; the counts stay where
        # they were.
        server.log.exception("could not fold the metric files of worker %s", worker.pid)
        return
    if not folded:
        server.log.warning("metric files of worker %s left unfolded: scrapes busy", worker.pid)


def on_exit(server: Arbiter) -> None:
    made = getattr(server, "ssm_metrics_dir", None)
    # After a USR2 upgrade the new master (reexec_pid) goes on using the directory.
    if made and not server.reexec_pid:
        shutil.rmtree(made, ignore_errors=True)
