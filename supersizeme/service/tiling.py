"""Tiled inference whose output does not depend on the tile size.

Each tile is cut from the input with ``overlap`` extra pixels of context on every side
that has neighbours, run through the network, and only its core is kept. When the
overlap is at least the network's receptive radius, every kept output pixel saw exactly
the input it would have seen in one whole-image pass, so tiles leave no seam and memory
per request is bounded by the tile size rather than the image size. At the image's own
borders no context is added: the network pads there with zeros, as it does for the
whole image.

Tiles are independent, so one image can run on several of the runtime's streams at once
(``lanes``): an image that would be a single tile is then cut into one tile per lane, at
the price of the context its cuts add.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from supersizeme.service.levels import quantised
from supersizeme.service.threads import mapped

# (1, h, w, 3) float32 in [0, 1] -> (1, h * scale, w * scale, 3) float32
Network = Callable[[np.ndarray], np.ndarray]


class DeadlineExceeded(Exception):
    """The request's deadline passed before its work was done."""


class ClientGone(Exception):
    """The client closed its connection: nobody is left to read the answer."""


def never_gone() -> bool:
    """The client check of work with no client to lose: the CLI, the evaluation, a request
    without its socket."""
    return False


@dataclass(frozen=True)
class Stop:
    """When the work for one request must end early: at its deadline, or once its client
    has hung up. Checked between tiles and while waiting for the inference turn, so an
    abandoned or overdue request costs at most one more tile.
    """

    deadline: float | None = None  # a time.monotonic() instant
    client_gone: Callable[[], bool] = never_gone

    def check(self) -> None:
        """Raise ClientGone or DeadlineExceeded if the work should stop now."""
        # The client first: when both hold, the answer could not be delivered anyway, and
        # the log should say the client left rather than that the server was slow.
        if self.client_gone():
            raise ClientGone
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise DeadlineExceeded

    def seconds_left(self) -> float | None:
        """Seconds until the deadline (0 once past), or None without one."""
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())


def even_spans(length: int, count: int) -> list[tuple[int, int]]:
    """``count`` half-open spans of near-equal size that cover ``range(length)``."""
    edges = np.linspace(0, length, count + 1).round().astype(int)
    return list(zip(edges[:-1].tolist(), edges[1:].tolist(), strict=True))


def tile_spans(length: int, tile: int) -> list[tuple[int, int]]:
    """Half-open spans of at most ``tile`` that cover ``range(length)``, sized evenly.

    Even sizes avoid a sliver tile at the end, which would cost a whole overlap of
    context for a few pixels of output.
    """
    return even_spans(length, max(1, -(-length // tile)))


Box = tuple[int, int, int, int]  # top, bottom, left, right of a tile's kept core


def tile_boxes(height: int, width: int, tile: int, lanes: int = 1, min_cut: int = 1) -> list[Box]:
    """The tiles of an image: at most ``tile`` on a side, and at least ``lanes`` of them
    where the image allows pieces of at least ``min_cut`` pixels on the side that is cut.

    Extra cuts run along the tiles' shorter side, where a cut adds the least context.
    """
    rows, cols = -(-height // tile), -(-width // tile)
    while rows * cols < lanes:
        if height / rows >= width / cols and height // (rows + 1) >= min_cut:
            rows += 1
        elif width // (cols + 1) >= min_cut:
            cols += 1
        elif height // (rows + 1) >= min_cut:
            rows += 1
        else:
            break
    return [
        (y0, y1, x0, x1)
        for y0, y1 in even_spans(height, rows)
        for x0, x1 in even_spans(width, cols)
    ]


@dataclass(frozen=True)
class TiledUpscaler:
    """An image upscaled tile by tile by ``network``, which makes each side ``scale`` times
    larger.

    Tiles are ``tile`` pixels on a side, each cut with ``overlap`` pixels of context on
    every side that has neighbours, so that no seam shows between them.
    """

    network: Network
    scale: int
    overlap: int
    tile: int = 512

    def __call__(
        self,
        image: np.ndarray,
        stop: Stop | None = None,
        lanes: int = 1,
        dtype: type[np.generic] = np.float32,
    ) -> np.ndarray:
        """Upscale an HxWx3 float image on up to ``lanes`` tiles at once, checking ``stop``
        before each tile.

        The result is float32, or with ``dtype`` uint8 (or uint16) levels, rounded tile by
        tile: a photo's x2 result then takes a quarter of the memory, and no float copy of
        it is ever made. ``network`` must accept calls from ``lanes`` threads at once.
        """
        height, width = image.shape[:2]
        s, pad = self.scale, self.overlap
        output = np.empty((height * s, width * s, image.shape[2]), dtype)

        def run(box: Box) -> None:
            if stop is not None:
                stop.check()
            y0, y1, x0, x1 = box
            top, left = max(0, y0 - pad), max(0, x0 - pad)
            bottom, right = min(height, y1 + pad), min(width, x1 + pad)
            result = self.network(image[None, top:bottom, left:right])[0]
            core = result[(y0 - top) * s : (y1 - top) * s, (x0 - left) * s : (x1 - left) * s]
            if dtype == np.float32:
                output[y0 * s : y1 * s, x0 * s : x1 * s] = core
            else:
                quantised(core, dtype, out=output[y0 * s : y1 * s, x0 * s : x1 * s])

        # A cut is worth it only where the context it adds (an overlap on each side) is
        # small beside the piece it makes.
        boxes = tile_boxes(height, width, self.tile, lanes, min_cut=4 * pad)
        # A tile that raises (the stop) drops the tiles not started; those running finish.
        mapped(run, boxes, lanes, "tile")
        return output
