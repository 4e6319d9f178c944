"""Fixtures shared by the suite: tiny RDN model folders, the app and its test client.

The tiny RDN (C1-D1-G4) runs through the real loading and tiling code in milliseconds;
the app serves it as its clean model and two more, of other weights, as its photo and
photo-low models, so that routing shows in the results. Tests that need the shipped
models' quality use ``shipped_model_dir`` and the ``shipped_photo_*`` folders instead.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hosts import HOST_KINDS, HostKind

from supersizeme.modelspec import RDNParams
from supersizeme.service.config import (
    DEFAULT_MODEL,
    DEFAULT_PHOTO_LOW_MODEL,
    DEFAULT_PHOTO_MODEL,
    REPO_ROOT,
)

TINY = RDNParams(C=1, D=1, G=4, G0=4, scale=2)


def make_model_folder(path: Path, params: RDNParams = TINY, seed: int = 7) -> Path:
    import keras

    from supersizeme.rdn import build_rdn, save_model_folder

    keras.utils.set_random_seed(seed)
    save_model_folder(build_rdn(params), params, path, {"evaluation": None})
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return make_model_folder(tmp_path_factory.mktemp("models") / TINY.name)


@pytest.fixture(scope="session")
def tiny_photo_model_dir(tmp_path_factory) -> Path:
    return make_model_folder(tmp_path_factory.mktemp("photo") / f"{TINY.name}-jpeg", seed=8)


@pytest.fixture(scope="session")
def tiny_photo_low_model_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photo-low") / f"{TINY.name}-jpeg-low"
    return make_model_folder(folder, seed=9)


@pytest.fixture(scope="session")
def shipped_model_dir() -> Path:
    return REPO_ROOT / "models" / DEFAULT_MODEL


@pytest.fixture(scope="session")
def shipped_photo_model_dir() -> Path:
    return REPO_ROOT / "models" / DEFAULT_PHOTO_MODEL


@pytest.fixture(scope="session")
def shipped_photo_low_model_dir() -> Path:
    return REPO_ROOT / "models" / DEFAULT_PHOTO_LOW_MODEL


@pytest.fixture(scope="module")
def shipped_server(
    shipped_model_dir, shipped_photo_model_dir, shipped_photo_low_model_dir, tmp_path_factory
):
    """One gunicorn worker serving the three shipped models, for a test module."""
    from benchmarks.gunicorn_server import running_gunicorn

    log = tmp_path_factory.mktemp("gunicorn") / "server.log"
    with running_gunicorn(
        shipped_model_dir,
        log,
        photo_model_dir=shipped_photo_model_dir,
        photo_low_model_dir=shipped_photo_low_model_dir,
    ) as running:
        yield running


@pytest.fixture(params=HOST_KINDS, ids=[kind.name for kind in HOST_KINDS])
def host(request, tmp_path, monkeypatch) -> HostKind:
    """Each kind of host in turn, as this process's /proc/cpuinfo."""
    from supersizeme import machine

    fake = tmp_path / "cpuinfo"
    fake.write_text(request.param.cpuinfo)
    monkeypatch.setattr(machine, "CPUINFO", fake)
    return request.param


@pytest.fixture
def app(tiny_model_dir, tiny_photo_model_dir, tiny_photo_low_model_dir):
    from supersizeme.service.app import create_app

    return create_app(
        {
            "TESTING": True,
            "MODEL_DIR": str(tiny_model_dir),
            "PHOTO_MODEL_DIR": str(tiny_photo_model_dir),
            "PHOTO_LOW_MODEL_DIR": str(tiny_photo_low_model_dir),
            "TILE": 64,
        }
    )


@pytest.fixture
def client(app):
    return app.test_client()
