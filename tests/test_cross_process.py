"""A sync client process and an aio client process talking through a hub in this process.

Both processes run the same set of routes (SYNC_PROCESS and AIO_PROCESS below): ``echo``,
``boom``, ``hang``, ``call_back`` (calls back into its caller), ``ask`` (makes a request on
the test's behalf and reports the outcome), ``storm`` (many concurrent requests), and
``wait_informs``. The test drives them from a sync ``driver`` client; an inform of
``"shutdown"`` ends a process, which must then exit by itself with status 0.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import winerp
from winerp import errors
from winerp.sync import Client

try:
    from conftest import python_process, wait_for
except ImportError:  # tests/ is a package
    from tests.conftest import python_process, wait_for

pytestmark = pytest.mark.timeout(120)

SYNC_NAME = "sync-proc"
AIO_NAME = "aio-proc"
NAMES = (SYNC_NAME, AIO_NAME)

SYNC_PROCESS = r"""
import sys
import threading

from winerp import errors
from winerp.sync import Client

client = Client("sync-proc", port=int(sys.argv[1]))
stop = threading.Event()
informs = []
informed = threading.Condition()


def describe(exc):
    return {
        "error": type(exc).__name__,
        "message": str(exc),
        "remote_type": getattr(exc, "remote_type", None),
        "remote_message": getattr(exc, "remote_message", None),
        "remote_traceback": getattr(exc, "remote_traceback", None),
    }


@client.route
def echo(source, **kwargs):
    return {"source": source, "kwargs": kwargs}


@client.route
def boom(source, message):
    raise ValueError(message)


@client.route
def hang(source):
    stop.wait()


@client.route
def call_back(source, value):
    return client.request("echo", source, value=value, timeout=10)


@client.route
def ask(source, target, call, seconds=10, kwargs=None):
    try:
        return {"ok": client.request(call, target, timeout=seconds, **(kwargs or {}))}
    except errors.WinerpError as exc:
        return describe(exc)


@client.route
def send_inform(source, data, destinations=None):
    client.inform(data, destinations)
    return True


@client.route
def wait_informs(source, count, seconds=5):
    with informed:
        informed.wait_for(lambda: len(informs) >= count, seconds)
        return list(informs)


@client.route
def storm(source, target, workers, count):
    mismatches, failures = [], []

    def work(worker):
        for n in range(count):
            try:
                answer = client.request("echo", target, timeout=60, worker=worker, n=n)
            except Exception as exc:
                failures.append(repr(exc))
                continue
            if answer != {"source": "sync-proc", "kwargs": {"worker": worker, "n": n}}:
                mismatches.append([worker, n, answer])

    threads = [threading.Thread(target=work, args=(worker,)) for worker in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"mismatches": mismatches[:5], "failures": failures[:5], "count": workers * count}


@client.event
def on_winerp_information(data, source):
    if data == "shutdown":
        stop.set()
        return
    with informed:
        informs.append([data, source])
        informed.notify_all()


with client:
    print("ready", flush=True)
    stop.wait()
"""

AIO_PROCESS = r"""
import asyncio
import sys

from winerp import errors
from winerp.aio import Client


def describe(exc):
    return {
        "error": type(exc).__name__,
        "message": str(exc),
        "remote_type": getattr(exc, "remote_type", None),
        "remote_message": getattr(exc, "remote_message", None),
        "remote_traceback": getattr(exc, "remote_traceback", None),
    }


async def main(port):
    client = Client("aio-proc", port=port)
    stop = asyncio.Event()
    informs = []
    changed = asyncio.Event()

    @client.route
    async def echo(source, **kwargs):
        return {"source": source, "kwargs": kwargs}

    @client.route
    async def boom(source, message):
        raise ValueError(message)

    @client.route
    async def hang(source):
        await stop.wait()

    @client.route
    async def call_back(source, value):
        return await client.request("echo", source, value=value, timeout=10)

    @client.route
    async def ask(source, target, call, seconds=10, kwargs=None):
        try:
            return {"ok": await client.request(call, target, timeout=seconds, **(kwargs or {}))}
        except errors.WinerpError as exc:
            return describe(exc)

    @client.route
    async def send_inform(source, data, destinations=None):
        await client.inform(data, destinations)
        return True

    @client.route
    async def wait_informs(source, count, seconds=5):
        async def enough():
            while len(informs) < count:
                changed.clear()
                await changed.wait()

        try:
            await asyncio.wait_for(enough(), seconds)
        except asyncio.TimeoutError:
            pass
        return list(informs)

    @client.route
    async def storm(source, target, workers, count):
        mismatches, failures = [], []

        async def work(worker):
            for n in range(count):
                try:
                    answer = await client.request("echo", target, timeout=60, worker=worker, n=n)
                except Exception as exc:
                    failures.append(repr(exc))
                    continue
                if answer != {"source": "aio-proc", "kwargs": {"worker": worker, "n": n}}:
                    mismatches.append([worker, n, answer])

        await asyncio.gather(*(work(worker) for worker in range(workers)))
        return {"mismatches": mismatches[:5], "failures": failures[:5], "count": workers * count}

    @client.event
    async def on_winerp_information(data, source):
        if data == "shutdown":
            stop.set()
            return
        informs.append([data, source])
        changed.set()

    async with client:
        print("ready", flush=True)
        await stop.wait()


asyncio.run(main(int(sys.argv[1])))
"""

VALUES: dict[str, Any] = {
    "none": None,
    "true": True,
    "false": False,
    "int": -12,
    "huge": 2**100,
    "negative_huge": -(2**90),
    "float": 2.5,
    "str": "héllo ✓",
    "bytes": b"\x00\x01\xff",
    "list": [1, "a", None],
    "tuple": (1, (2, 3)),
    "dict": {"k": {"nested": [b"x", 2**70]}},
    "empty": [[], {}, "", b""],
}
#: What VALUES looks like after a trip: tuples arrive as lists.
VALUES_AFTER = {**VALUES, "tuple": [1, [2, 3]]}


@pytest.fixture
def processes(hub: winerp.Hub) -> Iterator[dict[str, subprocess.Popen[str]]]:
    """The sync and the aio client processes, registered on the hub."""
    procs = {
        SYNC_NAME: python_process(SYNC_PROCESS, str(hub.port)),
        AIO_NAME: python_process(AIO_PROCESS, str(hub.port)),
    }
    try:

        def registered() -> bool:
            for name, proc in procs.items():
                if proc.poll() is not None:
                    _, stderr = proc.communicate()
                    pytest.fail(f"{name} exited with {proc.returncode}:\n{stderr}")
            return set(hub.clients) >= set(NAMES)

        wait_for(registered, timeout=30)
        yield procs
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=10)


@pytest.fixture
def driver(hub: winerp.Hub, processes: dict[str, subprocess.Popen[str]]) -> Iterator[Client]:
    client = Client("driver", port=hub.port)

    @client.route
    def echo(source: str, **kwargs: Any) -> Any:
        return {"source": source, "kwargs": kwargs}

    with client:
        yield client


def _other(name: str) -> str:
    return AIO_NAME if name == SYNC_NAME else SYNC_NAME


@pytest.mark.parametrize("caller", NAMES)
def test_values_cross_processes(driver: Client, caller: str) -> None:
    answer = driver.request("ask", caller, target=_other(caller), call="echo", kwargs=VALUES)
    assert answer == {"ok": {"source": caller, "kwargs": VALUES_AFTER}}
    assert driver.request("echo", caller, **VALUES) == {"source": "driver", "kwargs": VALUES_AFTER}


@pytest.mark.parametrize("sender", NAMES)
def test_informs_cross_processes(driver: Client, sender: str) -> None:
    receiver = _other(sender)
    assert driver.request("send_inform", sender, data={"n": 1, "b": b"\x00"}, destinations=receiver)
    assert driver.request("send_inform", sender, data=0, destinations=[receiver])
    assert driver.request("send_inform", sender, data=[2**80])  # to everyone
    assert driver.request("wait_informs", receiver, count=3) == [
        [{"n": 1, "b": b"\x00"}, sender],
        [0, sender],
        [[2**80], sender],
    ]
    driver.inform("from the driver", receiver)
    assert driver.request("wait_informs", receiver, count=4)[-1] == ["from the driver", "driver"]


@pytest.mark.parametrize("caller", NAMES)
def test_errors_cross_processes(driver: Client, caller: str) -> None:
    target = _other(caller)
    started = time.monotonic()
    failed = driver.request("ask", caller, target=target, call="boom", kwargs={"message": "bad 42"})
    assert failed["error"] == "ClientRuntimeError"
    assert (failed["remote_type"], failed["remote_message"]) == ("ValueError", "bad 42")
    assert "boom" in failed["remote_traceback"] and "ValueError: bad 42" in failed["remote_traceback"]
    assert driver.request("ask", caller, target=target, call="missing")["error"] == "RouteNotFound"
    assert driver.request("ask", caller, target="ghost", call="echo")["error"] == "DestinationNotFound"
    assert time.monotonic() - started < 3
    with pytest.raises(errors.ClientRuntimeError) as caught:
        driver.request("boom", target, message="direct")
    assert (caught.value.remote_type, caught.value.remote_message) == ("ValueError", "direct")


@pytest.mark.parametrize("caller", NAMES)
def test_handler_calls_back_into_its_caller(driver: Client, caller: str) -> None:
    answer = driver.request("ask", caller, target=_other(caller), call="call_back", kwargs={"value": [1, b"2"]})
    # The other process's handler called echo back on the caller while the caller waited.
    assert answer == {"ok": {"source": _other(caller), "kwargs": {"value": [1, b"2"]}}}
    # And back into the test process's client, which waits on its own thread meanwhile.
    assert driver.request("call_back", caller, value=3) == {"source": caller, "kwargs": {"value": 3}}


def test_concurrent_requests_both_ways(driver: Client) -> None:
    results: dict[str, Any] = {}

    def storm(caller: str) -> None:
        try:
            results[caller] = driver.request("storm", caller, target=_other(caller), workers=16, count=200, timeout=90)
        except Exception as exc:  # noqa: BLE001 - reported below
            results[caller] = exc

    threads = [threading.Thread(target=storm, args=(name,)) for name in NAMES]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(100)
    expected = {"mismatches": [], "failures": [], "count": 16 * 200}
    assert results == {SYNC_NAME: expected, AIO_NAME: expected}


@pytest.mark.parametrize("victim", NAMES)
def test_sigkilled_peer_gives_peer_disconnected_promptly(
    hub: winerp.Hub, driver: Client, processes: dict[str, subprocess.Popen[str]], victim: str
) -> None:
    survivor = _other(victim)
    outcomes: dict[str, Any] = {}
    ended: dict[str, float] = {}

    def call_direct() -> None:
        try:
            outcomes["driver"] = driver.request("hang", victim, timeout=30)
        except Exception as exc:  # noqa: BLE001 - inspected below
            outcomes["driver"] = exc
        ended["driver"] = time.monotonic()

    def call_through_survivor() -> None:
        outcomes[survivor] = driver.request(
            "ask", survivor, target=victim, call="hang", seconds=30, timeout=40, kwargs=None
        )
        ended[survivor] = time.monotonic()

    threads = [threading.Thread(target=call_direct), threading.Thread(target=call_through_survivor)]
    for thread in threads:
        thread.start()

    def in_flight(name: str) -> int:
        return sum(c["in_flight"] for c in hub.status()["clients"] if c["name"] == name)

    wait_for(lambda: in_flight("driver") >= 2 and in_flight(survivor) == 1)
    killed = time.monotonic()
    os.kill(processes[victim].pid, signal.SIGKILL)
    for thread in threads:
        thread.join(10)
    assert isinstance(outcomes["driver"], errors.PeerDisconnected)
    assert outcomes[survivor]["error"] == "PeerDisconnected"
    assert max(ended.values()) - killed < 2.0
    # The survivor and the hub carry on.
    assert driver.request("echo", survivor, x=1) == {"source": "driver", "kwargs": {"x": 1}}
    wait_for(lambda: victim not in hub.clients, timeout=5)
    assert driver.ping(victim) is False


def test_processes_exit_by_themselves_after_close(driver: Client, processes: dict[str, subprocess.Popen[str]]) -> None:
    assert driver.ping(SYNC_NAME) and driver.ping(AIO_NAME)
    driver.inform("shutdown")
    for name, proc in processes.items():
        stdout, stderr = proc.communicate(timeout=15)
        assert proc.returncode == 0, f"{name}: {stderr}"
        assert stdout.strip() == "ready"
        assert "Traceback" not in stderr, stderr
