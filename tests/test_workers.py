"""The worker threads that run plain handlers: calls submitted together all run together."""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

from winerp.client.base import Workers


class _SlowToTake:
    """A work queue whose taker is held up right after taking a call.

    That is the moment a thread switch can come at any time; holding it open makes a pool
    that counts idle workers from the workers' side hand the next call to a worker already
    busy, deterministically.
    """

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def put(self, item: Any) -> None:
        self._queue.put(item)

    def get_nowait(self) -> Any:
        return self._queue.get_nowait()

    def qsize(self) -> int:
        return self._queue.qsize()

    def get(self) -> Any:
        item = self._queue.get()
        time.sleep(0.05)
        return item


def test_calls_submitted_in_a_burst_all_start_while_the_pool_can_grow() -> None:
    """A handler that blocks must never hold back another call while the pool has room."""
    workers = Workers(8, "winerp-handler-test")
    workers._queue = _SlowToTake()  # type: ignore[assignment]
    try:
        for _ in range(3):
            started = threading.Semaphore(0)
            release = threading.Event()

            def call(started: threading.Semaphore = started, release: threading.Event = release) -> None:
                started.release()
                release.wait(5)

            for _ in range(4):
                workers.submit(call)
                time.sleep(0.01)  # the calls come one after the other, as from a reader thread
            for n in range(4):
                assert started.acquire(timeout=2), f"call {n + 1} of 4 did not start: it waits behind a blocked one"
            release.set()
            time.sleep(0.2)  # every worker is idle again
    finally:
        workers.shutdown(wait=True, cancel=True)


def test_one_worker_runs_calls_in_order_and_shutdown_drains_or_drops() -> None:
    seen: list[int] = []
    workers = Workers(1, "winerp-event-test")
    for n in range(100):
        workers.submit(seen.append, n)
    workers.shutdown(wait=True, cancel=False)
    assert seen == list(range(100))
    workers.submit(seen.append, 100)  # ignored once shut down
    assert seen == list(range(100))
