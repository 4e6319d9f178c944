# Super Size Me: x2 super-resolution over HTTP, with the shipped RDN weights baked in, behind
# the same nginx front as `make serve` (front/), started by the same launcher.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SSM_BIND=0.0.0.0:8000

# nginx buffers whole requests and answers before gunicorn sees them (front/nginx.conf says
# why). Pinned by the base image's Debian release rather than by exact version: Debian's
# security updates replace the exact version, which would then no longer install.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends nginx \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app

# The same two install steps as the Makefile: pinned requirements, then ISR without
# its obsolete dependency pins.
COPY requirements.txt requirements-isr.txt ./
RUN pip install -r requirements.txt \
    && pip install --no-deps -r requirements-isr.txt

COPY app.py gunicorn.conf.py ./
COPY supersizeme ./supersizeme
COPY front ./front
COPY models ./models

RUN useradd --system --uid 10001 --no-create-home supersizeme
USER 10001

EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4).status != 200)"]

# The launcher runs nginx on SSM_BIND and gunicorn behind it, as one service: SIGTERM
# lets requests in flight finish (gunicorn answers them, nginx relays the answers), and if
# either process dies the other is stopped and the container exits. It is PID 1, so it also
# reaps what is orphaned. Everything it writes goes to a temporary directory under /tmp
# (SSM_FRONT_TEMP_DIR), so the root file system may be read-only.
CMD ["python", "-m", "front.serve"]
