"""Carry checkpoints back from a GPU machine, whose $OUT returns files of at most 16 MiB.

    python -m supersizeme.toolchain.pack pack RUN/ckpt.npz OUT/NAME     # there: NAME.npz (+ parts)
    python -m supersizeme.toolchain.pack unpack OUT/NAME runs/NAME.npz  # here: one checkpoint

A checkpoint that fits travels whole (weights, Adam moments, progress: --resume works on
it). A larger one travels as its weights and state only, cut into parts that fit, which
is all that ``supersizeme.toolchain.export`` and ``--init-from`` need.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from supersizeme.toolchain.train import WEIGHT_PREFIX

PART_BYTES = 15 * 2**20


def part_path(prefix: Path, index: int) -> Path:
    return prefix.with_name(prefix.name + (f".part{index + 1}" if index else "") + ".npz")


def pack(ckpt: Path, prefix: Path) -> list[Path]:
    with np.load(ckpt) as data:
        arrays = {name: data[name] for name in data}
    if sum(a.nbytes for a in arrays.values()) > PART_BYTES:
        arrays = {k: a for k, a in arrays.items() if k == "meta" or k.startswith(WEIGHT_PREFIX)}
    parts: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name, array in arrays.items():
        if parts[-1] and size + array.nbytes > PART_BYTES:
            parts.append({})
            size = 0
        parts[-1][name] = array
        size += array.nbytes
    paths = [part_path(prefix, i) for i in range(len(parts))]
    for path, part in zip(paths, parts, strict=True):
        np.savez(path, **part)
    return paths


def unpack(prefix: Path, ckpt: Path) -> None:
    arrays: dict[str, np.ndarray] = {}
    index = 0
    while (path := part_path(prefix, index)).exists():
        with np.load(path) as data:
            arrays.update({name: data[name] for name in data})
        index += 1
    np.savez(ckpt, **arrays)


if __name__ == "__main__":
    verb, source, target = sys.argv[1:4]
    if verb == "pack":
        print(*pack(Path(source), Path(target)))
    else:
        unpack(Path(source), Path(target))
