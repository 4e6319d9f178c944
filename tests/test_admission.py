import threading
import time

import pytest
from turns import hold_turn, soon

from supersizeme.service.admission import WAIT_SLICE_SECONDS, InferenceGate, Overloaded
from supersizeme.service.tiling import ClientGone, DeadlineExceeded, Stop


def has_room(gate: InferenceGate) -> bool:
    """Whether a request arriving now would be let in (without taking a place)."""
    try:
        with gate.present():
            return True
    except Overloaded:
        return False


def test_full_waiting_room_refuses_at_once():
    gate, release = InferenceGate(max_waiting=0), threading.Event()
    assert has_room(gate)
    holder = hold_turn(gate, release)
    assert not has_room(gate)
    started = time.monotonic()
    with pytest.raises(Overloaded), gate.turn(soon()):
        pass
    assert time.monotonic() - started < 1
    release.set()
    holder.join()
    assert has_room(gate)
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
    while has_room(gate):  # until the waiter has taken the last place
        assert time.monotonic() < deadline
        time.sleep(0.01)
    hung_up = time.monotonic()
    gone.set()
    waiter.join(5)
    # Gone within one wait slice (plus scheduling), not at its 30 s deadline, and while the
    # turn was still held: it never ran.
    assert outcome and outcome[0] != "ran"
    assert outcome[0] - hung_up < WAIT_SLICE_SECONDS + 0.5
    assert has_room(gate)
    release.set()
    holder.join()


def test_a_request_alone_gets_every_stream_and_one_with_company_gets_one():
    gate, release = InferenceGate(max_waiting=2, streams=2), threading.Event()
    with gate.turn(soon()) as lanes:
        assert lanes == 2
    holder = hold_turn(gate, release)
    started = time.monotonic()
    with gate.turn(soon()) as lanes:  # a second stream is free: no waiting
        assert lanes == 1
        assert time.monotonic() - started < WAIT_SLICE_SECONDS
    release.set()
    holder.join()


def test_as_many_run_as_there_are_streams_and_the_rest_wait():
    gate, release = InferenceGate(max_waiting=1, streams=2), threading.Event()
    holders = [hold_turn(gate, release), hold_turn(gate, release)]
    assert has_room(gate)  # the one waiting place
    with pytest.raises(DeadlineExceeded), gate.turn(soon(0.2)):
        pass
    release.set()
    for holder in holders:
        holder.join()


def test_a_request_on_its_way_in_counts_as_company():
    gate = InferenceGate(max_waiting=2, streams=2)
    # The first request is still uploading while the second takes its turn.
    with gate.present(), gate.present(), gate.turn(soon()) as lanes:
        assert lanes == 1
    with gate.present(), gate.turn(soon()) as lanes:
        assert lanes == 2
