"""A client may start before its hub: real processes, started in the wrong order on purpose.

Bots and workers come up under systemd or compose in any order. A client whose `start()`
has no timeout keeps trying (each failed attempt a warning on stderr, with the next delay,
in a program that configures no logging) and is ready soon after the hub comes up.
"""

from __future__ import annotations

import inspect
import logging
import time

import pytest

import winerp
import winerp.aio
import winerp.sync

try:
    from lifecycle_tools import Process, free_port, hub_command
except ImportError:  # tests/ is a package
    from tests.lifecycle_tools import Process, free_port, hub_command

pytestmark = pytest.mark.timeout(90)

#: The hub comes up this long after its clients (the report had 12 s; the behaviour is the same).
HUB_LATE_BY = 3.0
#: Ready within this long of the hub's start: the reconnect delay is capped at 3 s, plus room
#: for a loaded machine.
READY_WITHIN = 6.0

# Each client prints READY and the wall-clock time once ready, then proves it works.
AIO_CLIENT = """
import asyncio, sys, time
import winerp

async def main():
    client = winerp.Client("early-aio", port=int(sys.argv[1]))
    task = asyncio.create_task(client.start())   # the winerp 1.x way
    await client.wait_until_ready()
    print("READY", time.time(), flush=True)
    assert await client.ping()
    await task
    await client.close()

asyncio.run(main())
"""

SYNC_CLIENT = """
import sys, time
from winerp.sync import Client

client = Client("early-sync", port=int(sys.argv[1]))
client.start()
print("READY", time.time(), flush=True)
assert client.ping()
client.close()
"""


def test_clients_started_before_their_hub_connect_when_it_comes_up() -> None:
    port = free_port()
    clients = {"aio": Process.python(AIO_CLIENT, str(port)), "sync": Process.python(SYNC_CLIENT, str(port))}
    hub: Process | None = None
    try:
        for client in clients.values():
            # Trying already, and saying so on stderr with the next delay (no logging configured).
            _, line = client.stderr.wait_for("cannot connect to the hub", timeout=20)
            assert f"127.0.0.1:{port}" in line and "next attempt in" in line, line
        time.sleep(HUB_LATE_BY)  # the point of the test: the hub is late
        hub = Process([*hub_command(), "--port", str(port)])
        hub_up, _ = hub.stdout.wait_for("listening on", timeout=20)
        for kind, client in clients.items():
            ready_line = client.stdout.wait_for("READY", timeout=READY_WITHIN + 10)[1]
            ready_at = float(ready_line.split()[1])
            assert ready_at - hub_up < READY_WITHIN, (kind, ready_at - hub_up)
            assert client.wait(20) == 0, (kind, client.stderr.text)
            assert "Traceback" not in client.stderr.text and "never retrieved" not in client.stderr.text
    finally:
        for client in clients.values():
            client.stop()
        if hub is not None:
            hub.stop()


def test_start_has_no_deadline_by_default() -> None:
    for client in (winerp.sync.Client, winerp.aio.Client):
        assert inspect.signature(client.start).parameters["timeout"].default is None


def test_the_library_adds_no_log_handler() -> None:
    """Not even a NullHandler: with no logging set up, warnings reach stderr (Python's last resort)."""
    names = [
        "winerp",
        "winerp.client",
        "winerp.hub",
        "winerp.client.base",
        "winerp.aio.client",
        "winerp.sync.client",
    ]
    for name in names:
        assert logging.getLogger(name).handlers == [], name
