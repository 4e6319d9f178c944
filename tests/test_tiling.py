import itertools

import numpy as np
import pytest

from supersizeme.tiling import DeadlineExceeded, TiledUpscaler, tile_spans


def box_blur_network(passes: int):
    """A stand-in network whose receptive radius is exactly ``passes`` pixels.

    ``passes`` zero-padded 3x3 box blurs (as 'same' convolutions pad), then nearest x2.
    """

    def run(batch: np.ndarray) -> np.ndarray:
        image = batch[0]
        for _ in range(passes):
            padded = np.pad(image, ((1, 1), (1, 1), (0, 0)))
            h, w = image.shape[:2]
            image = sum(padded[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)) / 9
        return image.repeat(2, axis=0).repeat(2, axis=1)[None]

    return run


@pytest.mark.parametrize("length,tile", [(1, 64), (64, 64), (65, 64), (1000, 300), (7, 3)])
def test_tile_spans_cover_without_gaps(length, tile):
    spans = tile_spans(length, tile)
    assert spans[0][0] == 0 and spans[-1][1] == length
    assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))
    assert all(0 < end - start <= tile for start, end in spans)


@pytest.mark.parametrize("tile", [16, 23, 50])
def test_tiles_with_enough_overlap_match_the_whole_image(tile):
    image = np.random.default_rng(0).random((61, 47, 3), dtype=np.float32)
    network = box_blur_network(passes=4)
    whole = network(image[None])[0]
    tiled = TiledUpscaler(network, scale=2, overlap=4, tile=tile)(image)
    np.testing.assert_allclose(tiled, whole, atol=1e-6)


def test_too_little_overlap_shows_seams():
    image = np.random.default_rng(1).random((40, 40, 3), dtype=np.float32)
    network = box_blur_network(passes=4)
    tiled = TiledUpscaler(network, scale=2, overlap=2, tile=16)(image)
    assert np.abs(tiled - network(image[None])[0]).max() > 1e-3


def test_deadline_is_checked_between_tiles():
    image = np.zeros((40, 40, 3), np.float32)
    with pytest.raises(DeadlineExceeded):
        TiledUpscaler(box_blur_network(1), scale=2, overlap=1, tile=16)(image, deadline=0.0)
