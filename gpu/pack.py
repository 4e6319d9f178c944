"""Carry checkpoints back from a GPU machine, whose $OUT returns files of at most 16 MiB.

    python gpu/pack.py pack RUN/ckpt.npz OUT/NAME     # there: NAME.npz (+ NAME.part2.npz ...)
    python gpu/pack.py unpack OUT/NAME runs/NAME.npz  # here: one checkpoint again

A checkpoint that fits travels whole (weights, Adam moments, progress: --resume works on
it). A larger one travels as its weights and state only, cut into parts that fit, which
is all that ``supersizeme.export`` and ``--init-from`` need.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

PART_BYTES = 15 * 2**20
WEIGHT_PREFIX = "w/"  # supersizeme.train's; not imported, so that this runs without Flask


def pack(ckpt: Path, prefix: Path) -> list[Path]:
    with np.load(ckpt) as data:
        arrays = {name: data[name] for name in data}
    if sum(a.nbytes for a in arrays.values()) > PART_BYTES:
        arrays = {k: a for k, a in arrays.items() if k == "meta" or k.startswith(WEIGHT_PREFIX)}
    parts: list[dict[str, np.ndarray]] = [{}]
    for name, array in arrays.items():
        if parts[-1] and sum(a.nbytes for a in parts[-1].values()) + array.nbytes > PART_BYTES:
            parts.append({})
        parts[-1][name] = array
    paths = []
    for i, part in enumerate(parts):
        paths.append(prefix.with_name(prefix.name + (f".part{i + 1}" if i else "") + ".npz"))
        np.savez(paths[-1], **part)
    return paths


def unpack(prefix: Path, ckpt: Path) -> None:
    arrays: dict[str, np.ndarray] = {}
    parts = sorted(prefix.parent.glob(prefix.name + ".part*.npz"))
    for path in [prefix.with_name(prefix.name + ".npz"), *parts]:
        with np.load(path) as data:
            arrays.update({name: data[name] for name in data})
    np.savez(ckpt, **arrays)


if __name__ == "__main__":
    verb, source, target = sys.argv[1:4]
    if verb == "pack":
        print(*pack(Path(source), Path(target)))
    else:
        unpack(Path(source), Path(target))
