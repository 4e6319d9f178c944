"""A tiny training set and configuration, for tests of either trainer."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from supersizeme.toolchain.train import TrainConfig


def wave_images(folder: Path) -> Path:
    """Four 128 x 96 images of smooth waves (learnable in a few dozen steps) and a stray file."""
    rng = np.random.default_rng(3)
    y, x = np.mgrid[0:96, 0:128]
    for i in range(4):
        waves = np.sin(x / (4 + i) + rng.random() * 6) + np.cos(y / (5 + i))
        rgb = np.stack([waves, waves * 0.5, -waves], axis=2) * 60 + 128
        Image.fromarray(rgb.clip(0, 255).astype(np.uint8)).save(folder / f"img{i}.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


def tiny(image_folder: Path, out: Path, **changes: Any) -> TrainConfig:
    """A C1-D2-G8 network on 12-pixel patches: a step takes milliseconds."""
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
