"""A short training run: the loss falls, and a checkpoint resumes to the same next step."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image

from supersizeme.train import TrainConfig, augment, learning_rate, read_checkpoint, train


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hr")
    rng = np.random.default_rng(3)
    y, x = np.mgrid[0:96, 0:128]
    for i in range(4):
        waves = np.sin(x / (4 + i) + rng.random() * 6) + np.cos(y / (5 + i))
        rgb = np.stack([waves, waves * 0.5, -waves], axis=2) * 60 + 128
        Image.fromarray(rgb.clip(0, 255).astype(np.uint8)).save(folder / f"img{i}.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


def tiny(image_folder, out, **changes) -> TrainConfig:
    config = TrainConfig(
        C=1,
        D=2,
        G=8,
        G0=8,
        data=str(image_folder),
        patch=12,
        batch=4,
        lr=2e-3,
        warmup=5,
        steps=60,
        precision="float32",
        threads=1,
        out=str(out),
        checkpoint_every=20,
    )
    return dataclasses.replace(config, **changes)


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
    for a, b in zip(a_weights, b_weights, strict=True):
        np.testing.assert_array_equal(a, b)


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
