"""The shipped model folder: complete, loadable, and documented with the same numbers."""

from __future__ import annotations

import json

from supersizeme.modelspec import ModelFolder
from supersizeme.service.config import REPO_ROOT


def test_folder_is_complete_and_checksummed(shipped_model_dir):
    folder = ModelFolder.open(shipped_model_dir)  # verifies the sha256 of the weights
    assert folder.params.name == shipped_model_dir.name
    assert (shipped_model_dir / "MODEL_CARD.md").is_file()
    assert folder.spec["training"]["steps"] > 0


def test_card_and_readme_quote_the_measured_numbers(shipped_model_dir):
    spec = json.loads((shipped_model_dir / "model.json").read_text())
    card = (shipped_model_dir / "MODEL_CARD.md").read_text()
    readme = (REPO_ROOT / "docs" / "model.md").read_text()
    evaluation = spec["evaluation"]
    assert {"set5", "set14", "bsd100"} <= set(evaluation)
    for rows in evaluation.values():
        for row in rows.values():
            quoted = f"{row['psnr']:.2f} / {row['ssim']:.4f}"
            assert quoted in card and quoted in readme, quoted


def test_the_committed_checkpoint_holds_the_shipped_weights(shipped_model_dir):
    """So that training carries on from exactly what is served (either trainer)."""
    import numpy as np

    from supersizeme.rdn import load_rdn, named_weights
    from supersizeme.toolchain.train import read_checkpoint

    state, weights, _ = read_checkpoint(shipped_model_dir / "training-checkpoint.npz")
    served = named_weights(load_rdn(ModelFolder.open(shipped_model_dir)))
    assert state["params"] == ModelFolder.open(shipped_model_dir).params.to_json()
    assert weights.keys() == served.keys()
    assert all(np.array_equal(weights[name], served[name]) for name in served)
