"""Float samples on the [0, 1] scale as whole levels of an unsigned integer type."""

from __future__ import annotations

import numpy as np

# Rows per step: the float temporaries are a few rows, never copies of a whole image.
ROWS = 256


def quantised(
    values: np.ndarray, dtype: type[np.unsignedinteger], out: np.ndarray | None = None
) -> np.ndarray:
    """``values`` clipped to [0, 1] and rounded to the nearest level of ``dtype`` (into
    ``out`` where given): truncation would darken every pixel by half a level."""
    top = np.iinfo(dtype).max
    if out is None:
        out = np.empty(values.shape, dtype)
    for row in range(0, values.shape[0], ROWS):
        band = np.clip(values[row : row + ROWS], 0.0, 1.0)
        band *= top
        out[row : row + ROWS] = np.rint(band, out=band)
    return out
