"""A short training run: the loss falls, and a checkpoint resumes to the same next step;
the batches (clean or degraded), the validation sets, and the --degradation and --loss
settings."""

from __future__ import annotations

import dataclasses
import hashlib
import re
import signal

import numpy as np
import pytest
from trainfactory import tiny, wave_images

from supersizeme.toolchain.degradation import DEGRADATIONS, VALIDATION_QUALITIES, jpeg_round_trip
from supersizeme.toolchain.quality import rgb_to_y
from supersizeme.toolchain.train import (
    DEGRADE_MARGIN,
    LOSS_COLOUR_ROWS,
    Run,
    TrainConfig,
    augment,
    learning_rate,
    parse_args,
    read_checkpoint,
    sample_batch,
    train,
    validation_sets,
    write_checkpoint,
)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    return wave_images(tmp_path_factory.mktemp("hr"))


@pytest.mark.training  # trains a small network
def test_loss_falls(image_folder, tmp_path):
    train(tiny(image_folder, tmp_path))
    state = read_checkpoint(tmp_path / "ckpt.npz")[0]
    losses = state["losses"]
    assert state["step"] == 60 and len(losses) == 60
    assert np.mean(losses[-10:]) < 0.6 * np.mean(losses[:10])
    assert (tmp_path / "weights.weights.h5").is_file()


@pytest.mark.training  # trains a small network
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


def blocky_pairs(seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """(HR, LR) pairs whose HR is its random LR enlarged by pixel repetition, so that an
    aligned pair of crops satisfies LR == HR[::2, ::2] under each of the 8 symmetries,
    and a crop taken one LR pixel off does not."""
    rng = np.random.default_rng(seed)
    pairs = []
    for shape in [(40, 48, 3), (30, 36, 3)]:
        lr = rng.integers(0, 256, shape, dtype=np.uint8)
        pairs.append((lr.repeat(2, axis=0).repeat(2, axis=1), lr))
    return pairs


WEIGHTS = np.array([0.6, 0.4])


# What the sampler drew from blocky_pairs() with seed 9 before the degradations existed (16
# patches of 8): a bicubic run must keep drawing exactly this, so that its checkpoints resume
# to the same batches. sha256 prefixes of the float32 batches, and the generator's next draw.
BEFORE_DEGRADATIONS = ("c7cd96734ac735f7", "d23f0cc432fdffac", 23208601)


def levels(batch: np.ndarray) -> np.ndarray:
    """A [0, 1] float batch back on integer levels."""
    return np.rint(batch * 255).astype(np.int16)


def test_without_a_degradation_the_batches_are_aligned_and_as_before():
    pairs = blocky_pairs()
    rng = np.random.default_rng(9)
    lr_batch, hr_batch = sample_batch(rng, pairs, WEIGHTS, 16, 8, 2)
    assert lr_batch.shape == (16, 8, 8, 3) and hr_batch.shape == (16, 16, 16, 3)
    assert lr_batch.dtype == hr_batch.dtype == np.float32
    np.testing.assert_array_equal(levels(lr_batch), levels(hr_batch)[:, ::2, ::2])
    digests = tuple(hashlib.sha256(b.tobytes()).hexdigest()[:16] for b in (lr_batch, hr_batch))
    # The same batches, and the same draws, no more.
    assert (*digests, int(rng.integers(0, 2**32))) == BEFORE_DEGRADATIONS
    assert len({item.tobytes() for item in lr_batch}) == 16  # crops from all over


def test_an_identity_degradation_keeps_the_crops_aligned_at_a_random_offset():
    seen = []

    def identity(crop, rng):
        seen.append(crop.copy())
        return crop

    pairs = blocky_pairs()
    lr_batch, hr_batch = sample_batch(
        np.random.default_rng(4), pairs, WEIGHTS, 16, 8, 2, degrade=identity
    )
    side = 8 + DEGRADE_MARGIN
    assert len(seen) == 16
    assert all(crop.shape == (side, side, 3) and crop.dtype == np.uint8 for crop in seen)
    np.testing.assert_array_equal(levels(lr_batch), levels(hr_batch)[:, ::2, ::2])
    # Each patch is a window of the crop the degradation saw, at an offset within the margin.
    offsets = set()
    for crop, patch in zip(seen, levels(lr_batch), strict=True):
        found = [
            (oy, ox)
            for oy in range(DEGRADE_MARGIN + 1)
            for ox in range(DEGRADE_MARGIN + 1)
            if np.array_equal(crop[oy : oy + 8, ox : ox + 8], patch)
        ]
        assert len(found) == 1
        offsets |= set(found)
    assert len(offsets) > 8  # random, not always the corner


def test_the_degradation_changes_the_lr_patch_only():
    def brighter(crop, rng):
        return np.minimum(crop.astype(np.int16) + 1, 255).astype(np.uint8)

    pairs = blocky_pairs()
    lr_batch, hr_batch = sample_batch(
        np.random.default_rng(4), pairs, WEIGHTS, 16, 8, 2, degrade=brighter
    )
    aligned = levels(hr_batch)[:, ::2, ::2]
    np.testing.assert_array_equal(levels(lr_batch), np.minimum(aligned + 1, 255))
    assert (aligned == 255).any()  # the clipping was exercised


def test_the_degradation_draws_from_the_batch_generator():
    def noisy(crop, rng):
        return rng.integers(0, 256, crop.shape, dtype=np.uint8)

    pairs = blocky_pairs()
    first = sample_batch(np.random.default_rng(4), pairs, WEIGHTS, 4, 8, 2, degrade=noisy)
    again = sample_batch(np.random.default_rng(4), pairs, WEIGHTS, 4, 8, 2, degrade=noisy)
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])


def test_validation_sets_are_clean_and_for_jpeg_each_validation_quality(image_folder):
    assert validation_sets(TrainConfig(), compressed=True) == {}  # no --val
    config = TrainConfig(val=str(image_folder))
    clean = validation_sets(config, compressed=False)
    assert list(clean) == ["clean"] and len(clean["clean"]) == 4
    sets = validation_sets(config, compressed=True)
    assert list(sets) == ["clean"] + [f"q{quality}" for quality in VALIDATION_QUALITIES]
    for (hr, lr), (clean_hr, clean_lr) in zip(sets["clean"], clean["clean"], strict=True):
        np.testing.assert_array_equal(hr, clean_hr)
        np.testing.assert_array_equal(lr, clean_lr)
    for quality in VALIDATION_QUALITIES:
        pairs = sets[f"q{quality}"]
        assert len(pairs) == len(sets["clean"])
        for (hr, lr), (clean_hr, clean_lr) in zip(pairs, sets["clean"], strict=True):
            assert hr is clean_hr  # shared, not copied
            assert lr.shape == clean_lr.shape and lr.dtype == np.uint8
            assert not np.array_equal(lr, clean_lr)
            np.testing.assert_array_equal(lr, jpeg_round_trip(clean_lr, quality, "4:2:0"))


def minimal_checkpoint(path, config: dict) -> None:
    state = {"config": config, "params": TrainConfig().params.to_json(), "step": 0}
    write_checkpoint(path, state, {"w/F_m1/bias": np.zeros(4, np.float32)})


def test_a_checkpoint_from_before_degradations_reads_as_bicubic(tmp_path):
    config = dataclasses.asdict(TrainConfig(degradation="jpeg"))
    minimal_checkpoint(tmp_path / "new.npz", config)
    assert read_checkpoint(tmp_path / "new.npz")[0]["config"]["degradation"] == "jpeg"
    del config["degradation"]
    minimal_checkpoint(tmp_path / "old.npz", config)
    assert read_checkpoint(tmp_path / "old.npz")[0]["config"]["degradation"] == "bicubic"


def test_resuming_keeps_the_checkpoints_degradation(tmp_path):
    config = dataclasses.asdict(TrainConfig())
    del config["degradation"]
    minimal_checkpoint(tmp_path / "ckpt.npz", config)
    run = Run(TrainConfig(out=str(tmp_path), resume=True, degradation="jpeg"))
    assert run.config.degradation == "bicubic"


def test_the_degradation_option():
    assert parse_args(["--data", "d"]).degradation == "bicubic"
    assert parse_args(["--data", "d", "--degradation", "jpeg"]).degradation == "jpeg"


def test_an_unknown_degradation_stops_the_run_before_any_work(tmp_path):
    def never(*args):
        raise AssertionError("called")

    run = Run(TrainConfig(out=str(tmp_path), degradation="gaussian"))
    with pytest.raises(SystemExit, match=r"gaussian.*'bicubic', 'jpeg'"):
        run.loop(never, never, never)
    assert not (tmp_path / "params.json").exists()


def test_a_jpeg_run_trains_on_jpeg_patches_and_reports_each_quality(
    image_folder, tmp_path, capsys, monkeypatch
):
    batches, checkpoints, degraded = [], [], []
    jpeg = DEGRADATIONS["jpeg"]

    def recording(crop, rng):
        degraded.append(crop.shape)
        return jpeg(crop, rng)

    monkeypatch.setitem(DEGRADATIONS, "jpeg", recording)

    def take_step(lr_batch, hr_batch, lr_value):
        batches.append((lr_batch, hr_batch))
        return 0.1

    def nearest(batch):
        return batch.repeat(2, axis=1).repeat(2, axis=2)

    config = tiny(image_folder, tmp_path, degradation="jpeg", steps=2, batch=2)
    config = dataclasses.replace(config, val=str(image_folder), eval_every=1)
    previous = signal.getsignal(signal.SIGTERM)  # the loop installs its own
    try:
        Run(config).loop(take_step, lambda: checkpoints.append(1), nearest)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert len(batches) == 2 and len(checkpoints) == 1
    assert degraded == [(12 + DEGRADE_MARGIN, 12 + DEGRADE_MARGIN, 3)] * 4  # every crop
    for lr_batch, hr_batch in batches:
        assert lr_batch.shape == (2, 12, 12, 3) and hr_batch.shape == (2, 24, 24, 3)
    out = capsys.readouterr().out
    assert out.splitlines()[0].endswith(", jpeg")  # the run names its degradation
    labels = ", ".join(rf"q{quality} \d+\.\d+" for quality in VALIDATION_QUALITIES)
    assert len(re.findall(rf"Y-PSNR \(dB\) clean \d+\.\d+, {labels}\n", out)) == 2


def test_the_luma_loss_weighs_the_luma_psnr_is_judged_on_and_a_quarter_of_each_chroma():
    rng = np.random.default_rng(4)
    sr, hr = rng.random((2, 6, 5, 3))
    mapped = (sr - hr) @ LOSS_COLOUR_ROWS["l1-luma"].T.astype(np.float64)
    # Row 0 is the evaluation's luma, on [0, 1] values.
    np.testing.assert_allclose(
        mapped[..., 0] * 255, rgb_to_y(sr * 255) - rgb_to_y(hr * 255), atol=1e-5
    )
    # A grey difference has no chroma; each chroma row spans what a full-weight one would.
    grey = np.full((1, 3), 0.1) @ LOSS_COLOUR_ROWS["l1-luma"].T.astype(np.float64)
    np.testing.assert_allclose(grey[0, 1:], 0, atol=1e-6)
    for row in LOSS_COLOUR_ROWS["l1-luma"][1:]:
        assert np.abs(row).max() == pytest.approx(0.25 * 112 / 255)
    np.testing.assert_array_equal(LOSS_COLOUR_ROWS["l1"], np.eye(3))


def test_the_loss_option_and_checkpoints_from_before_it(tmp_path):
    assert parse_args(["--data", "d"]).loss == "l1"
    assert parse_args(["--data", "d", "--loss", "l1-luma"]).loss == "l1-luma"
    with pytest.raises(SystemExit):
        parse_args(["--data", "d", "--loss", "l2"])
    config = dataclasses.asdict(TrainConfig(loss="l1-luma"))
    del config["loss"]
    minimal_checkpoint(tmp_path / "ckpt.npz", config)
    assert read_checkpoint(tmp_path / "ckpt.npz")[0]["config"]["loss"] == "l1"
    # Resuming keeps the loss the run was trained with.
    assert Run(TrainConfig(out=str(tmp_path), resume=True, loss="l1-luma")).config.loss == "l1"


def test_an_unknown_loss_stops_the_run_before_any_work(tmp_path):
    def never(*args):
        raise AssertionError("called")

    with pytest.raises(SystemExit, match=r"l2.*'l1', 'l1-luma'"):
        Run(TrainConfig(out=str(tmp_path), loss="l2")).loop(never, never, never)
