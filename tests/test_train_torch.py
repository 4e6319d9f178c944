"""The PyTorch trainer (for GPU machines): it learns, resumes exactly, and what it writes
is served by TensorFlow with the same output."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from trainfactory import tiny, wave_images

from supersizeme.modelspec import RDNParams
from supersizeme.toolchain import train as tf_train
from supersizeme.toolchain.torch_rdn import TorchRDN
from supersizeme.toolchain.train import read_checkpoint
from supersizeme.toolchain.train_torch import train

pytestmark = pytest.mark.training  # trains small networks


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    return wave_images(tmp_path_factory.mktemp("hr"))


@pytest.fixture(scope="module")
def trained(image_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("torch-run")
    config = tiny(image_folder, out)
    train(config)
    return config, out / "ckpt.npz"


def test_loss_falls(trained):
    _, checkpoint = trained
    state = read_checkpoint(checkpoint)[0]
    assert state["step"] == 60 and len(state["losses"]) == 60
    assert np.mean(state["losses"][-10:]) < 0.6 * np.mean(state["losses"][:10])
    assert state["trainer"].startswith("pytorch") and state["adam_step"] == 60


def test_resume_continues_exactly(image_folder, tmp_path):
    train(tiny(image_folder, tmp_path / "straight", steps=8, checkpoint_every=4))
    halves = tiny(image_folder, tmp_path / "halves", steps=4, checkpoint_every=4)
    train(halves)
    train(dataclasses.replace(halves, steps=8, resume=True))
    a_state, a_weights, _ = read_checkpoint(tmp_path / "straight" / "ckpt.npz")
    b_state, b_weights, _ = read_checkpoint(tmp_path / "halves" / "ckpt.npz")
    assert b_state["step"] == 8 and b_state["adam_step"] == 8
    assert a_state["losses"] == b_state["losses"]
    assert a_weights.keys() == b_weights.keys() == TorchRDN(halves.params).keras_weights().keys()
    for name in a_weights:
        np.testing.assert_array_equal(a_weights[name], b_weights[name])


def test_the_served_network_gives_the_trained_networks_output(trained, tmp_path):
    from supersizeme.rdn import load_rdn
    from supersizeme.toolchain.export import write_folder

    _, checkpoint = trained
    folder = write_folder(checkpoint, tmp_path / "model", {"evaluation": None})
    served = load_rdn(folder)

    state, weights, _ = read_checkpoint(checkpoint)
    network = TorchRDN(RDNParams.from_json(state["params"]))
    network.load_keras_weights(weights)
    lr = np.random.default_rng(2).random((1, 17, 23, 3), np.float32)
    with torch.no_grad():
        ours = network(torch.from_numpy(lr).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(np.asarray(served(lr, training=False)), ours, atol=2e-5)


def test_tensorflow_carries_on_from_a_pytorch_checkpoint(trained, tmp_path):
    config, checkpoint = trained
    out = tmp_path / "carry-on"
    out.mkdir()
    (out / "ckpt.npz").write_bytes(checkpoint.read_bytes())
    tf_train.train(dataclasses.replace(config, out=str(out), steps=64, resume=True))
    state, weights, _ = read_checkpoint(out / "ckpt.npz")
    assert state["step"] == 64 and len(state["losses"]) == 64
    # Picked up where PyTorch stopped: the first TensorFlow losses are as low as its last.
    assert np.mean(state["losses"][60:]) < 0.6 * np.mean(state["losses"][:10])
    assert weights.keys() == read_checkpoint(checkpoint)[1].keys()


def test_a_tensorflow_checkpoint_starts_a_pytorch_run(image_folder, tmp_path):
    tf_run = tiny(image_folder, tmp_path / "tf", steps=40)
    tf_train.train(tf_run)
    tf_losses = read_checkpoint(tmp_path / "tf" / "ckpt.npz")[0]["losses"]
    # New batch size and schedule; the weights carry over, the step count does not.
    gpu_run = tiny(
        image_folder,
        tmp_path / "gpu",
        steps=5,
        batch=8,
        init_from=str(tmp_path / "tf" / "ckpt.npz"),
    )
    train(gpu_run)
    state = read_checkpoint(tmp_path / "gpu" / "ckpt.npz")[0]
    assert state["step"] == 5 and state["config"]["batch"] == 8
    assert np.mean(state["losses"]) < 0.6 * np.mean(tf_losses[:10])

    with pytest.raises(SystemExit, match="holds"):
        train(dataclasses.replace(gpu_run, D=3, out=str(tmp_path / "other")))


def test_both_trainers_take_the_luma_loss_alike(image_folder, trained, tmp_path):
    """From the same weights, the first batch (the same: the sampler is seeded) gives the
    same luma-weighted loss in PyTorch and TensorFlow, and not the RGB one."""
    _, checkpoint = trained
    first = {}
    for name, trainer, loss in (
        ("torch", train, "l1-luma"),
        ("tf", tf_train.train, "l1-luma"),
        ("rgb", train, "l1"),
    ):
        run = dataclasses.replace(
            tiny(image_folder, tmp_path / name, steps=1, loss=loss),
            init_from=str(checkpoint),
        )
        trainer(run)
        first[name] = read_checkpoint(tmp_path / name / "ckpt.npz")[0]["losses"][0]
    assert first["torch"] == pytest.approx(first["tf"], rel=1e-4)
    assert abs(first["torch"] - first["rgb"]) > 0.05 * first["rgb"]
