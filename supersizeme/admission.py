"""Who may run the network in this worker, and who must wait or go away.

One inference at a time per worker: the network already spreads one image over the
worker's share of the cores, and a second at once would only slow both. A few requests
may wait for their turn (until their deadline, or until their client hangs up); beyond
that they are turned away at once, so that a gthread worker always has a thread left for
/healthz, /readyz and quick refusals.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from supersizeme.tiling import Stop

# How often a waiting request looks at its client and its deadline: a client that hangs up
# gives its place back within this. Each look is one non-blocking socket peek per waiter.
WAIT_SLICE_SECONDS = 0.1


class Overloaded(Exception):
    """Every inference slot of this worker is taken and its waiting room is full."""


class InferenceGate:
    def __init__(self, max_waiting: int):
        self._turn = threading.Lock()
        self._places = 1 + max_waiting  # the one running and those waiting
        self._taken = 0
        self._counting = threading.Lock()

    def has_room(self) -> bool:
        """Whether a request arriving now would find a place, without taking one.

        Asked before an upload is read, so that a full worker refuses without reading it.
        The place itself is taken only in ``turn``, once the image is read and decoded: a
        slow upload must not hold a place that a request ready to compute could use.
        """
        with self._counting:
            return self._taken < self._places

    @contextmanager
    def turn(self, stop: Stop) -> Iterator[None]:
        """Hold the worker's inference turn.

        Raises Overloaded if no place is free, and whatever ``stop.check`` raises
        (DeadlineExceeded, ClientGone) while waiting, giving the place back at once.
        """
        with self._counting:
            if self._taken >= self._places:
                raise Overloaded
            self._taken += 1
        try:
            # Waited for in slices rather than in one blocking acquire, so that a waiter
            # whose client has gone does not keep its place until the deadline.
            while not self._turn.acquire(timeout=self._slice(stop)):
                stop.check()
            try:
                yield
            finally:
                self._turn.release()
        finally:
            with self._counting:
                self._taken -= 1

    @staticmethod
    def _slice(stop: Stop) -> float:
        left = stop.seconds_left()
        return WAIT_SLICE_SECONDS if left is None else min(WAIT_SLICE_SECONDS, left)
