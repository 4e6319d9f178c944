# Two commands do everything on a fresh machine with Python 3.11:
#   make serve   create .venv, install the pinned requirements and nginx, serve on port 8000
#   make test    the same install plus the test tools, then lint and the whole suite
#   make test-fast   the unit and API tests only, in under a minute (no lint, no servers)
#   make test-container   builds the serving image and runs it with podman (CI runs it too)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 8000

.PHONY: install install-dev nginx serve test test-fast test-container podman lint browser clean gpu-bundle

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.runtime: requirements.txt requirements-serve.txt requirements-isr.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -r requirements-isr.txt
	touch $@

$(VENV)/.dev: requirements-dev.txt $(VENV)/.runtime
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@

install: $(VENV)/.runtime

install-dev: $(VENV)/.dev

# The buffering front (front/): nginx on the public port, gunicorn behind it on a unix socket.
# nginx is installed only when missing, and only with apt-get as root; elsewhere the
# script says what to install.
nginx:
	sh front/install-nginx.sh

serve: install nginx
	SSM_BIND=0.0.0.0:$(PORT) $(BIN)/python -m front.serve

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

test: lint browser nginx
	$(BIN)/python -m pytest -q -m "not container"

# The container test (tests/test_container.py): Debian's podman with runc and debootstrap
# (for a stand-in base image where the official one cannot be pulled), installed only when
# missing and only with apt-get as root, like Chromium above.
podman:
	@if ! command -v podman >/dev/null || ! command -v runc >/dev/null \
	    || ! command -v debootstrap >/dev/null; then \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	      apt-get install -y -qq podman runc debootstrap >/dev/null; \
	  else \
	    echo "make test-container needs podman, runc and debootstrap" >&2; exit 1; \
	  fi; \
	fi

test-container: install-dev podman
	$(BIN)/python -m pytest -q -s -m container tests/test_container.py

# The edit-test loop: every unit and API test, in-process, without gunicorn, nginx, Chromium,
# training or seconds-long model runs (the markers are declared in pyproject.toml), on every
# core (pytest-xdist). The PyTorch modules, all marked training, are not even collected:
# importing torch alone takes seconds. `make test` runs everything and is what CI runs.
test-fast: install-dev
	$(BIN)/python -m pytest -q -n auto -m "not (gunicorn or browser or training or slow or container)" \
	  --ignore=tests/test_torch_rdn.py --ignore=tests/test_train_torch.py

# What gpu/run.sh needs on a GPU machine that has PyTorch but not the data (see docs/model.md
# "Training on a GPU machine"): the training images with Set5 for the validation read-out,
# and the shipped models' checkpoints as init.npz for gpu/jobs.txt's --init-from and
# init-photo.npz for gpu/jobs-photo.txt's (git-ignored).
DATASETS ?= ../shared/datasets
gpu-bundle: install
	rm -rf .gpu-data
	mkdir -p .gpu-data
	cp -r $(DATASETS)/train .gpu-data/train
	cp -r $(DATASETS)/benchmark/set5 .gpu-data/set5
	cp models/rdn-C3-D6-G32-G032-x2/training-checkpoint.npz .gpu-data/init.npz
	cp models/rdn-C3-D6-G32-G032-x2-jpeg-high/training-checkpoint.npz .gpu-data/init-photo.npz
	cp models/rdn-C3-D6-G32-G032-x2-jpeg-low/training-checkpoint.npz .gpu-data/init-photo-low.npz

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .gpu-data
