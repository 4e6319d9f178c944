"""Who may run the network in this worker, and who must wait or go away.

As many images compute at once as the runtime has streams, one stream each, so that
several requests share the cores without fighting over them; a request alone in the
worker gets every stream, and its tiles run side by side. A few requests
may wait for their turn (until their deadline, or until their client hangs up); beyond
that they are turned away at once, so that a gthread worker always has a thread left for
/healthz, /readyz and quick refusals.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from supersizeme.service.tiling import Stop

# How often a waiting request looks at its client and its deadline: a client that hangs up
# gives its place back within this. Each look is one non-blocking socket peek per waiter.
WAIT_SLICE_SECONDS = 0.1


class Overloaded(Exception):
    """Every inference slot of this worker is taken and its waiting room is full."""


class InferenceGate:
    def __init__(self, max_waiting: int, streams: int = 1):
        self._streams = streams
        self._turn = threading.Semaphore(streams)
        self._places = streams + max_waiting  # those running and those waiting
        self._taken = 0
        self._present = 0  # requests between ``present`` and their answer
        self._counting = threading.Lock()

    @contextmanager
    def present(self) -> Iterator[None]:
        """Count a request as in the worker, from before its upload is read to its answer.

        Raises Overloaded at once if there is no place for it, so that a full worker
        refuses without reading the upload. The place itself is taken only in ``turn``,
        once the image is read and decoded: a slow upload must not hold a place that a
        request ready to compute could use.
        """
        with self._counting:
            if self._taken >= self._places:
                raise Overloaded
            self._present += 1
        try:
            yield
        finally:
            with self._counting:
                self._present -= 1

    @contextmanager
    def turn(self, stop: Stop) -> Iterator[int]:
        """Hold one of the worker's inference turns; yields how many streams to use.

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
                yield self._lanes()
            finally:
                self._turn.release()
        finally:
            with self._counting:
                self._taken -= 1

    def _lanes(self) -> int:
        """Every stream for a request alone in the worker; one when others are running,
        waiting, or on their way in (uploading, decoding).

        Cutting an image into one tile per stream adds context to compute; that pays only
        while the other streams would otherwise idle. Requests of a burst arrive a few
        milliseconds apart, so the first to finish decoding must not count as alone while
        the others are still being read.
        """
        with self._counting:
            alone = self._taken == 1 and self._present <= 1
            return self._streams if alone else 1

    @staticmethod
    def _slice(stop: Stop) -> float:
        left = stop.seconds_left()
        return WAIT_SLICE_SECONDS if left is None else min(WAIT_SLICE_SECONDS, left)
