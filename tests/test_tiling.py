import itertools
import threading
import time

import numpy as np
import pytest

from supersizeme.service.levels import quantised
from supersizeme.service.tiling import (
    ClientGone,
    DeadlineExceeded,
    Stop,
    TiledUpscaler,
    tile_boxes,
    tile_spans,
)


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


def test_tiles_kept_as_uint8_are_the_float_result_rounded():
    image = np.random.default_rng(2).random((61, 47, 3), dtype=np.float32) * 1.2 - 0.1
    upscaler = TiledUpscaler(box_blur_network(passes=2), scale=2, overlap=2, tile=16)
    levels = upscaler(image, dtype=np.uint8)
    assert levels.dtype == np.uint8
    np.testing.assert_array_equal(levels, quantised(upscaler(image), np.uint8))


def test_too_little_overlap_shows_seams():
    image = np.random.default_rng(1).random((40, 40, 3), dtype=np.float32)
    network = box_blur_network(passes=4)
    tiled = TiledUpscaler(network, scale=2, overlap=2, tile=16)(image)
    assert np.abs(tiled - network(image[None])[0]).max() > 1e-3


def test_deadline_is_checked_between_tiles():
    image = np.zeros((40, 40, 3), np.float32)
    with pytest.raises(DeadlineExceeded):
        TiledUpscaler(box_blur_network(1), scale=2, overlap=1, tile=16)(image, Stop(deadline=0.0))


class CountingNetwork:
    """Nearest x2 that counts its calls and, from call ``gone_after`` on, says the client left."""

    def __init__(self, gone_after: int):
        self.calls = 0
        self.gone_after = gone_after

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.calls += 1
        return batch.repeat(2, axis=1).repeat(2, axis=2)

    def client_gone(self) -> bool:
        return self.calls >= self.gone_after


def test_a_client_that_hangs_up_costs_at_most_the_tile_in_progress():
    network = CountingNetwork(gone_after=3)
    upscale = TiledUpscaler(network, scale=2, overlap=1, tile=10)
    with pytest.raises(ClientGone):
        upscale(np.zeros((40, 40, 3), np.float32), Stop(client_gone=network.client_gone))
    assert network.calls == 3  # of 16 tiles: the client left during the third


def test_stop_without_limits_never_stops():
    stop = Stop()
    stop.check()
    assert stop.seconds_left() is None


def test_stop_at_the_deadline():
    Stop(deadline=time.monotonic() + 60).check()
    assert 59 < Stop(deadline=time.monotonic() + 60).seconds_left() <= 60
    past = Stop(deadline=time.monotonic() - 1)
    assert past.seconds_left() == 0.0
    with pytest.raises(DeadlineExceeded):
        past.check()


def test_a_gone_client_is_reported_before_a_passed_deadline():
    # Both at once: the answer could not be delivered, so the log must say the client left.
    with pytest.raises(ClientGone):
        Stop(deadline=time.monotonic() - 1, client_gone=lambda: True).check()


def covered(boxes, height, width):
    cover = np.zeros((height, width), int)
    for y0, y1, x0, x1 in boxes:
        cover[y0:y1, x0:x1] += 1
    return cover


@pytest.mark.parametrize(
    "height,width,tile,lanes,count",
    [
        (512, 512, 512, 1, 1),
        (512, 512, 512, 2, 2),  # one tile cut in two for two streams
        (300, 900, 512, 2, 2),
        (512, 512, 512, 3, 4),  # a grid: two rows of two
        (1633, 1224, 512, 2, 12),  # already more tiles than lanes: none added
        (60, 40, 512, 4, 1),  # too small to cut into pieces of min_cut
    ],
)
def test_tile_boxes_cover_the_image_once_in_at_least_one_tile_per_lane(
    height, width, tile, lanes, count
):
    boxes = tile_boxes(height, width, tile, lanes, min_cut=52)
    assert len(boxes) == count
    assert (covered(boxes, height, width) == 1).all()
    assert all(y1 - y0 <= tile and x1 - x0 <= tile for y0, y1, x0, x1 in boxes)


def test_an_extra_cut_runs_along_the_shorter_side():
    (first, second) = tile_boxes(300, 900, 1000, lanes=2)
    assert first[:2] == second[:2] == (0, 300)  # columns: each cut is 300 long, not 900


class ConcurrentNetwork:
    """box_blur_network that records how many calls overlapped in time."""

    def __init__(self, passes: int):
        self.network = box_blur_network(passes)
        self.running = self.most = 0
        self.lock = threading.Lock()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        time.sleep(0.05)
        try:
            return self.network(batch)
        finally:
            with self.lock:
                self.running -= 1


def test_tiles_on_several_lanes_run_at_once_and_match_the_whole_image():
    image = np.random.default_rng(2).random((61, 47, 3), dtype=np.float32)
    network = ConcurrentNetwork(passes=4)
    tiled = TiledUpscaler(network, scale=2, overlap=4, tile=64)(image, lanes=2)
    assert network.most == 2
    np.testing.assert_allclose(tiled, network.network(image[None])[0], atol=1e-6)


def test_a_client_that_hangs_up_costs_at_most_one_tile_per_lane():
    network = CountingNetwork(gone_after=3)
    upscale = TiledUpscaler(network, scale=2, overlap=1, tile=10)
    with pytest.raises(ClientGone):
        upscale(np.zeros((40, 40, 3), np.float32), Stop(client_gone=network.client_gone), lanes=2)
    assert network.calls <= 3 + 1  # of 16 tiles
