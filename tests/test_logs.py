"""Logs a person can follow: who joined and left the hub and why; a client's drops and reconnects."""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from collections.abc import Callable

import pytest

import winerp
import winerp.aio
import winerp.sync

try:
    from conftest import wait_for
    from lifecycle_tools import Process, free_port, hub_command
except ImportError:  # tests/ is a package
    from tests.conftest import wait_for
    from tests.lifecycle_tools import Process, free_port, hub_command

pytestmark = pytest.mark.timeout(60)


def test_the_hub_command_logs_each_client_that_joins_and_leaves() -> None:
    """``winerp-hub`` shows INFO by default: a join line with the name and address, a leave line with the reason."""
    port = free_port()
    hub = Process([*hub_command(), "--port", str(port)])
    try:
        hub.stdout.wait_for("listening on", timeout=20)
        left = threading.Event()
        with winerp.sync.Client("log-observer", port=port) as observer:
            observer.event(_on_peer_leave(left))
            with winerp.sync.Client("log-visitor", port=port) as visitor:
                assert visitor.ping("log-observer")
            # The hub logs the leave before it tells the others.
            assert left.wait(10)
            _, joined = hub.stderr.wait_for("'log-visitor' joined", timeout=10)
            _, gone = hub.stderr.wait_for("'log-visitor' (127.0.0.1:", timeout=10)
    finally:
        hub.stop()
    assert re.search(r"INFO winerp\.hub: client 'log-visitor' joined from 127\.0\.0\.1:\d+$", joined), joined
    assert re.search(
        r"INFO winerp\.hub: client 'log-visitor' \(127\.0\.0\.1:\d+\) left: it closed the connection "
        r"\(1000 client closing\)$",
        gone,
    ), gone


def _on_peer_leave(left: threading.Event) -> Callable[[str], None]:
    def on_winerp_peer_leave(name: str) -> None:
        if name == "log-visitor":
            left.set()

    return on_winerp_peer_leave


@pytest.mark.parametrize("kind", ["sync", "aio"])
def test_a_client_logs_its_lost_connection_each_failed_attempt_and_its_reconnect(
    kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    with caplog.at_level(logging.INFO, logger="winerp"):
        hub = winerp.Hub(port=port)
        hub.start()
        if kind == "sync":
            client: winerp.sync.Client | winerp.aio.Client = winerp.sync.Client("logger", port=port)
            client.start(timeout=5)
        else:
            loop = asyncio.new_event_loop()
            client = winerp.aio.Client("logger", port=port)
            loop.run_until_complete(client.start(timeout=5))
        try:
            hub.stop()
            # Down: attempts fail, each with its next delay; then the hub is back.
            wait_for(lambda: _count(caplog, "cannot connect to the hub") >= 2, timeout=10)
            hub = winerp.Hub(port=port)
            hub.start()
            wait_for(lambda: "reconnected to the hub" in caplog.text, timeout=10)
            wait_for(lambda: client.is_ready)
        finally:
            if isinstance(client, winerp.sync.Client):
                client.close()
            else:
                loop.run_until_complete(client.close())
                loop.close()
            hub.stop()
    lines = [(r.levelname, r.name, r.getMessage()) for r in caplog.records if r.name.startswith("winerp.client")]
    lost = [line for line in lines if "lost the connection" in line[2]]
    assert lost == [
        (
            "WARNING",
            "winerp.client",
            f"client 'logger': lost the connection to the hub at 127.0.0.1:{port} "
            "(closed by the hub: 1001 hub shutting down)",
        )
    ], lines
    failed = [line for line in lines if "cannot connect" in line[2]]
    assert failed and all(level == "WARNING" for level, _, _ in failed), lines
    assert all(re.search(r"; next attempt in \d+\.\d s$", message) for _, _, message in failed), failed
    assert ("INFO", "winerp.client", f"client 'logger': reconnected to the hub at 127.0.0.1:{port}") in lines


def _count(caplog: pytest.LogCaptureFixture, needle: str) -> int:
    return sum(needle in record.getMessage() for record in caplog.records)
