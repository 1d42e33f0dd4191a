"""Shared fixtures: a real hub on a free port, and helpers to run clients in other processes."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

import winerp

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def hub() -> Iterator[winerp.Hub]:
    """A started hub on a free loopback port, stopped after the test."""
    with winerp.Hub(port=0) as running:
        yield running


def python_process(code: str, *args: str) -> subprocess.Popen[str]:
    """Start ``python -c code args...`` with winerp importable; stdout and stderr are pipes."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def wait_for(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.01) -> None:
    """Wait until ``predicate()`` is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s")
        time.sleep(interval)


def winerp_threads() -> list[str]:
    """Names of the live threads winerp started."""
    return [t.name for t in threading.enumerate() if t.name.startswith("winerp-")]


def core_request(core: Any, peer: str, route: str, args: dict[str, Any] | None = None) -> tuple[Any, Future[Any]]:
    """Send a request through a client's core; return the call and a future that ends with it."""
    future: Future[Any] = Future()

    def ended(call: Any) -> None:
        if call.error is not None:
            future.set_exception(call.error)
        else:
            future.set_result(call.value)

    return core.request(peer, route, args or {}, ended), future
