# Super Size Me: x2 super-resolution over HTTP, with the shipped RDN weights baked in.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SSM_BIND=0.0.0.0:8000

WORKDIR /app

# The same two install steps as the Makefile: pinned requirements, then ISR without
# its obsolete dependency pins.
COPY requirements.txt requirements-isr.txt ./
RUN pip install -r requirements.txt \
    && pip install --no-deps -r requirements-isr.txt

COPY app.py gunicorn.conf.py ./
COPY supersizeme ./supersizeme
COPY models ./models

RUN useradd --system --uid 10001 --no-create-home supersizeme
USER 10001

EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4).status != 200)"]

CMD ["gunicorn", "--config", "gunicorn.conf.py", "app:app"]
