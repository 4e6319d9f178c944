"""toolchain/pack.py: a checkpoint too large for the device's $OUT comes back in parts, whole."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from supersizeme.toolchain import pack
from supersizeme.toolchain.train import WEIGHT_PREFIX, read_checkpoint, write_checkpoint

STATE = {"config": {"init": "fan-in", "degradation": "bicubic"}, "step": 7}


@pytest.fixture
def checkpoint(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    weights = {
        f"{WEIGHT_PREFIX}conv{i}/kernel": rng.random(150, dtype=np.float32) for i in range(4)
    }
    moments = {f"adam_m/conv{i}/kernel": rng.random(150, dtype=np.float32) for i in range(4)}
    path = tmp_path / "ckpt.npz"
    write_checkpoint(path, STATE, weights | moments)
    return path, weights | moments


def test_a_checkpoint_that_fits_travels_whole(checkpoint, tmp_path):
    path, arrays = checkpoint
    assert [p.name for p in pack.pack(path, tmp_path / "run")] == ["run.npz"]
    pack.unpack(tmp_path / "run", tmp_path / "back.npz")
    with np.load(tmp_path / "back.npz") as back:
        assert sorted(back.files) == sorted([*arrays, "meta"])
        assert all(np.array_equal(back[name], arrays[name]) for name in arrays)


def test_a_larger_one_travels_as_its_weights_in_parts(checkpoint, tmp_path, monkeypatch):
    path, arrays = checkpoint
    monkeypatch.setattr(pack, "PART_BYTES", 1500)  # the state and two 600-byte kernels a part
    parts = pack.pack(path, tmp_path / "run")
    assert [p.name for p in parts] == ["run.npz", "run.part2.npz"]
    pack.unpack(tmp_path / "run", tmp_path / "back.npz")
    state, weights, _ = read_checkpoint(tmp_path / "back.npz")
    assert state == read_checkpoint(path)[0]
    assert state["step"] == STATE["step"]
    assert weights.keys() == {
        name.removeprefix(WEIGHT_PREFIX) for name in arrays if name.startswith(WEIGHT_PREFIX)
    }
    assert all(
        np.array_equal(weights[n.removeprefix(WEIGHT_PREFIX)], a)
        for n, a in arrays.items()
        if n.startswith(WEIGHT_PREFIX)
    )
    with np.load(tmp_path / "back.npz") as back:
        assert not [name for name in back.files if name.startswith("adam")]
