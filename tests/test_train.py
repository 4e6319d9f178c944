"""A short training run: the loss falls, and a checkpoint resumes to the same next step."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from trainfactory import tiny, wave_images

from supersizeme.toolchain.train import TrainConfig, augment, learning_rate, read_checkpoint, train

pytestmark = pytest.mark.training  # trains small networks


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    return wave_images(tmp_path_factory.mktemp("hr"))


def test_loss_falls(image_folder, tmp_path):
    train(tiny(image_folder, tmp_path))
    state = read_checkpoint(tmp_path / "ckpt.npz")[0]
    losses = state["losses"]
    assert state["step"] == 60 and len(losses) == 60
    assert np.mean(losses[-10:]) < 0.6 * np.mean(losses[:10])
    assert (tmp_path / "weights.weights.h5").is_file()


def test_resume_continues_exactly(image_folder, tmp_path):
    straight = tiny(image_folder, tmp_path / "straight", steps=8, checkpoint_every=4)
    train(straight)
    halves = tiny(image_folder, tmp_path / "halves", steps=4, checkpoint_every=4)
    train(halves)
    assert read_checkpoint(tmp_path / "halves" / "ckpt.npz")[0]["step"] == 4
    train(dataclasses.replace(halves, steps=8, resume=True))
    a_state, a_weights, _ = read_checkpoint(tmp_path / "straight" / "ckpt.npz")
    b_state, b_weights, _ = read_checkpoint(tmp_path / "halves" / "ckpt.npz")
    assert b_state["step"] == 8
    assert a_state["losses"] == b_state["losses"]
    assert a_weights.keys() == b_weights.keys()
    for name in a_weights:
        np.testing.assert_array_equal(a_weights[name], b_weights[name])


def test_eight_distinct_symmetries():
    patch = np.arange(9).reshape(3, 3)
    variants = {augment(patch, t).tobytes() for t in range(8)}
    assert len(variants) == 8


def test_schedule_warms_up_then_decays_to_the_floor():
    config = TrainConfig(lr=1e-3, min_lr=1e-6, warmup=10, steps=110)
    assert learning_rate(config, 0, 0) == pytest.approx(1e-4)
    assert learning_rate(config, 10, 0) == pytest.approx(1e-3)
    assert learning_rate(config, 110, 0) == pytest.approx(1e-6)
    timed = dataclasses.replace(config, minutes=1.0)
    assert learning_rate(timed, 20, 60.0) == pytest.approx(1e-6)
