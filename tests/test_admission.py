import threading
import time

import pytest

from supersizeme.admission import InferenceGate, Overloaded
from supersizeme.tiling import DeadlineExceeded


def hold_turn(gate: InferenceGate, release: threading.Event) -> threading.Thread:
    entered = threading.Event()

    def run() -> None:
        with gate.turn(time.monotonic() + 10):
            entered.set()
            release.wait(10)

    thread = threading.Thread(target=run)
    thread.start()
    entered.wait(5)
    return thread


def test_full_waiting_room_refuses_at_once():
    gate, release = InferenceGate(max_waiting=0), threading.Event()
    holder = hold_turn(gate, release)
    started = time.monotonic()
    with pytest.raises(Overloaded), gate.turn(time.monotonic() + 10):
        pass
    assert time.monotonic() - started < 1
    release.set()
    holder.join()
    with gate.turn(time.monotonic() + 1):
        pass  # free again


def test_a_waiter_gives_up_at_its_deadline():
    gate, release = InferenceGate(max_waiting=1), threading.Event()
    holder = hold_turn(gate, release)
    with pytest.raises(DeadlineExceeded), gate.turn(time.monotonic() + 0.2):
        pass
    release.set()
    holder.join()
