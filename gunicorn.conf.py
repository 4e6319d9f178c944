"""gunicorn settings for Super Size Me (``gunicorn --config gunicorn.conf.py app:app``).

Each setting is read from the environment (see supersizeme/config.py and the README)
so that a container or a Makefile can change it without editing this file.
"""

from supersizeme import config as settings

_deadline = float(settings.from_environment()["DEADLINE_SECONDS"])

bind = settings.env("SSM_BIND", "0.0.0.0:8000")

# One worker per core by default, each with TensorFlow restricted to cores // workers
# intra-op threads (SSM_TF_THREADS), so that workers x threads = cores: a request then
# runs on its own core without fighting the others. Each worker holds its own copy of
# the model (TensorFlow is not fork-safe, so no --preload and nothing shared).
workers = settings.default_workers()

# gthread: a few threads per worker so that /healthz, /readyz and quick refusals are
# answered while a long inference runs; inference itself is serialised per worker by
# a lock in the app, so threads do not oversubscribe the cores.
worker_class = "gthread"
threads = settings.env("SSM_GUNICORN_THREADS", 4, int)

# The app ends every request at its own deadline (503); gunicorn's timeout is a
# backstop above it for a worker that stops responding altogether.
timeout = int(_deadline) + 30
# On SIGTERM, requests in flight get up to one deadline to finish.
graceful_timeout = int(_deadline) + 10
keepalive = 5

# Recycle workers now and then to bound any slow growth (TensorFlow's allocator,
# fragmentation); the jitter keeps all workers from restarting at the same moment.
max_requests = settings.env("SSM_MAX_REQUESTS", 1000, int)
max_requests_jitter = max_requests // 10

preload_app = False

accesslog = "-"
errorlog = "-"
loglevel = settings.env("SSM_LOG_LEVEL", "info")

# gunicorn 27's control socket lives under $HOME/.gunicorn; the container's user has no
# home, and nothing here uses the socket, so it is off.
control_socket_disable = True
