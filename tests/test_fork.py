"""A client belongs to the process that started it: a forked child gets a clear error at once.

gunicorn ``--preload`` and ``multiprocessing`` with fork copy a started client into every
child, where its connection is the parent's. Every call there raises `ClientNotReadyError`
at once, saying to start a client in each worker; the child never writes to the inherited
socket nor shuts it down, so the parent's client goes on as if nothing happened.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import traceback
import urllib.error
import urllib.request
import warnings
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import winerp
import winerp.aio
import winerp.sync

try:
    from conftest import wait_for
    from lifecycle_tools import Process, free_port
except ImportError:  # tests/ is a package
    from tests.conftest import wait_for
    from tests.lifecycle_tools import Process, free_port

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork"),
]

#: "At once": well under a second, generous for a loaded machine.
AT_ONCE = 1.0
ADVICE = "start a client in each worker"
OK = 0


class Peer:
    """A client with an ``echo`` route that records every inform it gets."""

    def __init__(self, port: int) -> None:
        self.informs: list[Any] = []
        self.client = winerp.sync.Client("fork-peer", port=port)
        self.client.route("echo")(lambda source, x: [source, x])

        @self.client.event
        def on_winerp_information(data: Any, source: str) -> None:
            self.informs.append((source, data))

        self.client.start(timeout=5)


@pytest.fixture
def peer(hub: winerp.Hub) -> Iterator[Peer]:
    made = Peer(hub.port)
    yield made
    made.client.close()


def _in_forked_child(checks: Callable[[], int]) -> int:
    """Run ``checks`` in a forked child; return the exit code it reports (0: all well)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # forking a process with threads, on purpose
        pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 99
        try:
            code = checks()
        except BaseException:  # noqa: BLE001 - reported through the exit code, printed for the reader
            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _refused_at_once(number: int, call: Callable[[], Any]) -> int:
    """0 if ``call`` raised ClientNotReadyError with the advice, at once; else a code saying what went wrong."""
    started = time.monotonic()
    try:
        call()
    except winerp.ClientNotReadyError as exc:
        if ADVICE not in str(exc):
            return 10 + number
        if time.monotonic() - started > AT_ONCE:
            return 20 + number
        return OK
    except BaseException:  # noqa: BLE001 - reported through the exit code
        traceback.print_exc()
        return 30 + number
    return 40 + number  # no error at all


def _first_failure(codes: Iterator[int]) -> int:
    return next((code for code in codes if code != OK), OK)


def test_a_sync_client_in_a_forked_child_refuses_every_call_at_once(hub: winerp.Hub, peer: Peer) -> None:
    disconnects: list[str] = []
    client = winerp.sync.Client("forker", port=hub.port)
    client.event(_recorder("on_winerp_disconnect", disconnects))
    client.start(timeout=5)
    assert client.request("echo", "fork-peer", timeout=5, x=1) == ["forker", 1]
    connection = client._core._connection

    def checks() -> int:
        calls: list[Callable[[], Any]] = [
            lambda: client.request("echo", "fork-peer", timeout=3, x=2),
            lambda: client.inform("from the child", "fork-peer"),
            lambda: client.ping(timeout=3),
            lambda: client.ping("fork-peer", timeout=3),
            lambda: client.peers(timeout=3),
            lambda: client.request_many("echo", timeout=3, x=3),
            lambda: client.wait_until_ready(timeout=None),
            client.start,
        ]
        code = _first_failure(_refused_at_once(n, call) for n, call in enumerate(calls, 1))
        if code == OK and (client.is_ready or client.authorized):
            code = 50
        client.close()  # what a worker may do at exit: must leave the parent's connection alone
        return code

    assert _in_forked_child(checks) == OK
    _assert_parent_unaffected(hub, peer, disconnects)
    assert client._core._connection is connection
    assert client.request("echo", "fork-peer", timeout=5, x=4) == ["forker", 4]
    assert client.ping(timeout=5)
    client.close()


def test_an_aio_client_in_a_forked_child_refuses_every_call_at_once(hub: winerp.Hub, peer: Peer) -> None:
    disconnects: list[str] = []
    loop = asyncio.new_event_loop()
    client = winerp.aio.Client("forker", port=hub.port)
    client.event(_recorder("on_winerp_disconnect", disconnects))
    loop.run_until_complete(client.start(timeout=5))
    assert loop.run_until_complete(client.request("echo", "fork-peer", timeout=5, x=1)) == ["forker", 1]
    connection = client._core._connection

    def checks() -> int:
        calls: list[Callable[[], Awaitable[Any]]] = [
            lambda: client.request("echo", "fork-peer", timeout=3, x=2),
            lambda: client.inform("from the child", "fork-peer"),
            lambda: client.ping(timeout=3),
            lambda: client.ping("fork-peer", timeout=3),
            lambda: client.peers(timeout=3),
            lambda: client.request_many("echo", timeout=3, x=3),
            lambda: client.wait_until_ready(timeout=None),
            client.start,
        ]

        async def run() -> int:
            codes = []
            for number, call in enumerate(calls, 1):
                started = time.monotonic()
                try:
                    await call()
                except winerp.ClientNotReadyError as exc:
                    late = time.monotonic() - started > AT_ONCE
                    codes.append(10 + number if ADVICE not in str(exc) else 20 + number if late else OK)
                else:
                    codes.append(40 + number)
            await client.close()  # must leave the parent's connection alone
            return _first_failure(iter(codes))

        # A new loop of the child's own: the parent's is a copy that nothing runs here.
        return asyncio.run(run())

    try:
        assert _in_forked_child(checks) == OK
        _assert_parent_unaffected(hub, peer, disconnects)
        assert client._core._connection is connection
        answer = loop.run_until_complete(client.request("echo", "fork-peer", timeout=5, x=4))
        assert answer == ["forker", 4]
        assert loop.run_until_complete(client.ping(timeout=5))
    finally:
        loop.run_until_complete(client.close())
        loop.close()


def _recorder(name: str, into: list[str]) -> Callable[[], None]:
    def handler() -> None:
        into.append(name)

    handler.__name__ = name
    return handler


def _assert_parent_unaffected(hub: winerp.Hub, peer: Peer, disconnects: list[str]) -> None:
    assert sorted(hub.clients) == ["fork-peer", "forker"]
    assert disconnects == []
    # Nothing the child did reached anyone: the inform it tried never left.
    assert peer.client.ping("forker", timeout=5)
    assert peer.informs == []


# --- gunicorn --preload ----------------------------------------------------------------------------

APP = """
import os, time
from flask import Flask
import winerp
from winerp.sync import Client

PORT = int(os.environ["WINERP_TEST_PORT"])
# --preload imports this module once, in the master, before the workers are forked.
master_client = Client("web-master", port=PORT)
master_client.start(timeout=10)
worker_client = None  # one per worker, started in post_fork (gunicorn.conf.py)

app = Flask(__name__)


@app.route("/master")
def use_master():
    started = time.monotonic()
    try:
        master_client.ping(timeout=10)
    except winerp.ClientNotReadyError as exc:
        return {"error": str(exc), "took": time.monotonic() - started}, 503
    return {"error": None, "took": time.monotonic() - started}


@app.route("/own")
def use_own():
    return {"answer": worker_client.request("echo", "fork-peer", timeout=10, x=os.getpid()), "pid": os.getpid()}
"""

CONFIG = '''
import os


def post_fork(server, worker):
    """A client per worker, named after it, started in the worker itself."""
    import app
    from winerp.sync import Client

    client = Client(f"web-worker-{os.getpid()}", port=int(os.environ["WINERP_TEST_PORT"]))
    client.start(timeout=10)
    app.worker_client = client
'''


def _get(url: str) -> tuple[int, dict[str, Any], float]:
    started = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=20) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    return status, json.loads(body), time.monotonic() - started


def test_gunicorn_preload_workers_get_a_clear_error_and_their_own_clients_work(
    hub: winerp.Hub, peer: Peer, tmp_path: Path
) -> None:
    pytest.importorskip("flask")
    pytest.importorskip("gunicorn")
    (tmp_path / "app.py").write_text(APP)
    (tmp_path / "gunicorn.conf.py").write_text(CONFIG)
    http_port = free_port()
    command = [sys.executable, "-m", "gunicorn", "--preload", "-w", "2", "-b", f"127.0.0.1:{http_port}"]
    server = Process([*command, "-c", "gunicorn.conf.py", "app:app"], cwd=tmp_path, WINERP_TEST_PORT=str(hub.port))
    try:
        wait_for(lambda: len([n for n in hub.clients if n.startswith("web-worker-")]) == 2, timeout=30)
        server.stderr.wait_for("Booting worker", timeout=10)
        base = f"http://127.0.0.1:{http_port}"
        for _ in range(4):  # whichever worker answers
            status, body, took = _get(f"{base}/master")
            assert status == 503, (status, body, server.stderr.text)
            assert ADVICE in body["error"] and body["took"] < AT_ONCE, body
            assert took < 5
        for _ in range(4):
            status, body, _took = _get(f"{base}/own")
            assert status == 200, (status, body, server.stderr.text)
            assert body["answer"] == [f"web-worker-{body['pid']}", body["pid"]]
        # The master's own client is unaffected by its workers.
        assert "web-master" in hub.clients
        assert peer.client.ping("web-master", timeout=5)
    finally:
        server.stop()
