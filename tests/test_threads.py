"""Work over a few threads, in order, and on the caller's thread when no pool may start."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from supersizeme.service.threads import mapped


def test_results_come_in_order_from_several_threads():
    seen: set[str] = set()

    def square(n: int) -> int:
        seen.add(threading.current_thread().name)
        return n * n

    assert mapped(square, range(20), threads=2, name="sq") == [n * n for n in range(20)]
    assert all(name.startswith("sq") for name in seen)


def test_one_item_or_one_thread_runs_on_the_callers_thread():
    here = threading.current_thread().name
    assert mapped(lambda _: threading.current_thread().name, [1], threads=4) == [here]
    assert mapped(lambda _: threading.current_thread().name, [1, 2], threads=1) == [here] * 2


def test_at_interpreter_shutdown_the_work_runs_here(monkeypatch):
    """concurrent.futures refuses new work once the interpreter shuts down, as it does while
    a recycled gunicorn worker finishes its last requests."""

    def refuse(*args, **kwargs):
        raise RuntimeError("cannot schedule new futures after interpreter shutdown")

    monkeypatch.setattr(ThreadPoolExecutor, "submit", refuse)
    here = threading.current_thread().name
    assert mapped(lambda n: (n, threading.current_thread().name), [1, 2], 2) == [
        (1, here),
        (2, here),
    ]


def test_an_error_drops_the_items_not_started_and_is_raised():
    started: list[int] = []
    gate = threading.Event()

    def work(n: int) -> int:
        started.append(n)
        if n == 0:
            raise ValueError("stop")
        gate.wait(1)
        return n

    with pytest.raises(ValueError, match="stop"):
        mapped(work, range(50), threads=2)
    gate.set()
    assert len(started) < 50
