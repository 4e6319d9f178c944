import threading
import time

import pytest

from supersizeme.admission import WAIT_SLICE_SECONDS, InferenceGate, Overloaded
from supersizeme.tiling import ClientGone, DeadlineExceeded, Stop


def soon(seconds: float = 10) -> Stop:
    return Stop(deadline=time.monotonic() + seconds)


def hold_turn(gate: InferenceGate, release: threading.Event) -> threading.Thread:
    entered = threading.Event()

    def run() -> None:
        with gate.turn(soon()):
            entered.set()
            release.wait(10)

    thread = threading.Thread(target=run)
    thread.start()
    assert entered.wait(5)
    return thread


def test_full_waiting_room_refuses_at_once():
    gate, release = InferenceGate(max_waiting=0), threading.Event()
    assert gate.has_room()
    holder = hold_turn(gate, release)
    assert not gate.has_room()
    started = time.monotonic()
    with pytest.raises(Overloaded), gate.turn(soon()):
        pass
    assert time.monotonic() - started < 1
    release.set()
    holder.join()
    assert gate.has_room()
    with gate.turn(soon(1)):
        pass  # free again


def test_a_waiter_gives_up_at_its_deadline():
    gate, release = InferenceGate(max_waiting=1), threading.Event()
    holder = hold_turn(gate, release)
    with pytest.raises(DeadlineExceeded), gate.turn(soon(0.2)):
        pass
    release.set()
    holder.join()


def test_a_waiter_whose_client_hangs_up_gives_its_place_back_at_once():
    gate, release = InferenceGate(max_waiting=1), threading.Event()
    holder = hold_turn(gate, release)
    gone, outcome = threading.Event(), []

    def wait() -> None:
        stop = Stop(deadline=time.monotonic() + 30, client_gone=gone.is_set)
        try:
            with gate.turn(stop):
                outcome.append("ran")
        except ClientGone:
            outcome.append(time.monotonic())

    waiter = threading.Thread(target=wait)
    waiter.start()
    deadline = time.monotonic() + 5
    while gate.has_room():  # until the waiter has taken the last place
        assert time.monotonic() < deadline
        time.sleep(0.01)
    hung_up = time.monotonic()
    gone.set()
    waiter.join(5)
    # Gone within one wait slice (plus scheduling), not at its 30 s deadline, and while the
    # turn was still held: it never ran.
    assert outcome and outcome[0] != "ran"
    assert outcome[0] - hung_up < WAIT_SLICE_SECONDS + 0.5
    assert gate.has_room()
    release.set()
    holder.join()
