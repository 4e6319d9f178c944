"""The shipped model folders, clean and photo: complete, loadable, and documented with the
same numbers."""

from __future__ import annotations

import json

import pytest

from supersizeme.modelspec import ModelFolder
from supersizeme.service.config import (
    DEFAULT_MODEL,
    DEFAULT_PHOTO_LOW_MODEL,
    DEFAULT_PHOTO_MODEL,
    REPO_ROOT,
)

# Each shipped folder, and the degradation its training record must name.
SHIPPED = {
    DEFAULT_MODEL: "bicubic",
    DEFAULT_PHOTO_MODEL: "jpeg-high",
    DEFAULT_PHOTO_LOW_MODEL: "jpeg-low",
}
PHOTO_MODELS = [DEFAULT_PHOTO_MODEL, DEFAULT_PHOTO_LOW_MODEL]


@pytest.fixture(params=list(SHIPPED))
def shipped(request):
    return REPO_ROOT / "models" / request.param


def test_folder_is_complete_and_checksummed(shipped):
    folder = ModelFolder.open(shipped)  # verifies the sha256 of the weights
    assert shipped.name.startswith(folder.params.name)
    assert (shipped / "MODEL_CARD.md").is_file()
    assert folder.spec["training"]["steps"] > 0
    assert folder.spec["training"].get("degradation", "bicubic") == SHIPPED[shipped.name]


def test_card_and_docs_quote_the_measured_numbers(shipped):
    spec = json.loads((shipped / "model.json").read_text())
    card = (shipped / "MODEL_CARD.md").read_text()
    docs = (REPO_ROOT / "docs" / "model.md").read_text()
    evaluation = spec["evaluation"]
    assert {"set5", "set14", "bsd100"} <= set(evaluation)
    for rows in evaluation.values():
        for row in rows.values():
            quoted = f"{row['psnr']:.2f} / {row['ssim']:.4f}"
            assert quoted in card, quoted
            if shipped.name == DEFAULT_MODEL:
                assert quoted in docs, quoted


@pytest.mark.parametrize("name", PHOTO_MODELS)
def test_the_photo_models_card_has_its_jpeg_evaluation(name):
    folder = ModelFolder.open(REPO_ROOT / "models" / name)
    jpeg = folder.spec["evaluation_jpeg"]
    assert {"90", "75", "50"} <= set(jpeg)
    card = (folder.path / "MODEL_CARD.md").read_text()
    assert all(f"| JPEG q{quality} |" in card for quality in jpeg)


def test_the_committed_checkpoint_holds_the_shipped_weights(shipped):
    """So that training carries on from exactly what is served (either trainer)."""
    import numpy as np

    from supersizeme.rdn import load_rdn, named_weights
    from supersizeme.toolchain.train import read_checkpoint

    state, weights, _ = read_checkpoint(shipped / "training-checkpoint.npz")
    served = named_weights(load_rdn(ModelFolder.open(shipped)))
    assert state["params"] == ModelFolder.open(shipped).params.to_json()
    assert weights.keys() == served.keys()
    assert all(np.array_equal(weights[name], served[name]) for name in served)
