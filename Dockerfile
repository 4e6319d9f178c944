# Super Size Me: x2 super-resolution over HTTP, with the shipped RDN weights baked in, behind
# the same nginx front as `make serve` (front/), started by the same launcher.
#
# The default target is the serving image: only what a worker imports (OpenVINO, Pillow,
# Flask, gunicorn; requirements-serve.txt) and nginx. `--target toolchain` adds TensorFlow,
# Keras and ISR (requirements.txt) for training, exporting and evaluating models.
FROM python:3.11-slim-bookworm AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SSM_BIND=0.0.0.0:8000

# Pinned by the base image's Debian release rather than by exact version: Debian's security
# updates replace the exact version, which would then no longer install.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends nginx \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app

COPY requirements-serve.txt ./
RUN pip install -r requirements-serve.txt \
    && useradd --system --uid 10001 --no-create-home supersizeme


FROM base AS toolchain

# The same two install steps as the Makefile: pinned requirements, then ISR without
# its obsolete dependency pins.
COPY requirements.txt requirements-isr.txt ./
RUN pip install -r requirements.txt \
    && pip install --no-deps -r requirements-isr.txt

COPY app.py gunicorn.conf.py ./
COPY supersizeme ./supersizeme
COPY models ./models

USER 10001


FROM base AS serve

COPY app.py gunicorn.conf.py ./
COPY supersizeme ./supersizeme
COPY front ./front
COPY models ./models

USER 10001

# Every write goes under /tmp (the front's nginx and gunicorn files, the metrics, spooled
# uploads), so the root file system may be read-only: a volume here keeps /tmp writable
# under `docker run --read-only` alone. Without a writable /tmp the launcher stops at once
# and says what to mount.
VOLUME ["/tmp"]

EXPOSE 8000
# Probes the address the front listens on (SSM_BIND), whatever it is set to.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-m", "front.healthcheck"]

# The launcher runs nginx on SSM_BIND and gunicorn behind it, as one service: SIGTERM
# lets requests in flight finish (gunicorn answers them within its graceful timeout,
# SSM_DEADLINE_SECONDS + 10 s, and nginx relays the answers; give `docker stop` that long),
# and if either process dies the other is stopped and the container exits. It is PID 1,
# so it also reaps what is orphaned.
CMD ["python", "-m", "front.serve"]
