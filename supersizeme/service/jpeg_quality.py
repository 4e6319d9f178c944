"""The quality a JPEG was saved at, read back from its luminance quantization table.

libjpeg (and so Pillow, ImageMagick, most web tools) scales the standard table of the JPEG
specification (ITU-T T.81, Annex K, Table K.1) by the quality: a factor of 5000 / q below
50 and 200 - 2q from 50 on, in percent, each entry rounded and held to 1..255. The quality
whose scaled table is nearest the file's is the estimate: exact for libjpeg's files, and
the nearest equivalent for cameras and encoders with tables of their own.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import numpy as np

# ITU-T T.81 Table K.1, in natural (row by row) order, as Pillow's ``quantization`` gives it.
STANDARD_LUMINANCE = np.array(
    [
        16, 11, 10, 16, 24, 40, 51, 61,
        12, 12, 14, 19, 26, 58, 60, 55,
        14, 13, 16, 24, 40, 57, 69, 56,
        14, 17, 22, 29, 51, 87, 80, 62,
        18, 22, 37, 56, 68, 109, 103, 77,
        24, 35, 55, 64, 81, 104, 113, 92,
        49, 64, 78, 87, 103, 121, 120, 101,
        72, 92, 95, 98, 112, 100, 103, 99,
    ]
)  # fmt: skip


def scaled_table(quality: int) -> np.ndarray:
    """libjpeg's luminance table for ``quality`` (1..100), baseline (entries up to 255)."""
    factor = 5000 // quality if quality < 50 else 200 - 2 * quality
    return np.clip((STANDARD_LUMINANCE * factor + 50) // 100, 1, 255)


@cache
def _tables() -> np.ndarray:
    return np.stack([scaled_table(quality) for quality in range(1, 101)])


def estimate_quality(luminance: Sequence[int]) -> int:
    """The libjpeg quality (1..100) whose luminance table is nearest ``luminance``, the 64
    entries of a JPEG's first quantization table in natural order; ties go to the higher."""
    table = np.asarray(luminance, dtype=np.int64)
    if table.shape != (64,):
        raise ValueError(f"a quantization table has 64 entries, not {table.size}")
    # Relative distance, so that the large entries of low qualities do not outweigh the rest.
    distance = np.abs(np.log(_tables()) - np.log(np.maximum(table, 1))).sum(axis=1)
    return int(100 - np.argmin(distance[::-1]))
