# Two commands do everything on a fresh machine with Python 3.11:
#   make serve   create .venv, install the pinned requirements, serve on port 8000
#   make test    the same install plus the test tools, then lint and the whole suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 8000

.PHONY: install install-dev serve test lint browser clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.runtime: requirements.txt requirements-isr.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -r requirements-isr.txt
	touch $@

$(VENV)/.dev: requirements-dev.txt $(VENV)/.runtime
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@

install: $(VENV)/.runtime

install-dev: $(VENV)/.dev

serve: install
	SSM_BIND=0.0.0.0:$(PORT) $(BIN)/gunicorn --config gunicorn.conf.py app:app

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/hadolint Dockerfile

# The demo page's tests drive Debian's Chromium (Playwright's own browser download is not
# used). It is installed only when missing, and only with apt-get as root; elsewhere the
# browser tests skip (and fail under CI, which sets CI).
browser:
	@if [ ! -x /usr/bin/chromium ]; then \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	      apt-get install -y -qq chromium fonts-dejavu-core >/dev/null; \
	  else \
	    echo "no /usr/bin/chromium: tests/test_demo.py will skip its browser tests"; \
	  fi; \
	fi

test: lint browser
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
