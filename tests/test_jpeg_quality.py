"""A JPEG's quality, read back from its quantization table (service/jpeg_quality.py)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from supersizeme.service.jpeg_quality import STANDARD_LUMINANCE, estimate_quality, scaled_table


def saved(quality: int, subsampling: int = 2) -> Image.Image:
    pixels = np.random.default_rng(quality).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=quality, subsampling=subsampling)
    return Image.open(io.BytesIO(buffer.getvalue()))


def test_quality_50_is_the_standard_table():
    assert np.array_equal(scaled_table(50), STANDARD_LUMINANCE)
    assert scaled_table(100).max() == 1 and scaled_table(1).max() == 255


@pytest.mark.parametrize("quality", [1, 10, 29, 30, 49, 50, 51, 75, 90, 94, 95, 96, 99, 100])
@pytest.mark.parametrize("subsampling", [0, 2])
def test_pillows_files_give_back_the_quality_they_were_saved_at(quality, subsampling):
    assert estimate_quality(saved(quality, subsampling).quantization[0]) == quality


def test_a_table_of_its_own_gets_the_nearest_quality():
    # A camera's table: quality 92's, every entry one step coarser.
    own = scaled_table(92) + 1
    assert estimate_quality(own.tolist()) in (90, 91, 92)


def test_a_table_must_have_64_entries():
    with pytest.raises(ValueError, match="64"):
        estimate_quality([1] * 63)
