"""Work spread over a few threads of this process, in order, that still runs at shutdown."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


def mapped(
    work: Callable[[Item], Result], items: Iterable[Item], threads: int, name: str = "work"
) -> list[Result]:
    """``[work(item) for item in items]`` on up to ``threads`` threads at once.

    One item or one thread runs on the calling thread. So does everything once the
    interpreter has begun to shut down, when concurrent.futures refuses new work: a gunicorn
    worker recycled after its max_requests finishes its requests in flight then. If an item
    raises, the items not started yet are dropped and the error is raised here.
    """
    items = list(items)
    if threads <= 1 or len(items) <= 1:
        return [work(item) for item in items]
    pool = ThreadPoolExecutor(min(threads, len(items)), thread_name_prefix=name)
    try:
        futures = [pool.submit(work, item) for item in items]
    except RuntimeError:
        pool.shutdown(wait=True, cancel_futures=True)
        return [work(item) for item in items]
    try:
        return [future.result() for future in futures]
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    finally:
        pool.shutdown(wait=True)
