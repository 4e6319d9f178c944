"""Holding a worker's inference turn in another thread, for the tests of who waits."""

from __future__ import annotations

import threading
import time

from supersizeme.service.admission import InferenceGate
from supersizeme.service.tiling import Stop


def soon(seconds: float = 10) -> Stop:
    return Stop(deadline=time.monotonic() + seconds)


def hold_turn(gate: InferenceGate, release: threading.Event) -> threading.Thread:
    """A thread that has taken a turn of ``gate`` (on return) and keeps it until ``release``."""
    entered = threading.Event()

    def run() -> None:
        with gate.turn(soon()):
            entered.set()
            release.wait(10)

    thread = threading.Thread(target=run)
    thread.start()
    assert entered.wait(5)
    return thread
