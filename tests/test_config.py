"""The service's settings (service/config.py): the models served, by role."""

from __future__ import annotations

import pytest

from supersizeme.service import config


def test_every_model_is_served_by_default(monkeypatch):
    for variable in ("SSM_MODEL_DIR", "SSM_PHOTO_MODEL_DIR", "SSM_PHOTO_LOW_MODEL_DIR"):
        monkeypatch.delenv(variable, raising=False)
    dirs = config.model_dirs(config.from_environment())
    names = {role: folder.rsplit("/", 1)[-1] for role, folder in dirs.items()}
    assert names == {
        "clean": config.DEFAULT_MODEL,
        "photo": config.DEFAULT_PHOTO_MODEL,
        "photo-low": config.DEFAULT_PHOTO_LOW_MODEL,
    }


@pytest.mark.parametrize(
    ("photo", "photo_low", "roles"),
    [
        ("/m/photo", "/m/low", ["clean", "photo", "photo-low"]),
        ("/m/photo", "none", ["clean", "photo"]),
        ("none", "/m/low", ["clean"]),  # one switch turns every photo model off
        ("NONE", "none", ["clean"]),
    ],
)
def test_none_leaves_a_photo_model_out(monkeypatch, photo, photo_low, roles):
    monkeypatch.setenv("SSM_MODEL_DIR", "/m/clean")
    monkeypatch.setenv("SSM_PHOTO_MODEL_DIR", photo)
    monkeypatch.setenv("SSM_PHOTO_LOW_MODEL_DIR", photo_low)
    dirs = config.model_dirs(config.from_environment())
    assert list(dirs) == roles
    assert dirs["clean"] == "/m/clean"
