"""Who may run the network in this worker, and who must wait or go away.

One inference at a time per worker: TensorFlow already spreads one over the worker's
share of the cores, and a second at once would only slow both. A few requests may wait
for their turn (until their deadline); beyond that they are turned away at once, so that
a gthread worker always has a thread left for /healthz, /readyz and quick refusals.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from supersizeme.tiling import DeadlineExceeded


class Overloaded(Exception):
    """Every inference slot of this worker is taken and its waiting room is full."""


class InferenceGate:
    def __init__(self, max_waiting: int):
        self._turn = threading.Lock()
        self._admitted = threading.BoundedSemaphore(1 + max_waiting)

    @contextmanager
    def turn(self, deadline: float) -> Iterator[None]:
        """Hold the worker's inference turn; raises Overloaded or DeadlineExceeded."""
        if not self._admitted.acquire(blocking=False):
            raise Overloaded
        try:
            if not self._turn.acquire(timeout=max(0.0, deadline - time.monotonic())):
                raise DeadlineExceeded
            try:
                yield
            finally:
                self._turn.release()
        finally:
            self._admitted.release()
